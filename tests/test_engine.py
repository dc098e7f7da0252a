"""Optimizer, gradient clipping and the EMA hook of the v-CLR trainer."""

import pytest
import torch
from detectron2.modeling import build_model

from vclr_d2.engine import build_optimizer
from vclr_d2.engine.optimizer import with_full_model_clipping


def test_optimizer_leaves_out_the_teacher_and_applies_multipliers(model_cfg):
    model_cfg.SOLVER.BASE_LR = 1e-4
    model_cfg.SOLVER.WEIGHT_DECAY = 1e-4
    model_cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    model_cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    model = build_model(model_cfg)
    opt = build_optimizer(model_cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert not any(names[i].startswith("teacher.") for i in setting)
    trainable = {id(p) for n, p in model.named_parameters() if not n.startswith("teacher.")}
    assert set(setting) == trainable
    assert setting[id(model.backbone.bottom_up.stem[0].weight)] == pytest.approx((1e-5, 1e-4))
    assert setting[id(model.backbone.bottom_up.stem[1].weight)] == pytest.approx((1e-5, 0.0))
    assert setting[id(model.head.embed.weight)] == pytest.approx((1e-4, 1e-4))
    assert setting[id(model.head.cls_tower[0].norm.weight)] == pytest.approx((1e-4, 0.0))
    assert setting[id(model.backbone.fpn_lateral3.weight)] == pytest.approx((1e-4, 1e-4))


def test_full_model_clipping_bounds_the_total_gradient_norm():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    opt = with_full_model_clipping(torch.optim.SGD, max_norm=0.1)(
        [{"params": [a]}, {"params": [b]}], lr=1.0)
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    opt.step()
    # one global scale 0.1 / ||g|| for all parameters, so the step's norm is exactly 0.1
    step = torch.cat([a.detach(), b.detach()])
    assert step.norm().item() == pytest.approx(0.1, rel=1e-4)
    assert (a.detach() / 3).allclose(b.detach()[:3] / 4)


def test_unknown_optimizer_and_clip_type_are_named(model_cfg):
    model = build_model(model_cfg)
    model_cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="OPTIMIZER='LAMB'"):
        build_optimizer(model_cfg, model)
    model_cfg.SOLVER.OPTIMIZER = "ADAMW"
    model_cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    model_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "global"
    with pytest.raises(ValueError, match="CLIP_TYPE='global'"):
        build_optimizer(model_cfg, model)


def test_every_registered_component_is_one_hop_from_the_package():
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

    import vclr_d2
    from vclr_d2.modeling import VCLR_CRITERION_REGISTRY, VCLR_HEAD_REGISTRY, VCLR_MATCHER_REGISTRY

    ours = [obj for reg in (META_ARCH_REGISTRY, BACKBONE_REGISTRY, VCLR_MATCHER_REGISTRY,
                            VCLR_HEAD_REGISTRY, VCLR_CRITERION_REGISTRY)
            for _, obj in reg if obj.__module__.startswith("vclr_d2.")]
    assert len(ours) == 7  # VCLR, two backbone builders, two matchers, head, criterion
    assert all(getattr(vclr_d2, obj.__name__) is obj for obj in ours)
    assert all(obj.__name__ in vclr_d2.__all__ for obj in ours)
    assert vclr_d2.VCLRTrainer.__module__ == "vclr_d2.engine.trainer"


def test_detectron2s_load_proposals_key_is_refused_with_the_vclr_key_named(model_cfg):
    from vclr_d2.engine import VCLRTrainer

    model_cfg.MODEL.LOAD_PROPOSALS = True
    with pytest.raises(ValueError, match="INPUT.LOAD_PROPOSALS"):
        VCLRTrainer.build_train_loader(model_cfg)

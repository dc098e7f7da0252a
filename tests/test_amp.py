"""Mixed precision: ``SOLVER.AMP.ENABLED`` on the CPU (bfloat16 autocast); matching and losses
stay in float32."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from vclr_d2.engine import VCLRTrainer, amp_dtype_from_config, setup_cfg

from .model_utils import scene, training_input
from .train_utils import cli_args


def test_autocast_lowers_the_network_but_not_the_losses(model_cfg):
    model_cfg.MODEL.MASK_ON = True
    model = build_model(model_cfg).train()
    seen = {}

    def features_hook(module, inputs, out):
        seen.setdefault("features", out["p3"].dtype)

    model.backbone.register_forward_hook(features_hook)
    criterion_call = model.criterion.detection_losses

    def spy(out, *args, **kwargs):
        seen["head"] = out.objectness.dtype  # what the model hands to the criterion
        return criterion_call(out, *args, **kwargs)

    model.criterion.detection_losses = spy
    image, masks = scene(0, size=64, boxes=[(8, 8, 40, 30), (30, 34, 60, 60)])
    batch = [training_input(image, masks, boxes=[(8, 8, 40, 30), (30, 34, 60, 60)],
                            proposals=[(2, 40, 20, 60)])]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert seen == {"features": torch.bfloat16, "head": torch.bfloat16}
    assert {v.dtype for v in losses.values()} == {torch.float32}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(model.head.embed.weight.grad).all()
    assert model.head.embed.weight.grad.abs().sum() > 0
    # full precision gives the same losses up to bfloat16's 8-bit mantissa
    with torch.no_grad():
        ref = {k: v.item() for k, v in model(batch).items()}
    for k, v in losses.items():
        assert v.item() == pytest.approx(ref[k], rel=0.1, abs=0.05), k


def test_amp_training_on_the_cpu(tmp_path, monkeypatch):
    """Before: detectron2 0.6's AMPTrainer asserted CUDA."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    cfg = setup_cfg(cli_args(tmp_path / "out", "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER",
                             "2", "DATASETS.TEST", "()"), setup_logging=False)
    assert amp_dtype_from_config(cfg) == torch.bfloat16
    trainer = VCLRTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = trainer.model.head.embed.weight.detach().clone()
    trainer.train()
    after = trainer.model.head.embed.weight
    assert after.dtype == torch.float32 and torch.isfinite(after).all()
    assert (after - before).abs().max() > 0
    assert not trainer._trainer.grad_scaler.is_enabled()  # bfloat16 needs no scaling


def test_amp_dtype_is_checked(cfg):
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = "float8"
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE='float8'"):
        amp_dtype_from_config(cfg)
    cfg.SOLVER.AMP.DTYPE = ""
    cfg.MODEL.DEVICE = "cuda"
    assert amp_dtype_from_config(cfg) == torch.float16
    cfg.SOLVER.AMP.ENABLED = False
    assert amp_dtype_from_config(cfg) is None


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, batch):
        return {"loss": 0.1 * self.lin(torch.tensor(batch)).float().sum()}  # a float32 loss


def test_float16_overflow_skips_steps_then_stops():
    """With a float16 grad scaler, an overflowing step is skipped (the scaler's job) and only
    ``max_skipped_steps`` of them in a row stop training."""
    from vclr_d2.engine import VCLRStepTrainer

    model = _Linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = VCLRStepTrainer(model, [[[1e-3, 2e-3]]] * 5, opt, seed=0, amp_dtype=torch.float16,
                              max_skipped_steps=2)
    assert trainer.grad_scaler.is_enabled()
    with EventStorage():
        trainer.run_step()  # a normal float16 step (small inputs: no overflow at scale 2**16)
        moved = model.lin.weight.detach().clone()
        scale = trainer.grad_scaler.get_scale()
        model.lin.weight.register_hook(lambda g: g * float("inf"))
        trainer.iter = 1
        trainer.run_step()  # skipped: weights kept, scale lowered
        assert torch.equal(model.lin.weight.detach(), moved)
        assert trainer.grad_scaler.get_scale() == scale / 2
        trainer.iter = 2
        with pytest.raises(FloatingPointError, match=r"non-finite gradients at iteration 2 \(2 "
                                                     r"float16 steps skipped in a row\) in 1 "
                                                     r"parameters \(lin.weight\)"):
            trainer.run_step()
    assert set(trainer.state_dict()) >= {"optimizer", "grad_scaler", "seed", "iteration"}

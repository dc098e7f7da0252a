"""tools/convert_pretrained.py and vclr_d2.checkpoint on ResNets: torchvision-layout checkpoints
of the self-supervised families -> the detectron2 ResNet that configs/voc_r50.yaml builds."""

import argparse
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from vclr_d2.checkpoint import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, convert_resnet
from vclr_d2.engine import get_vclr_cfg
from vclr_d2.utils import load_tool

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("res2", "res3", "res4", "res5")


def _tool():
    return load_tool("convert_pretrained")


def _randomise_norms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Batch-norm statistics and affine parameters away from their identity init, so that a
    wrongly mapped one changes the features."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def tv_r50():
    torch.manual_seed(0)
    return _randomise_norms(torchvision.models.resnet50(), 1)


@pytest.fixture(scope="module")
def tv_r18():
    torch.manual_seed(0)
    return _randomise_norms(torchvision.models.resnet18(), 2)


def _tv_features(tv, x):
    y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = {}
    for name, layer in zip(STAGES, (tv.layer1, tv.layer2, tv.layer3, tv.layer4)):
        y = out[name] = layer(y)
    return out


def _d2_resnet(depth: int, weights: dict, res2_out: int = 256):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2_out
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = list(STAGES)
    trunk = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    trunk.load_state_dict(weights, strict=True)
    return trunk.eval()


@pytest.mark.parametrize("depth,res2_out", [(50, 256), (18, 64)])
def test_converted_torchvision_resnet_gives_torchvision_features(tv_r50, tv_r18, depth,
                                                                 res2_out):
    tv = tv_r50 if depth == 50 else tv_r18
    weights, report = convert_resnet(tv.state_dict())
    assert report.prefix == "" and report.converted == len(weights)
    assert sorted(report.dropped) == sorted(
        ["fc.weight", "fc.bias"] + [k for k in tv.state_dict() if "num_batches" in k])
    assert f"MODEL.RESNETS.DEPTH {depth}" in report.notes[0]
    assert f"RES2_OUT_CHANNELS {res2_out}" in report.notes[0]
    trunk = _d2_resnet(depth, weights, res2_out)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = trunk(x), _tv_features(tv, x)
    for name in STAGES:
        assert ours[name].shape == theirs[name].shape
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5)


def _wrapped(state, layout):
    """``state`` stored the way each self-supervised family stores its ResNet."""
    def under(prefix, sd):
        return {prefix + k: v for k, v in sd.items()}

    head = {"0.weight": torch.zeros(2, 512), "2.weight": torch.zeros(3, 2)}
    if layout == "torchvision":
        return state, None, ""
    if layout == "moco_v2":
        sd = {**under("module.encoder_q.", state), **under("module.encoder_k.", state),
              **under("module.encoder_q.fc.", head), "module.queue": torch.zeros(4, 8),
              "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
        return {"epoch": 200, "arch": "resnet50", "state_dict": sd}, "state_dict", \
            "module.encoder_q."
    if layout == "moco_v3":
        sd = {**under("module.base_encoder.", state), **under("module.momentum_encoder.", state),
              **under("module.predictor.", head)}
        return {"epoch": 100, "state_dict": sd, "optimizer": {}}, "state_dict", \
            "module.base_encoder."
    if layout == "dino_full":
        branch = {**under("module.backbone.", state), **under("module.head.mlp.", head)}
        return {"student": branch, "teacher": dict(branch), "epoch": 100}, "teacher", \
            "module.backbone."
    if layout == "clove":
        sd = {**under("module.encoder.", state), **under("module.encoder_k.", state),
              **under("module.projector.linear1.", head)}
        return {"model": sd, "epoch": 400}, "model", "module.encoder."
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["torchvision", "moco_v2", "moco_v3", "dino_full", "clove"])
def test_every_family_converts_to_the_same_trunk(tv_r18, tmp_path, layout):
    obj, wrapper, prefix = _wrapped(tv_r18.state_dict(), layout)
    torch.save(obj, tmp_path / "pretrained.pth")
    out = tmp_path / "out.pth"
    assert _tool().main([str(tmp_path / "pretrained.pth"), str(out)]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    expected, _ = convert_resnet(tv_r18.state_dict())
    assert sorted(ckpt["model"]) == sorted("backbone.bottom_up." + k for k in expected)
    for k, v in expected.items():
        assert torch.equal(ckpt["model"]["backbone.bottom_up." + k], v), k
    # and the report names what was read
    _, report = convert_resnet(_flat(obj, wrapper), source="x")
    assert report.prefix == prefix


def _flat(obj, wrapper):
    return obj if wrapper is None else obj[wrapper]


def test_voc_r50_config_loads_converted_weights_and_sees_what_torchvision_saw(
        tv_r50, tmp_path, caplog):
    path = tmp_path / "dino_r50.pkl"
    assert _tool().main([_save(tv_r50.state_dict(), tmp_path / "in.pth"), str(path)]) == 0
    cfg = get_vclr_cfg(str(ROOT / "configs/voc_r50.yaml"),
                       ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(path),
                        "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']"])
    assert cfg.MODEL.BACKBONE.NAME == "build_vclr_resnet_fpn_backbone"
    assert cfg.INPUT.FORMAT == "RGB"
    assert tuple(cfg.MODEL.PIXEL_MEAN) == IMAGENET_PIXEL_MEAN
    assert tuple(cfg.MODEL.PIXEL_STD) == IMAGENET_PIXEL_STD
    model = build_model(cfg).eval()
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    log = caplog.text
    assert "not found in the checkpoint" in log and "backbone.fpn_lateral3" in log
    assert "bottom_up" not in log  # no missing (or unexpected) trunk key, student or teacher
    converted, _ = convert_resnet(tv_r50.state_dict())
    for trunk in (model.backbone.bottom_up, model.teacher["backbone"].bottom_up):
        own = trunk.state_dict()
        assert sorted(own) == sorted(converted)
        assert all(torch.equal(own[k], converted[k]) for k in own)

    # a uint8 RGB image through the model's own normalisation = torchvision's input
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        x = model.preprocess([{"image": image}], "image", augment=False).tensor
        ours = model.backbone.bottom_up(x)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        theirs = _tv_features(tv_r50, ((image.float() / 255 - mean) / std)[None])
    for name in STAGES:
        # equal up to float rounding, which grows with the depth and the features' scale (up to
        # ~200 at res5 with these random norms) and with the CPU's kernels: within 1e-5 of the
        # stage's largest value (a conversion error is of the order of the values themselves)
        scale = theirs[name].abs().max().item()
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5 * scale, rtol=0)
    # the head reads P3-P7, the mask branch P3-P5
    shapes = model.backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {
        "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


@pytest.mark.slow
def test_voc_r50_trains_from_a_converted_checkpoint_without_missing_trunk_keys(tmp_path):
    """Two iterations of tools/train_net.py with configs/voc_r50.yaml (a ResNet-18 to stay small)
    on the synthetic set, from a converted torchvision checkpoint."""
    tv = _randomise_norms(torchvision.models.resnet18(), 5)
    weights = tmp_path / "r18.pth"
    assert _tool().main([_save({"state_dict": tv.state_dict()}, tmp_path / "in.pth"),
                         str(weights)]) == 0
    out_dir = tmp_path / "out"
    opts = [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(weights), "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "DATASETS.TRAIN", "('synth_openworld_train',)",
        "DATASETS.TEST", "()", "DATASETS.SYNTHETIC.NUM_TRAIN", "8",
        "DATASETS.SYNTHETIC.NUM_VAL", "4", "DATASETS.SYNTHETIC.IMAGE_SIZE", "64",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.CROP.ENABLED", "False", "INPUT.VIEWS.DIRS", "['', '{split}_depth', '{split}_style']",
        "INPUT.VIEWS.EXTS", "['', '.png', '.png']", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "TEST.EVAL_PERIOD", "0",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.VCLR_HEAD.NUM_CONVS", "1", "MODEL.VCLR_HEAD.EMBED_DIM", "32",
        "MODEL.VCLR_HEAD.MASK_BRANCH_CHANNELS", "32", "OUTPUT_DIR", str(out_dir)]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    run = subprocess.run([sys.executable, str(ROOT / "tools/train_net.py"), "--config-file",
                          str(ROOT / "configs/voc_r50.yaml"), *opts], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    # the checkpointer's warning lists what the file lacks: the FPN and head, no trunk key
    warning = log[log.index("not found in the checkpoint"):]
    warning = warning[: warning.index("\n[")]
    assert "backbone.fpn_lateral3" in warning and "head.box_pred" in warning
    assert "bottom_up" not in warning
    assert "not used by the model" not in log  # nor unexpected keys
    model = torch.load(out_dir / "model_final.pth", map_location="cpu", weights_only=False)
    # the stem is frozen (FREEZE_AT 1): it is still the converted one, student and teacher
    for prefix in ("", "teacher."):
        w = model["model"][prefix + "backbone.bottom_up.stem.conv1.weight"]
        torch.testing.assert_close(w, tv.conv1.weight.detach(), rtol=0, atol=1e-6)


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_resnet_fpn_has_the_layout_of_detectron2s_retinanet_backbone():
    cfg = get_vclr_cfg(str(ROOT / "configs/voc_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    ours = build_backbone(cfg)
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    theirs = build_backbone(cfg)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(ours.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    frozen = [n for n, p in ours.named_parameters() if not p.requires_grad]
    assert frozen == ["bottom_up.stem.conv1.weight"]  # FREEZE_AT 1, the official code's
    coco = get_vclr_cfg(str(ROOT / "configs/coco_lvis_r50.yaml"))
    assert coco.MODEL.BACKBONE.NAME == "build_vclr_resnet_fpn_backbone"
    assert coco.DATASETS.TEST == ("openworld_LVIS_noncoco_val2017",)


def test_unknown_layout_is_refused_naming_the_keys(tv_r18, tmp_path, capsys):
    sd = dict(tv_r18.state_dict())
    sd["layer2.0.se.fc1.weight"] = torch.zeros(8, 128)
    sd["layer4.1.attn.qkv.weight"] = torch.zeros(3, 3)
    out = tmp_path / "out.pth"
    assert _tool().main([_save(sd, tmp_path / "se.pth"), str(out)]) == 1
    err = capsys.readouterr().err
    assert "2 keys under '' are not understood" in err
    assert "layer2.0.se.fc1.weight" in err and "layer4.1.attn.qkv.weight" in err
    assert not out.exists()

    no_resnet = {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}
    assert _tool().main([_save(no_resnet, tmp_path / "vit.pth"), str(out)]) == 1
    assert "found no ResNet weights" in capsys.readouterr().err


def test_missing_trunk_tensors_are_named(tv_r50):
    sd = {k: v for k, v in tv_r50.state_dict().items() if k != "layer3.2.bn2.running_var"}
    with pytest.raises(ValueError, match=r"lacks 1 tensors.*res4\.2\.conv2\.norm\.running_var"):
        convert_resnet(sd)


def test_prefix_choice(tv_r50):
    sd = {**{"a." + k: v for k, v in tv_r50.state_dict().items()},
          **{"b." + k: v for k, v in tv_r50.state_dict().items()}}
    with pytest.raises(ValueError, match=r"several prefixes \['a\.', 'b\.'\]; choose one with "
                                         r"--prefix"):
        convert_resnet(sd)
    assert convert_resnet(sd, prefix="b.")[1].prefix == "b."
    with pytest.raises(ValueError, match=r"--prefix 'c\.' does not lead to ResNet weights"):
        convert_resnet(sd, prefix="c.")


def test_pickled_objects_need_trust_and_key_selects_the_branch(tv_r18, tmp_path, capsys):
    obj = {"student": {"module.backbone." + k: v for k, v in tv_r18.state_dict().items()},
           "teacher": {"module.backbone." + k: v * 0 for k, v in tv_r18.state_dict().items()},
           "args": argparse.Namespace(arch="resnet50")}
    src, out = _save(obj, tmp_path / "dino_full.pth"), tmp_path / "out.pth"
    assert _tool().main([src, str(out)]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert _tool().main([src, str(out), "--trust-pickle", "--key", "student"]) == 0
    printed = capsys.readouterr().out
    assert "['student'], backbone prefix 'module.backbone.': 100 tensors" in printed
    w = torch.load(out, weights_only=True)["model"]["backbone.bottom_up.stem.conv1.weight"]
    assert torch.equal(w, tv_r18.conv1.weight)  # the student's, not the zeroed teacher's
    assert _tool().main([src, str(out), "--trust-pickle", "--key", "ema"]) == 1
    assert "has no entry 'ema'" in capsys.readouterr().err


def test_detectron2_layout_pkl_is_reprefixed(tv_r18, tmp_path, capsys):
    converted, _ = convert_resnet(tv_r18.state_dict())
    with open(tmp_path / "dino_RN50_pretrain_d2_format.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in converted.items()},
                     "__author__": "torchvision", "matching_heuristics": True}, f)
    out, src = tmp_path / "out.pth", str(tmp_path / "dino_RN50_pretrain_d2_format.pkl")
    assert _tool().main([src, str(out)]) == 1
    assert "pickle file, which can run code" in capsys.readouterr().err
    assert _tool().main([src, str(out), "--trust-pickle"]) == 0
    model = torch.load(out, weights_only=True)["model"]
    assert sorted(model) == sorted("backbone.bottom_up." + k for k in converted)
    assert all(torch.equal(model["backbone.bottom_up." + k], v) for k, v in converted.items())

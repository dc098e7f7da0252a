"""The ConvNeXt-FPN backbone: shapes, freezing, and loading weights from local files."""

import pytest
import timm
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from vclr_d2.modeling.backbone.convnext import ConvNeXt, load_convnext_weights


@pytest.mark.parametrize(
    "name,channels",
    [("convnext_atto", (40, 80, 160, 320)), ("convnext_tiny", (96, 192, 384, 768))],
)
def test_trunk_outputs_match_output_shape(name, channels):
    trunk = ConvNeXt(name, out_features=("res2", "res3", "res4", "res5")).eval()
    shapes = trunk.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (channels[0], 4),
        "res3": (channels[1], 8),
        "res4": (channels[2], 16),
        "res5": (channels[3], 32),
    }
    with torch.no_grad():
        out = trunk(torch.randn(1, 3, 96, 128))
    for k, v in out.items():
        assert v.shape == (1, shapes[k].channels, 96 // shapes[k].stride, 128 // shapes[k].stride)


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_tiny"])
@pytest.mark.parametrize(
    "top_block,levels",
    [("p6p7", ["p3", "p4", "p5", "p6", "p7"]), ("maxpool", ["p3", "p4", "p5", "p6"]),
     ("none", ["p3", "p4", "p5"])],
)
def test_fpn_outputs_match_output_shape(cfg, name, top_block, levels):
    cfg.MODEL.CONVNEXT.NAME = name
    cfg.MODEL.FPN.TOP_BLOCK = top_block
    assert "build_convnext_fpn_backbone" in BACKBONE_REGISTRY
    backbone = build_backbone(cfg).eval()
    shapes = backbone.output_shape()
    assert list(shapes) == levels
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 128, 128))
    assert list(out) == levels
    for k, v in out.items():
        stride = shapes[k].stride
        assert stride == 2 ** int(k[1:])
        assert v.shape == (2, 256, -(-128 // stride), -(-128 // stride))


def test_unrequested_stages_are_not_built():
    trunk = ConvNeXt("convnext_atto", out_features=("res3",))
    assert len(trunk.stages) == 2
    assert list(trunk(torch.randn(1, 3, 64, 64))) == ["res3"]


@pytest.mark.parametrize("freeze_at,frozen_stages", [(0, 0), (1, 0), (3, 2), (5, 4)])
def test_frozen_stages_get_no_gradient(freeze_at, frozen_stages):
    trunk = ConvNeXt("convnext_atto", out_features=("res2", "res3", "res4", "res5"),
                     freeze_at=freeze_at)
    out = trunk(torch.randn(2, 3, 64, 64, requires_grad=True))
    sum(v.float().pow(2).mean() for v in out.values()).backward()
    stem_grads = [p.grad for p in trunk.stem.parameters()]
    assert all(g is None for g in stem_grads) == (freeze_at >= 1)
    for i, stage in enumerate(trunk.stages):
        grads = [p.grad for p in stage.parameters()]
        if i < frozen_stages:
            assert all(g is None for g in grads), f"stage {i} is frozen but got a gradient"
        else:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), f"stage {i}"


def test_timm_weights_reproduce_timm_features(tmp_path):
    reference = timm.create_model("convnext_atto", features_only=True).eval()
    full = timm.create_model("convnext_atto").eval()
    full.load_state_dict(
        {k.replace("stages_", "stages.").replace("stem_", "stem."): v
         for k, v in reference.state_dict().items()}, strict=False)
    path = tmp_path / "convnext_atto.pth"
    torch.save(full.state_dict(), path)

    trunk = ConvNeXt("convnext_atto", out_features=("res2", "res3", "res4", "res5")).eval()
    load_convnext_weights(trunk, str(path))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = list(trunk(x).values())
        theirs = reference(x)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_safetensors_and_detectron2_checkpoint_load(tmp_path):
    from safetensors.torch import save_file

    src = ConvNeXt("convnext_atto", out_features=("res5",))
    sd = src.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"model": {f"backbone.bottom_up.{k}": v for k, v in sd.items()},
                "iteration": 7}, tmp_path / "model_final.pth")
    for name in ("w.safetensors", "model_final.pth"):
        dst = ConvNeXt("convnext_atto", out_features=("res5",))
        load_convnext_weights(dst, str(tmp_path / name))
        for k, v in dst.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)


def test_missing_weight_file_names_the_file(cfg, tmp_path):
    path = tmp_path / "nope.pth"
    cfg.MODEL.CONVNEXT.WEIGHTS = str(path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone(cfg)


def test_mismatched_weight_file_names_the_file(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(timm.create_model("convnext_femto").state_dict(), path)
    with pytest.raises(ValueError, match=r"tiny\.pth.*convnext_atto.*shape mismatches"):
        load_convnext_weights(ConvNeXt("convnext_atto"), str(path))


def test_file_without_convnext_keys_names_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"other\.pth holds no ConvNeXt trunk weights"):
        load_convnext_weights(ConvNeXt("convnext_atto"), str(path))


@pytest.mark.parametrize(
    "key,value,match",
    [("MODEL.CONVNEXT.OUT_FEATURES", ["res6"], "OUT_FEATURES"),
     ("MODEL.CONVNEXT.FREEZE_AT", 7, "FREEZE_AT=7"),
     ("MODEL.CONVNEXT.NAME", "resnet50", "resnet50"),
     ("MODEL.FPN.TOP_BLOCK", "p8", "TOP_BLOCK='p8'"),
     ("MODEL.CONVNEXT.CONV_MLP", "maybe", "CONV_MLP='maybe'")],
)
def test_wrong_config_values_are_named(cfg, key, value, match):
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg, ShapeSpec(channels=3))


def test_linear_mlp_trunk_loads_conv_mlp_weights_and_gives_the_same_features(tmp_path):
    conv = ConvNeXt("convnext_atto", out_features=("res2", "res5"), conv_mlp=True).eval()
    path = tmp_path / "atto.pth"
    torch.save(conv.state_dict(), path)
    linear = ConvNeXt("convnext_atto", out_features=("res2", "res5"), conv_mlp=False).eval()
    w = linear.state_dict()["stages.0.blocks.0.mlp.fc1.weight"]
    assert w.shape == (160, 40)  # a matrix, where the file holds a (160, 40, 1, 1) kernel
    load_convnext_weights(linear, str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(conv(x).values(), linear(x).values()):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_layer_scale_init_sets_every_block_gamma():
    trunk = ConvNeXt("convnext_atto", out_features=("res3",), layer_scale_init=0.5)
    gammas = [v for k, v in trunk.state_dict().items() if k.endswith(".gamma")]
    assert len(gammas) == 4  # 2 blocks in each of res2 and res3
    assert all(torch.equal(g, torch.full_like(g, 0.5)) for g in gammas)


def test_layer_scale_default_keeps_timm_choice_per_model():
    v1 = ConvNeXt("convnext_atto", out_features=("res2",))
    v2 = ConvNeXt("convnextv2_atto", out_features=("res2",))
    g1 = [v for k, v in v1.state_dict().items() if k.endswith(".gamma")]
    assert len(g1) == 2 and all(torch.equal(g, torch.full_like(g, 1e-6)) for g in g1)
    assert not [k for k in v2.state_dict() if k.endswith(".gamma")]  # V2 has GRN, no gammas

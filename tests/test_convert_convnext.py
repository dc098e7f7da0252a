"""tools/convert_pretrained.py --arch convnext: official ConvNeXt / ConvNeXt V2 and FCMAE
(sparse) checkpoints -> the timm state dict MODEL.CONVNEXT.WEIGHTS reads, exactly."""

import pytest
import timm
import torch

from tests.test_convert_pretrained import STAGES, _save, _tool
from vclr_d2.checkpoint import convert_convnext, densify_sparse_convnext
from vclr_d2.modeling.backbone.convnext import ConvNeXt, load_convnext_weights


def _random_convnext(name: str, seed: int):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=0).eval()
    with torch.no_grad():
        for p in model.parameters():  # GRN and layer scale start at 0 / 1e-6: make them count
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _official(timm_sd: dict) -> dict:
    """timm names -> the official ConvNeXt / ConvNeXt V2 repository's dense names."""
    out = {}
    for k, v in timm_sd.items():
        if k.startswith("head."):  # the final norm: not in FCMAE encoders, added where needed
            continue
        k = k.replace("stem.", "downsample_layers.0.")
        parts = k.split(".")
        if parts[0] == "stages" and parts[2] == "downsample":
            k = ".".join(["downsample_layers", parts[1], *parts[3:]])
        elif parts[0] == "stages":
            rest = ".".join(parts[4:])
            rest = (rest.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
                    .replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta"))
            k = f"stages.{parts[1]}.{parts[3]}.{rest}"
            if "pwconv" in k and k.endswith("weight"):
                v = v.reshape(v.shape[:2])  # Linear layers in the official code
            if "grn" in k:
                v = v.reshape(1, 1, 1, -1)
        out[k] = v
    return out


def _fcmae(official: dict) -> dict:
    """Official dense names -> FCMAE's sparse (MinkowskiEngine) encoder, plus decoder keys."""
    out = {"mask_token": torch.zeros(1, 512, 1, 1), "proj.weight": torch.zeros(512, 320, 1, 1),
           "decoder.0.dwconv.weight": torch.zeros(512, 1, 7, 7), "pred.bias": torch.zeros(48)}
    for k, v in official.items():
        parts = k.split(".")
        sparse_conv = ((parts[0] == "downsample_layers" and parts[1] != "0" and parts[2] == "1")
                       or "dwconv" in k)
        if sparse_conv and k.endswith("weight"):
            c_out, c_in, kh, kw = v.shape
            # kernel offset i = column * k + row
            v = v.permute(3, 2, 1, 0).reshape(kh * kw, c_in, c_out)
            if "dwconv" in k:
                v = v[:, 0, :]
            k = k[: -len("weight")] + "kernel"
        elif sparse_conv:
            v = v.reshape(1, -1)
        elif parts[0] == "downsample_layers" and parts[1] != "0":
            k = ".".join([*parts[:3], "ln", parts[3]])
        elif parts[-2] == "norm" and parts[0] == "stages":
            k = ".".join([*parts[:-1], "ln", parts[-1]])
        elif "pwconv" in k:
            k = ".".join([*parts[:-1], "linear", parts[-1]])
        elif "grn" in k:
            v = v.reshape(1, -1)
        out["encoder." + k] = v
    return out


def _convnext_features(trunk_or_timm, x):
    if isinstance(trunk_or_timm, ConvNeXt):
        return list(trunk_or_timm(x).values())
    y, feats = trunk_or_timm.stem(x), []
    for stage in trunk_or_timm.stages:
        y = stage(y)
        feats.append(y)
    return feats


@pytest.mark.parametrize("name,layout", [("convnextv2_atto", "fcmae"),
                                         ("convnext_atto", "official")])
def test_convnext_layouts_convert_to_timm_features(tmp_path, name, layout):
    reference = _random_convnext(name, 3)
    official = _official(reference.state_dict())
    if layout == "fcmae":
        obj = {"model": _fcmae(official), "epoch": 1600}
    else:
        obj = {"model": {**official, "norm.weight": torch.ones(320), "norm.bias": torch.zeros(320),
                         "head.weight": torch.zeros(1000, 320), "head.bias": torch.zeros(1000)}}
    src, out = _save(obj, tmp_path / f"{layout}.pt"), tmp_path / f"{name}.safetensors"
    assert _tool().main([src, str(out), "--arch", "convnext", "--name", name]) == 0
    trunk = ConvNeXt(name, out_features=STAGES).eval()
    load_convnext_weights(trunk, str(out))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = _convnext_features(trunk, x), _convnext_features(reference, x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _, report = convert_convnext(obj["model"], name)
    dropped = sorted(report.dropped)
    if layout == "fcmae":
        assert report.prefix == "encoder."
        assert dropped == ["decoder.0.dwconv.weight", "mask_token", "pred.bias", "proj.weight"]
    else:
        assert dropped == ["head.bias", "head.weight", "norm.bias", "norm.weight"]


def test_convnext_of_another_size_or_layout_is_refused():
    official = _official(_random_convnext("convnextv2_atto", 4).state_dict())
    with pytest.raises(ValueError, match=r"not a convnextv2_femto trunk: .* other shapes"):
        convert_convnext(official, "convnextv2_femto")
    with pytest.raises(ValueError, match=r"not a convnext_atto trunk: .*not understood.*grn"):
        convert_convnext(official, "convnext_atto")  # V2 weights (GRN) for a V1 model
    with pytest.raises(ValueError, match=r"kernel of shape \(5, 40\)"):
        densify_sparse_convnext({"stages.0.0.dwconv.kernel": torch.zeros(5, 40)})

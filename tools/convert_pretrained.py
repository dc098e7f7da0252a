#!/usr/bin/env python
"""Convert a pretrained backbone checkpoint into what vclr_d2 loads.

ResNet (torchvision layout: ImageNet, DINO, MoCo v2/v3, CLoVE, PixPro...) -> a detectron2
checkpoint for MODEL.WEIGHTS with configs/voc_r50.yaml:

    python tools/convert_pretrained.py dino_resnet50_pretrain.pth output/dino_r50.pth
    python tools/convert_pretrained.py moco_v2_800ep_pretrain.pth.tar output/mocov2_r50.pkl
    python tools/convert_pretrained.py dino_resnet50_pretrain_full_checkpoint.pth out.pth \\
        --key teacher --trust-pickle

ConvNeXt (official ConvNeXt / ConvNeXt V2, FCMAE pretraining, timm) -> a timm state dict for
MODEL.CONVNEXT.WEIGHTS:

    python tools/convert_pretrained.py convnextv2_tiny_1k_224_fcmae.pt \\
        output/convnextv2_tiny_fcmae.safetensors --arch convnext --name convnextv2_tiny

The entry holding the weights (--key: state_dict, model, teacher, student...) and the
backbone's key prefix (--prefix: module.encoder_q., module.base_encoder., module.backbone.,
module.encoder., encoder....) are found when not given; momentum / target encoders are passed
over. Keys that are no part of the backbone (classifier and projection heads, the momentum
encoder, queues, decoders) are dropped and listed; keys under the prefix that are not
understood stop the conversion and are named. The config keys the weights need are printed.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("source", help="pretraining checkpoint (.pth, .pth.tar, .pt, .bin, "
                        ".safetensors or detectron2 .pkl)")
    parser.add_argument("output", help="file to write: .pth/.pkl (resnet), "
                        ".safetensors/.pth (convnext)")
    parser.add_argument("--arch", default="resnet", choices=("resnet", "convnext"))
    parser.add_argument("--name", default=None,
                        help="timm ConvNeXt name, e.g. convnextv2_tiny (--arch convnext)")
    parser.add_argument("--key", default=None,
                        help="entry holding the weights, e.g. state_dict, teacher, student")
    parser.add_argument("--prefix", default=None,
                        help="key prefix of the backbone, e.g. module.encoder_q.")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="read files that pickle more than tensors (runs their code: only "
                             "for files from a source you trust)")
    args = parser.parse_args(argv)

    from vclr_d2.checkpoint import convert_file

    try:
        report = convert_file(args.source, args.output, arch=args.arch, name=args.name,
                              key=args.key, prefix=args.prefix, trust_pickle=args.trust_pickle)
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

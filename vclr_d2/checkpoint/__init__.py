"""Converting pretraining checkpoints into what vclr_d2's backbones load.

- ``convert_resnet``: torchvision-layout ResNets (ImageNet, DINO, MoCo v2/v3, CLoVE, PixPro...)
  -> detectron2 ResNet names (``resnet.py``);
- ``convert_convnext``: official ConvNeXt / ConvNeXt V2 and FCMAE (sparse) checkpoints -> timm
  names (``convnext.py``);
- ``read_checkpoint``, ``unwrap_state_dict``, ``find_prefixes``, ``choose_prefix``: reading
  files, wrapper entries and key prefixes (``io.py``);
- ``convert_file``: one file to another, as ``tools/convert_pretrained.py`` runs it.
"""

from .convert import ARCHS, convert_file
from .convnext import convert_convnext, densify_sparse_convnext
from .io import Report, choose_prefix, find_prefixes, read_checkpoint, unwrap_state_dict
from .resnet import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, convert_resnet

__all__ = [
    "ARCHS",
    "IMAGENET_PIXEL_MEAN",
    "IMAGENET_PIXEL_STD",
    "Report",
    "choose_prefix",
    "convert_convnext",
    "convert_file",
    "convert_resnet",
    "densify_sparse_convnext",
    "find_prefixes",
    "read_checkpoint",
    "unwrap_state_dict",
]

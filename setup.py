#!/usr/bin/env python
"""vclr_d2: v-CLR (View-Consistent Learning for open-world instance segmentation) in Detectron2."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="vclr_d2",
    version="0.1.0",
    description="v-CLR open-world instance segmentation with a ConvNeXt-FPN dense head",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["vclr_d2", "vclr_d2.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "detectron2",
        "timm",
        "pycocotools",
        "fvcore",
        "scipy",
        "opencv-python",
        "tqdm",
    ],
    extras_require={
        "dev": ["pytest", "ruff", "transformers", "submitit"],
        # tools/generate_views.py: depth from a local Hugging Face depth-estimation folder
        "views": ["transformers"],
        # tools/submit_slurm.py: SLURM jobs (one task per GPU) through submitit
        "slurm": ["submitit"],
    },
)

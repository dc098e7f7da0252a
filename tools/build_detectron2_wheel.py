#!/usr/bin/env python
"""Build a pure-Python ``detectron2==0.6`` wheel from PyPI's ``pb1-detectron2==0.6`` sdist.

detectron2 is not on PyPI under its own name. ``pb1-detectron2==0.6`` is the v0.6 release's
Python sources without the C++/CUDA sources; its own ``setup.py`` imports torch and always
compiles ``detectron2._C``, so ``pip install`` fails. This script downloads the sdist (checked
against its sha256), copies the ``detectron2`` package out of it, applies the patches below,
and packs it as a wheel named ``detectron2`` version ``0.6`` with a setup file of its own.

Patches (each one fails the build if its target text is not found, so a changed sdist is
noticed instead of silently half-patched):

1. ``detectron2/_C.py``: a fallback for the compiled extension. ``layers/deform_conv.py``,
   ``layers/rotated_boxes.py``, ``layers/roi_align_rotated.py`` and
   ``evaluation/fast_eval_api.py`` import ``detectron2._C`` unguarded, so without it nothing
   under ``detectron2.layers``, ``modeling`` or ``engine`` imports. The fallback provides
   ``get_compiler_version()``, ``get_cuda_version()`` and ``has_cuda()`` (called by
   ``collect_env_info()`` through ``default_setup``) and raises a ``RuntimeError`` naming the
   missing compiled op for everything else (deformable conv, rotated boxes, fast COCO eval).
2. Pillow >= 10 removed ``Image.LINEAR``, a default argument in
   ``data/transforms/transform.py`` (AttributeError at import): use ``Image.BILINEAR``, the
   same filter under its current name.
3. NumPy >= 1.24 removed the aliases ``np.int``, ``np.bool``, ``np.float`` and ``np.str``
   (``data/build.py`` uses ``np.int`` on every training loader with class names): replaced by
   the builtins they always were aliases of.
4. setuptools >= 82 has no ``pkg_resources``, imported by ``model_zoo/model_zoo.py`` (and
   through it ``detectron2.utils.testing``): resolved with ``importlib.resources`` instead.

Dependencies: the sdist's list, less ``black==21.4b2`` (only used to pretty-print LazyConfig
files, and it does not import with current ``click``), ``future``, ``pydot`` and the
``dataclasses`` backport (unused on Python >= 3.7).

5. Packaging only: the model-zoo config files (``detectron2/model_zoo/configs``) are shipped
   as package data, so ``model_zoo.get_config_file`` works (upstream's setup.py copies them).

The fallback ``_C`` carries ``BUILD_ID``, the hash of this script, so a changed script makes
``--install`` replace an older build; a detectron2 that is not ours is never touched.

Usage::

    python tools/build_detectron2_wheel.py --cache .cache/wheels            # build, print path
    python tools/build_detectron2_wheel.py --cache .cache/wheels --install  # and install it
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

BUILD_ID = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]

SDIST_URL = (
    "https://files.pythonhosted.org/packages/60/26/"
    "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/pb1-detectron2-0.6.tar.gz"
)
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_NAME = "detectron2-0.6-py3-none-any.whl"

INSTALL_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

# Sub-projects that v0.6 ships inside the detectron2 namespace.
PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}

FALLBACK_C = '''"""Fallback for detectron2's compiled extension (by vclr_d2's wheel builder).

This detectron2 was installed without its C++/CUDA extension. Pure-Python parts work; the
compiled-only ops raise a RuntimeError that names them.
"""

BUILD_ID = "{build_id}"


def get_compiler_version() -> str:
    return "not compiled (pure-Python build)"


def get_cuda_version() -> str:
    return "not compiled (pure-Python build)"


def has_cuda() -> bool:
    return False


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise RuntimeError(
        f"detectron2._C.{name} needs detectron2's compiled extension (detectron2._C), which "
        "this pure-Python build does not have. Build detectron2 from source with its C++/CUDA "
        "extension to use deformable convolution, rotated boxes or the fast COCO evaluator."
    )
'''

MODEL_ZOO_OLD_IMPORT = "import pkg_resources\n"
MODEL_ZOO_NEW_IMPORT = "import importlib.resources\n"
MODEL_ZOO_OLD_CALL = """    cfg_file = pkg_resources.resource_filename(
        "detectron2.model_zoo", os.path.join("configs", config_path)
    )"""
MODEL_ZOO_NEW_CALL = """    cfg_file = str(
        importlib.resources.files("detectron2.model_zoo").joinpath("configs", config_path)
    )"""

SETUP_PY = """from setuptools import setup

setup(
    name="detectron2",
    version="0.6",
    description="detectron2 v0.6, pure-Python build (no compiled extension)",
    url="https://github.com/facebookresearch/detectron2",
    license="Apache-2.0",
    packages={packages!r},
    package_dir={package_dir!r},
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.7",
    install_requires={install_requires!r},
)
"""


def _replace(path: Path, old: str, new: str, count: int | None = None) -> None:
    """Replace ``old`` by ``new`` in ``path``; fail unless found (``count`` times if given)."""
    text = path.read_text()
    found = text.count(old)
    if found == 0 or (count is not None and found != count):
        raise RuntimeError(f"patch target not found as expected in {path}: {old!r} ({found}x)")
    path.write_text(text.replace(old, new))


def _fetch_sdist(cache: Path) -> Path:
    sdist = cache / "pb1-detectron2-0.6.tar.gz"
    if not sdist.exists():
        print(f"downloading {SDIST_URL}", file=sys.stderr)
        with urllib.request.urlopen(SDIST_URL, timeout=180) as resp:
            data = resp.read()
        tmp = sdist.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.rename(sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise RuntimeError(f"{sdist}: sha256 {digest} != expected {SDIST_SHA256}; removed it")
    return sdist


def patch_tree(root: Path) -> None:
    """Apply the four compatibility patches to an extracted sdist rooted at ``root``."""
    pkg = root / "detectron2"
    # 1. fallback for the compiled extension
    (pkg / "_C.py").write_text(FALLBACK_C.replace("{build_id}", BUILD_ID))
    # 2. Pillow >= 10
    _replace(pkg / "data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR")
    # 3. NumPy >= 1.24 aliases
    alias = re.compile(r"\bnp\.(int|bool|float|str)\b(?![\w.])")
    n_alias = 0
    for py in sorted(list(pkg.rglob("*.py")) + list((root / "projects").rglob("*.py"))):
        text = py.read_text()
        new, n = alias.subn(r"\1", text)
        if n:
            py.write_text(new)
            n_alias += n
    if n_alias == 0:
        raise RuntimeError("patch target not found: no np.int/np.bool/np.float/np.str aliases")
    # 4. setuptools >= 82: no pkg_resources
    zoo = pkg / "model_zoo/model_zoo.py"
    _replace(zoo, MODEL_ZOO_OLD_IMPORT, MODEL_ZOO_NEW_IMPORT, count=1)
    _replace(zoo, MODEL_ZOO_OLD_CALL, MODEL_ZOO_NEW_CALL, count=1)


def build(cache: Path) -> Path:
    """Build the wheel (once per ``BUILD_ID``) under ``cache`` and return its path."""
    wheel = cache / f"detectron2-{BUILD_ID}" / WHEEL_NAME
    wheel.parent.mkdir(parents=True, exist_ok=True)
    if wheel.exists():
        return wheel
    sdist = _fetch_sdist(cache)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with tarfile.open(fileobj=io.BytesIO(sdist.read_bytes()), mode="r:gz") as tar:
            tar.extractall(tmp_path, filter="data")
        src = tmp_path / "pb1-detectron2-0.6"
        build_root = tmp_path / "build"
        build_root.mkdir()
        shutil.copytree(src / "detectron2", build_root / "detectron2")
        shutil.copytree(src / "projects", build_root / "projects")
        shutil.copy(src / "LICENSE", build_root / "LICENSE")
        patch_tree(build_root)
        packages = sorted(
            ".".join(p.parent.relative_to(build_root).parts)
            for p in (build_root / "detectron2").rglob("__init__.py")
        )
        for name, folder in PROJECTS.items():
            for p in sorted((build_root / folder).rglob("__init__.py")):
                packages.append(".".join((name, *p.parent.relative_to(build_root / folder).parts)))
        (build_root / "setup.py").write_text(
            SETUP_PY.format(
                packages=packages, package_dir=PROJECTS, install_requires=INSTALL_REQUIRES
            )
        )
        out = tmp_path / "dist"
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out)]
        subprocess.run([*pip_wheel, str(build_root)], check=True)
        built = next(out.glob("detectron2-0.6-*.whl"))
        shutil.move(str(built), wheel)
    return wheel


def installed_state() -> str:
    """``"ours"`` (this script's current build), ``"stale"`` (an older build of ours),
    ``"other"`` (a working detectron2 not built by us) or ``"missing"``."""
    probe = (
        "import detectron2.engine, detectron2.evaluation\n"
        "try:\n    import detectron2._C as c\nexcept ImportError:\n    c = None\n"
        "ours = c is not None and 'vclr_d2' in (c.__doc__ or '')\n"
        "print(c.__dict__.get('BUILD_ID', '?') if ours else '')"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if run.returncode != 0:
        return "missing"
    found = run.stdout.strip()
    if not found:
        return "other"
    return "ours" if found == BUILD_ID else "stale"


def install(cache: Path, pip_args: list[str]) -> None:
    """Install the wheel into this interpreter's environment unless a good detectron2 is there."""
    state = installed_state()
    if state in ("ours", "other"):
        which = "this build" if state == "ours" else "not built by vclr_d2"
        print(f"detectron2 already works ({which}); leaving it alone", file=sys.stderr)
        return
    wheel = build(cache)
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *pip_args]
    # Same name and version as an older or broken install: replace it, then add the dependencies.
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(wheel)], check=True)
    subprocess.run([*pip, str(wheel)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/wheels"),
                        help="folder for the downloaded sdist and the built wheel")
    parser.add_argument("--install", action="store_true",
                        help="install the wheel unless a working detectron2 is installed")
    parser.add_argument("--constraint", "-c", action="append", default=[],
                        help="pip constraint file for the dependencies (repeatable)")
    args = parser.parse_args()
    if args.install:
        install(args.cache, [a for c in args.constraint for a in ("-c", c)])
    else:
        print(build(args.cache))


if __name__ == "__main__":
    main()

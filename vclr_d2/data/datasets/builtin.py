"""Built-in registrations: the official open-world names and the synthetic open-world set.

The synthetic set (``vclr_d2.data.datasets.synthetic``) is registered lazily under three names:

- ``synth_openworld_train``: training images, ground truth of the known families, proposals
  from a separate file (``train_proposals.json``);
- ``synth_openworld_val_novel``: validation images, ground truth of the novel families only;
- ``synth_openworld_val_all``: the same images, every object with its family as category
  (for the seen/unseen breakdown with ``TEST.OPENWORLD.KNOWN_CLASSES``).

Its files are generated on first use into a cache folder keyed by the generator's parameters.

``register_all(cfg)`` then registers your own datasets of ``DATASETS.OPENWORLD.CUSTOM`` and the
proposal variants of ``DATASETS.OPENWORLD.PROPOSAL_VARIANTS`` (a dataset with its proposals
replaced by a file's).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .openworld import (
    load_openworld_json,
    register_official_openworld_datasets,
    register_openworld_dataset,
    register_proposal_variant,
)

__all__ = ["SYNTHETIC_DATASETS", "register_all", "register_synthetic_openworld",
           "synthetic_kwargs"]

SYNTHETIC_DATASETS = ("synth_openworld_train", "synth_openworld_val_novel",
                      "synth_openworld_val_all")


def register_synthetic_openworld(num_train: int = 1000, num_val: int = 200,
                                 image_size: int = 128, seed: int = 0,
                                 root: str | None = None,
                                 known_families: Sequence[str] = (),
                                 novel_families: Sequence[str] = ()) -> None:
    """(Re-)register the three synthetic names; generation happens when one is first loaded.
    ``known_families`` / ``novel_families``: the known/novel split (empty: the generator's
    defaults); any other value is another set with its own cache folder."""
    from .synthetic import family_split_params

    _register_synthetic(dict(num_train=num_train, num_val=num_val, image_size=image_size,
                             seed=seed, root=root or None,
                             params=family_split_params(known_families, novel_families)))


def _register_synthetic(kwargs: dict) -> None:
    """Register the three synthetic names for the set of ``ensure_synthetic_openworld(**kwargs)``."""
    from .synthetic import ensure_synthetic_openworld, synthetic_openworld_files

    files = synthetic_openworld_files(**kwargs)

    def loader(split: str):
        def load():
            f = ensure_synthetic_openworld(**kwargs)
            if split == "train":
                return load_openworld_json(f.train_json, f.train_images, "synth_openworld_train",
                                           proposals_file=f.train_proposals_json)
            json_file = f.val_novel_json if split == "val_novel" else f.val_all_json
            return load_openworld_json(json_file, f.val_images, f"synth_openworld_{split}")
        return load

    jsons = {"train": files.train_json, "val_novel": files.val_novel_json,
             "val_all": files.val_all_json}
    for split, json_file in jsons.items():
        name = f"synth_openworld_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, loader(split))
        with contextlib.redirect_stdout(io.StringIO()):
            MetadataCatalog.get(name).set(
                thing_classes=["object"], evaluator_type="openworld", json_file=json_file,
                image_root=files.train_images if split == "train" else files.val_images,
                known_classes=list(files.known_classes), novel_classes=list(files.novel_classes),
                synthetic_params=kwargs)


def synthetic_kwargs(cfg) -> dict:
    """The synthetic set a config names (``DATASETS.SYNTHETIC``), as keyword arguments of
    ``ensure_synthetic_openworld`` / ``synthetic_openworld_files``.

    Raises:
        ValueError: a bad value, with ``DATASETS.SYNTHETIC`` in the message.
    """
    from .synthetic import family_split_params

    s = cfg.DATASETS.SYNTHETIC
    try:
        return dict(num_train=s.NUM_TRAIN, num_val=s.NUM_VAL, image_size=s.IMAGE_SIZE,
                    seed=s.SEED, root=s.ROOT or None,
                    params=family_split_params(s.KNOWN_FAMILIES, s.NOVEL_FAMILIES))
    except ValueError as e:
        raise ValueError(f"DATASETS.SYNTHETIC: {e}") from None


def register_all(cfg=None) -> None:
    """Register every built-in name, from ``cfg`` when given (else the defaults)."""
    if cfg is None:
        register_official_openworld_datasets()
        register_synthetic_openworld()
        return
    d = cfg.DATASETS
    files = {}
    for entry in d.OPENWORLD.PROPOSAL_FILES:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"DATASETS.OPENWORLD.PROPOSAL_FILES entry '{entry}' must be "
                             "'<dataset name>=<path>'")
        files[name] = path
    register_official_openworld_datasets(d.OPENWORLD.ROOT or None, d.OPENWORLD.PROPOSAL_RULE,
                                         files)
    _register_synthetic(synthetic_kwargs(cfg))
    for entry in d.OPENWORLD.CUSTOM:
        if not (isinstance(entry, (list, tuple)) and len(entry) in (3, 4)
                and all(isinstance(x, str) and x for x in entry)):
            raise ValueError(f"DATASETS.OPENWORLD.CUSTOM entry {entry!r} must be [name, json "
                             "file, image folder] or [name, json file, image folder, "
                             "proposals file]")
        register_openworld_dataset(entry[0], entry[1], entry[2],
                                   proposals_file=entry[3] if len(entry) == 4 else None,
                                   proposal_rule=d.OPENWORLD.PROPOSAL_RULE)
    for entry in d.OPENWORLD.PROPOSAL_VARIANTS:  # after the others: variants refer to them
        name, sep, rest = entry.partition("=")
        base, sep2, path = rest.partition(":")
        if not (sep and sep2 and name and base and path):
            raise ValueError(f"DATASETS.OPENWORLD.PROPOSAL_VARIANTS entry '{entry}' must be "
                             "'<new name>=<registered dataset>:<proposals file>'")
        register_proposal_variant(name, base, path)

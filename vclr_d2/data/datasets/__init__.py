"""Dataset registration: official open-world names and the synthetic open-world set."""

from .builtin import (
    SYNTHETIC_DATASETS,
    register_all,
    register_synthetic_openworld,
    synthetic_kwargs,
)
from .openworld import (
    OFFICIAL_OPENWORLD_DATASETS,
    load_openworld_json,
    load_proposals_file,
    parse_proposal_rule,
    register_official_openworld_datasets,
    register_openworld_dataset,
    register_proposal_variant,
)

__all__ = [
    "OFFICIAL_OPENWORLD_DATASETS",
    "SYNTHETIC_DATASETS",
    "load_openworld_json",
    "load_proposals_file",
    "parse_proposal_rule",
    "register_all",
    "register_official_openworld_datasets",
    "register_openworld_dataset",
    "register_proposal_variant",
    "register_synthetic_openworld",
    "synthetic_kwargs",
]

register_all()

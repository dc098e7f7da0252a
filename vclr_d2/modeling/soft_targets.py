"""Score-weighted (soft) proposal targets, as CuVLER's self-training uses them.

With ``MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING``, the objectness (focal) loss of a location
matched to a proposal is multiplied by the proposal's score (its ``scores`` field, which the
dataset mapper fills from the proposals file), so that confident proposals teach objectness
more than doubtful ones. Ground truth, background locations and the box and mask terms keep
weight 1.

Shape shorthand: N images, R locations, K targets of an image, P matched pairs.
"""

from __future__ import annotations

import torch

__all__ = ["proposal_weight_map"]


def proposal_weight_map(like: torch.Tensor, targets: list, matches: list,
                        field: str = "weights") -> torch.Tensor:
    """(N, R) weights, 1 except at locations matched to a target with a weight.

    Args:
        like: (N, R) tensor giving shape, dtype and device.
        targets: per image, ``Targets`` whose ``field`` (``weights`` or ``score_weights``,
            (K,)) is None (all 1) or a tensor.
        matches: per image, (pred_idx (P,), tgt_idx (P,)).
    """
    weights = torch.ones_like(like)
    for i, ((pred_idx, tgt_idx), t) in enumerate(zip(matches, targets)):
        w = getattr(t, field)
        if w is not None and len(pred_idx):
            weights[i, pred_idx] = w[tgt_idx].to(like.dtype)
    return weights

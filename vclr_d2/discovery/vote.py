"""VoteCut-style voting: masks of several feature sources clustered by IoU, scored by agreement.

Shape shorthand: n candidate masks of one image, each (H, W) bool.

Each source proposes masks on its own. Candidates are grouped greedily: the candidate with the
most still-unassigned candidates above ``iou_thresh`` (itself included; ties: higher score,
then input order) starts a cluster holding those neighbours; repeated until every candidate is
in a cluster. A cluster gives one mask, the pixels covered by MORE than ``pixel_vote`` of its
members, and one score, ``agreement x mean member score``, where ``agreement`` is the fraction
of the sources that have a member in it. With one source, agreement is 1 and the score is the
member's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Candidate", "pairwise_iou", "vote"]


@dataclass
class Candidate:
    """A mask proposed for one image.

    Attributes:
        mask: (H, W) bool.
        score: in [0, 1].
        source: index of the feature source that proposed it.
        support: sources that agree on it (1 before voting).
    """

    mask: np.ndarray
    score: float
    source: int
    support: int = 1


def pairwise_iou(masks: list[np.ndarray]) -> np.ndarray:
    """(n, n) IoU of boolean masks of one size (0 between two empty masks)."""
    if not masks:
        return np.zeros((0, 0))
    flat = np.stack([m.reshape(-1) for m in masks]).astype(np.float32)
    inter = flat @ flat.T
    area = flat.sum(axis=1)
    union = area[:, None] + area[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def vote(candidates: list[Candidate], num_sources: int, iou_thresh: float = 0.5,
         pixel_vote: float = 0.5) -> list[Candidate]:
    """One candidate per cluster (see the module doc), best score first."""
    if num_sources < 1:
        raise ValueError(f"num_sources must be >= 1, got {num_sources}")
    n = len(candidates)
    if n == 0:
        return []
    near = pairwise_iou([c.mask for c in candidates]) > iou_thresh
    np.fill_diagonal(near, True)
    scores = np.array([c.score for c in candidates])
    free = np.ones(n, dtype=bool)
    out = []
    while free.any():
        counts = (near & free[None, :]).sum(axis=1)
        order = np.lexsort((np.arange(n), -scores, -counts))  # last key is primary
        pivot = next(i for i in order if free[i])
        members = np.flatnonzero(near[pivot] & free)
        free[members] = False
        votes = np.mean([candidates[i].mask for i in members], axis=0)
        support = len({candidates[i].source for i in members})
        score = support / num_sources * float(scores[members].mean())
        out.append(Candidate(votes > pixel_vote, score, candidates[pivot].source, support))
    out.sort(key=lambda c: -c.score)
    return out

"""Matchers: Hungarian optimality, dynamic-k exclusivity, the centre prior, empty targets."""

from itertools import permutations

import numpy as np
import pytest
import torch

from vclr_d2.modeling.matcher import DynamicKMatcher, HungarianMatcher, build_matcher


def _random_problem(gen: torch.Generator, num_locations: int, num_targets: int):
    """Locations on a 32 px grid of a 128 px image, random boxes and targets."""
    grid = (torch.arange(4) + 0.5) * 32
    locs = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
    pick = torch.randperm(16, generator=gen)[:num_locations]
    locations = locs[pick]
    strides = torch.full((num_locations,), 32.0)
    wh = torch.rand(num_locations, 2, generator=gen) * 60 + 10
    boxes = torch.cat([locations - wh / 2, locations + wh / 2], 1)
    xy = torch.rand(num_targets, 2, generator=gen) * 90
    twh = torch.rand(num_targets, 2, generator=gen) * 60 + 20
    targets = torch.cat([xy, xy + twh], 1)
    objectness = torch.randn(num_locations, generator=gen)
    return objectness, boxes, locations, strides, targets


def _brute_force_min(cost: np.ndarray) -> float:
    """Minimum total cost of a one-to-one assignment of all columns (cols <= rows)."""
    rows, cols = cost.shape
    return min(sum(cost[r, c] for c, r in enumerate(perm))
               for perm in permutations(range(rows), cols))


@pytest.mark.parametrize("seed", range(40))
def test_hungarian_equals_brute_force_optimum(seed):
    gen = torch.Generator().manual_seed(seed)
    num_locations, num_targets = 7, int(torch.randint(1, 5, (), generator=gen))
    problem = _random_problem(gen, num_locations, num_targets)
    matcher = HungarianMatcher(center_radius=1.5)
    pred_idx, tgt_idx = matcher(*problem, image_size=(128, 128))
    objectness, boxes, locations, strides, targets = problem
    cost = matcher.cost(objectness, boxes, targets, (128, 128)).numpy().astype(np.float64)
    cand = matcher.candidates(locations, strides, targets).numpy()
    # Off the centre prior a pair costs a constant 1e6: the brute force first maximises the
    # number of pairs within the prior, then minimises their cost, as the matcher must; a
    # target the matcher leaves unmatched is a 1e6 pair there.
    cost[~cand] = 1e6
    assert len(set(pred_idx.tolist())) == len(pred_idx) == len(set(tgt_idx.tolist()))
    assert cand[pred_idx.numpy(), tgt_idx.numpy()].all()
    total = cost[pred_idx.numpy(), tgt_idx.numpy()].sum() + 1e6 * (num_targets - len(pred_idx))
    assert total == pytest.approx(_brute_force_min(cost), abs=1e-6)


@pytest.mark.parametrize("seed", range(40))
def test_hungarian_respects_the_centre_prior(seed):
    gen = torch.Generator().manual_seed(seed)
    problem = _random_problem(gen, 16, int(torch.randint(1, 6, (), generator=gen)))
    matcher = HungarianMatcher(center_radius=1.5)
    pred_idx, tgt_idx = matcher(*problem, image_size=(128, 128))
    _, _, locations, strides, targets = problem
    cand = matcher.candidates(locations, strides, targets)
    assert cand[pred_idx, tgt_idx].all()
    assert len(set(pred_idx.tolist())) == len(pred_idx)
    # all targets get a location unless candidates run out
    assert len(pred_idx) == min(len(targets), int(cand.any(1).sum()))


@pytest.mark.parametrize("seed", range(40))
def test_dynamic_k_never_gives_a_location_to_two_targets(seed):
    gen = torch.Generator().manual_seed(seed)
    problem = _random_problem(gen, 16, int(torch.randint(1, 8, (), generator=gen)))
    matcher = DynamicKMatcher(center_radius=2.5, topk=10)
    pred_idx, tgt_idx = matcher(*problem, image_size=(128, 128))
    assert len(set(pred_idx.tolist())) == len(pred_idx)
    _, _, locations, strides, targets = problem
    assert matcher.candidates(locations, strides, targets)[pred_idx, tgt_idx].all()
    # a target loses a location only to a cheaper target, so most targets keep at least one
    assert len(set(tgt_idx.tolist())) >= 1


def test_dynamic_k_takes_k_from_summed_ious():
    """One target, three candidates with IoU 1, 0.9 and 0.6: k = round(2.5) = 2 (half to even
    in torch.round), the two cheapest."""
    target = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 40.0, 36.0],
                          [0.0, 0.0, 40.0, 24.0]])
    locations = torch.tensor([[20.0, 20.0], [18.0, 18.0], [22.0, 22.0]])
    matcher = DynamicKMatcher(center_radius=10.0, topk=10)
    pred_idx, tgt_idx = matcher(torch.zeros(3), boxes, locations, torch.full((3,), 8.0),
                                target, (64, 64))
    assert sorted(pred_idx.tolist()) == [0, 1] and tgt_idx.tolist() == [0, 0]


@pytest.mark.parametrize("name", ["HungarianMatcher", "DynamicKMatcher"])
def test_no_targets_gives_no_pairs(cfg, name):
    cfg.MODEL.VCLR_MATCHER.NAME = name
    matcher = build_matcher(cfg)
    pred_idx, tgt_idx = matcher(torch.zeros(5), torch.rand(5, 4), torch.rand(5, 2),
                                torch.ones(5), torch.zeros(0, 4), (32, 32))
    assert pred_idx.shape == tgt_idx.shape == (0,)
    assert pred_idx.dtype == torch.int64


def test_centre_prior_falls_back_for_tiny_targets():
    matcher = HungarianMatcher(center_radius=2.5)
    locations = torch.tensor([[4.0, 4.0], [12.0, 4.0], [100.0, 100.0]])
    strides = torch.full((3,), 8.0)
    tiny = torch.tensor([[13.0, 5.0, 14.0, 6.0]])  # holds no location centre
    far = torch.tensor([[60.0, 60.0, 61.0, 61.0]])  # no location within 2.5 strides
    cand = matcher.candidates(locations, strides, torch.cat([tiny, far]))
    assert cand[:, 0].tolist() == [True, True, False]  # within the radius
    assert cand[:, 1].tolist() == [False, False, True]  # nearest location


def test_unknown_matcher_name_is_named(cfg):
    cfg.MODEL.VCLR_MATCHER.NAME = "greedy"
    with pytest.raises(ValueError, match="NAME='greedy'"):
        build_matcher(cfg)


def test_old_short_matcher_name_says_its_registry_name(cfg):
    cfg.MODEL.VCLR_MATCHER.NAME = "dynamic_k"
    with pytest.raises(ValueError, match="now called 'DynamicKMatcher'"):
        build_matcher(cfg)


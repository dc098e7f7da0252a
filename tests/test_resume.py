"""Exact resume: the training stream is a function of (seed, iteration), checkpoints hold
everything else, and N/2 iterations + ``--resume`` N/2 give the weights of N straight."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vclr_d2.data.stream import BatchPlan, TrainStream, TrainStreamLoader

from .train_utils import cli_args, model_state, train_net


def test_batch_plan_is_a_function_of_seed_and_iteration():
    groups = [list(range(0, 6)), list(range(100, 104))]  # e.g. wide and tall images
    plan = BatchPlan(groups, batch_size=2, seed=7)
    batches = [plan.global_batch(i) for i in range(9000)]
    # the same batches, asked for in another order from a fresh plan
    other = BatchPlan(groups, batch_size=2, seed=7)
    for i in (8999, 4100, 0, 4095, 4096, 17):
        assert other.global_batch(i) == batches[i]
    assert BatchPlan(groups, batch_size=2, seed=8).global_batch(0) != batches[0] or (
        BatchPlan(groups, batch_size=2, seed=8).global_batch(1) != batches[1])
    # a batch never mixes groups; each group's batches go through it once per pass
    by_group = {0: [], 1: []}
    for b in batches:
        g = 0 if b[0] < 100 else 1
        assert all((x < 100) == (g == 0) for x in b)
        by_group[g].extend(b)
    for g, members in ((0, groups[0]), (1, groups[1])):
        seq = by_group[g]
        for p in range(len(seq) // len(members)):
            assert sorted(seq[p * len(members):(p + 1) * len(members)]) == members
    # groups are drawn in proportion to their sizes (6 : 4 images)
    share = len(by_group[0]) / (len(by_group[0]) + len(by_group[1]))
    assert share == pytest.approx(0.6, abs=0.02)


def _probe_mapper(d: dict) -> dict:
    """Records the image and one draw of each global RNG the real mapper may use."""
    return {"index": d["i"], "np": float(np.random.rand()), "torch": float(torch.rand(())),
            "py": __import__("random").random()}


def _batches(loader_or_stream, n: int) -> list[list[dict]]:
    it = iter(loader_or_stream)
    return [next(it) for _ in range(n)]


def test_stream_does_not_depend_on_workers_processes_or_start_iteration():
    data = [{"i": i, "width": 10, "height": 10} for i in range(7)]
    plan = lambda: BatchPlan([range(7)], batch_size=4, seed=3)  # noqa: E731
    one = _batches(TrainStream(data, _probe_mapper, plan()), 6)
    # two processes: their halves of each global batch, in order, make the one-process batch
    halves = [_batches(TrainStream(data, _probe_mapper, plan(), rank=r, world_size=2), 6)
              for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == one
    # starting at iteration 4 gives iterations 4 and 5 of the uninterrupted stream
    assert _batches(TrainStream(data, _probe_mapper, plan(), start_iter=4), 2) == one[4:]
    # data-loader workers (each maps every second iteration) deliver the same, in order
    loader = TrainStreamLoader(data, _probe_mapper, groups=[range(7)], batch_size=4, seed=3,
                               num_workers=2)
    loader.start_iter = 1
    assert _batches(loader, 5) == one[1:]
    # mapping an image draws from its own seeds and leaves the caller's RNG state alone
    torch.manual_seed(5)
    expected = torch.rand(())
    torch.manual_seed(5)
    _batches(TrainStream(data, _probe_mapper, plan()), 2)
    assert torch.rand(()) == expected
    # every image appears once in the first pass (7 images, 4 per batch)
    seen = [x["index"] for b in one[:2] for x in b][:7]
    assert sorted(seen) == list(range(7))


# Random geometry (the recipe's scale jitter, crop and flip), three views, every student
# augmentation, drop path and subsampled mask targets: every source of randomness in the training
# step.
RANDOM_OPTS = [
    "MODEL.CONVNEXT.DROP_PATH_RATE", "0.2",
    "MODEL.VCLR_HEAD.MAX_MASKS_PER_IMAGE", "1", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "()",
]


@pytest.mark.slow
def test_half_run_and_resume_equal_the_straight_run_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    tn = train_net()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # 6 iterations straight, with two data-loader workers (checkpoint after iteration 3)
    tn.main(cli_args(straight, *RANDOM_OPTS, "DATALOADER.NUM_WORKERS", "2"))
    # a run that stopped after its checkpoint of iteration 3, resumed without workers
    resumed.mkdir()
    shutil.copy(straight / "model_0000002.pth", resumed)
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    tn.main(cli_args(resumed, *RANDOM_OPTS, flags=("--resume",)))

    a, b = model_state(straight / "model_final.pth"), model_state(resumed / "model_final.pth")
    assert sorted(a) == sorted(b)
    teacher = [k for k in a if k.startswith("teacher.")]
    assert len(teacher) > 100
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # iterations 3-5 moved the weights (so the comparison is not trivially true), and the
    # teacher is an average, not a copy, of the student
    half = model_state(straight / "model_0000002.pth")
    assert max((a[k].float() - half[k].float()).abs().max().item() for k in teacher) > 1e-5
    assert not torch.equal(a["teacher.head.embed.weight"], a["head.embed.weight"])

    # the checkpoint holds the optimizer, the scheduler, the iteration and the stream's seed
    ckpt = torch.load(straight / "model_0000002.pth", map_location="cpu", weights_only=False)
    t = ckpt["trainer"]
    assert t["iteration"] == 2 and t["_trainer"]["seed"] == 0
    assert len(t["_trainer"]["optimizer"]["state"]) > 100  # AdamW moments of every parameter
    assert t["hooks"]["LRScheduler"]["last_epoch"] == 3
    # the optimizer resumes at the learning rate of iteration 3: past the 2 warm-up
    # iterations, BASE_LR 0.001, not the warm-up's 0.001 * WARMUP_FACTOR 0.01
    assert {g["lr"] for g in t["_trainer"]["optimizer"]["param_groups"]} == {0.001}
    lrs = [[m["lr"] for m in map(json.loads, (d / "metrics.json").open()) if "lr" in m][-1]
           for d in (straight, resumed)]
    assert lrs[0] == lrs[1] == pytest.approx(1e-4)  # after the step at iteration 4

"""End to end: tools/train_net.py trains on a tiny synthetic set, checkpoints, and evaluates the
teacher with --eval-only, in fresh processes as a user runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.train_utils import TINY as BASE_TINY

ROOT = Path(__file__).resolve().parents[1]

# tests.train_utils.TINY (8 training images of 64 px, a small head), 2 iterations, evaluated at
# the end on two test sets: results keyed by dataset (DefaultTrainer.test unwraps a single one)
TINY = [*BASE_TINY, "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "TEST.EVAL_PERIOD", "2",
        "DATASETS.TEST", "('synth_openworld_val_novel', 'synth_openworld_val_all')"]


def _run(args: list[str], env: dict) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "train_net.py"), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_train_net_trains_checkpoints_and_eval_only_reproduces_the_teacher_results(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="2")
    out_dir = tmp_path / "out"
    common = ["--config-file", str(ROOT / "configs/synthetic/vclr.yaml"), *TINY,
              "OUTPUT_DIR", str(out_dir)]
    log = _run(common, env)

    # the EMA hook runs before checkpointing and evaluation
    hooks = log[log.index("hooks, in order: ") + 17:].splitlines()[0].split(", ")
    assert [h for h in hooks if h in ("EMAHook", "PeriodicCheckpointer", "EvalHook")] == [
        "EMAHook", "PeriodicCheckpointer", "EvalHook"]

    ckpt = torch.load(out_dir / "model_final.pth", map_location="cpu", weights_only=False)
    model = ckpt["model"]
    teacher = [k for k in model if k.startswith("teacher.")]
    assert teacher and all(k[len("teacher."):] in model for k in teacher)
    assert ckpt["iteration"] == 1  # 0-based index of the last of 2 iterations

    # training evaluated both test sets at its last iteration; --eval-only must reproduce them
    metrics = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    final = {k: v for m in metrics for k, v in m.items() if k.startswith("synth_openworld")}
    assert {"synth_openworld_val_novel/bbox/AR@100", "synth_openworld_val_all/segm/AR@10"} <= set(
        final)
    log = _run(["--eval-only", *common, "MODEL.WEIGHTS", str(out_dir / "model_final.pth")], env)
    results = json.loads(log[log.rindex("EVAL_RESULTS ") + len("EVAL_RESULTS "):].splitlines()[0])
    for name, value in final.items():
        dataset, task, key = name.split("/")
        got = results[dataset][task][key]
        assert (math.isnan(got) and math.isnan(value)) or abs(got - value) < 1e-6, name
    assert not math.isnan(final["synth_openworld_val_novel/bbox/AR@100"])

    # tools/eval_views.py: the natural "view" is the standard evaluation, exactly; the depth
    # view's images are the depth files; a missing view file stops with its path
    views_json = tmp_path / "views.json"
    tool = [sys.executable, str(ROOT / "tools" / "eval_views.py"), "--config-file",
            str(ROOT / "configs/synthetic/vclr.yaml"), "--weights",
            str(out_dir / "model_final.pth")]
    # (--views takes several values: another option closes it before the config overrides)
    out = subprocess.run([*tool, "--views", "natural", "depth", "--output", str(views_json),
                          *TINY], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    by_view = json.loads(views_json.read_text())
    assert sorted(by_view) == sorted(f"{d}@{v}" for d in results for v in ("natural", "depth"))
    for dataset, res in results.items():
        for task in ("bbox", "segm"):
            for key, value in res[task].items():
                got = by_view[f"{dataset}@natural"][task][key]
                assert (math.isnan(got) and math.isnan(value)) or abs(got - value) < 1e-6
        assert set(by_view[f"{dataset}@depth"]["bbox"]) == set(res["bbox"])
    out = subprocess.run([*tool, "--views", "depth", "--output", str(views_json), *TINY,
                          "INPUT.VIEWS.DIRS",
                          "['', '{split}_nodepth', '{split}_style']"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "val_nodepth" in out.stderr and "no such file" in out.stderr

    # tools/embedding_stats.py on the trained teacher: 2 test images of 64 px, levels p3-p5
    # (8x8 + 4x4 + 2x2 = 84 locations each)
    stats_json = tmp_path / "stats.json"
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "embedding_stats.py"),
                          *tool[2:], "--images", "2", "--pairs", "100", "--top", "5",
                          "--output", str(stats_json), *TINY], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    stats = json.loads(stats_json.read_text())
    # 2 images of 64 px, head on P2-P4: 2 x (16^2 + 8^2 + 4^2) locations
    assert stats["locations"] == 672 and stats["images"] == 2 and stats["weights"] == "teacher"
    assert stats["dataset"] == "synth_openworld_val_novel"
    assert all(-1 <= stats[k] <= 1 for k in ("random_pair_cos", "top_pair_cos"))
    assert 0 <= stats["mean_direction_norm"] <= 1
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "embedding_stats.py"),
                          *tool[2:], *TINY, "DATASETS.TEST", "()"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "DATASETS.TEST is empty" in out.stderr

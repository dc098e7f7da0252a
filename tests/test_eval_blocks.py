"""ImageGroupsEvaluator / index_blocks (vclr_d2/evaluation/groups.py) and tools/eval_blocks.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.test_evaluation_evaluator import (  # noqa: F401 (register: a fixture)
    _assert_close,
    _mask_case,
    _run,
    register,
)
from tests.train_utils import TINY
from vclr_d2.engine import VCLRTrainer, load_cfg, load_for_evaluation
from vclr_d2.engine.experiments import ROWS, openworld_metrics, run_row
from vclr_d2.evaluation import ImageGroupsEvaluator, OpenWorldEvaluator, index_blocks
from vclr_d2.utils import load_tool

ROOT = Path(__file__).resolve().parents[1]


def test_index_blocks_in_dataset_order():
    groups = index_blocks([7, 3, 9, 1, 4, 8, 2], 3)  # 7 images: two blocks, one image left
    assert list(groups.items()) == [("block 0", [7, 3, 9]), ("block 1", [1, 4, 8]),
                                    ("blocks 1+", [1, 4, 8]), ("all", [7, 3, 9, 1, 4, 8])]
    assert list(index_blocks([5, 6], 2)) == ["block 0", "all"]  # one block: no "blocks 1+"
    with pytest.raises(ValueError, match="3 images are fewer than one block of 4"):
        index_blocks([1, 2, 3], 4)
    with pytest.raises(ValueError, match="block must be at least 1, got 0"):
        index_blocks([1, 2, 3], 0)


def test_each_group_equals_evaluating_its_images_alone(register):  # noqa: F811
    gt, outputs = _mask_case(seed=1, num_images=6)
    register("_vclr_groups", gt)
    groups = {"first": [1, 2, 3], "last": [4, 5, 6], "odd": [1, 3, 5], "all": [1, 2, 3, 4, 5, 6]}
    grouped = _run(ImageGroupsEvaluator(
        lambda: OpenWorldEvaluator("_vclr_groups", max_dets=(1, 10, 100)), groups), outputs)
    assert list(grouped) == list(groups)
    for name, ids in groups.items():
        alone = _run(OpenWorldEvaluator("_vclr_groups", max_dets=(1, 10, 100)), outputs, ids)
        assert list(grouped[name]) == list(alone) == ["bbox", "segm"]
        for task in alone:  # equal, NaN (no object of a size) included
            _assert_close(grouped[name][task], alone[task])
    assert grouped["first"]["bbox"]["AR@100"] != grouped["last"]["bbox"]["AR@100"]
    with pytest.raises(ValueError, match=r"groups \['none'\] have no image ids"):
        ImageGroupsEvaluator(lambda: None, {"a": [1], "none": []})


def test_block_zero_is_the_runs_own_validation_set(tmp_path, capsys):
    """Two tiny runs (NUM_VAL 4) evaluated on 8 validation images in blocks of 4: block 0 gives
    exactly the metrics of each run's own evaluation; the pair table is their difference; the
    results are read back from --output."""
    opts = TINY + ["SOLVER.MAX_ITER", "3", "TEST.DETECTIONS_PER_IMAGE", "10",
                   "DATASETS.SYNTHETIC.ROOT", str(tmp_path / "data")]
    config = str(ROOT / "configs" / ROWS["a"].config)
    runs = [str(tmp_path / f"a_seed{s}") for s in (0, 1)]
    records = [run_row(config, s, run, opts, threads=1)[0] for s, run in zip((0, 1), runs)]
    tool = load_tool("eval_blocks")
    out = tmp_path / "blocks.json"
    capsys.readouterr()  # the training logs
    report = tmp_path / "docs" / "blocks.md"
    assert tool.main([runs[1], "--baseline", runs[0], "--num-val", "8",
                      "--output", str(out), "--report", str(report)]) == 0
    first = capsys.readouterr().out
    # the report: a header with the command that made it, then exactly the printed tables
    text = report.read_text()
    command = (f"python tools/eval_blocks.py {runs[1]} --baseline {runs[0]} --num-val 8 "
               f"--output {out} --report {report}")
    assert text.startswith("# Validation blocks") and f"\n    {command}\n" in text
    assert ": 2 of the 2 runs evaluated by this invocation" in text
    assert "the 2 runs' evaluations took" in text and "in blocks of 4:" in text
    tables = first[first.index(f"{runs[1]}:\n\n| images"):first.index(f"report: {report}")]
    assert text.endswith("\n\n" + tables)
    saved = json.loads(out.read_text())
    for run, record in zip(runs, records):
        assert saved[run]["num_val"] == 8 and saved[run]["block"] == 4
        groups = saved[run]["groups"]
        assert list(groups) == ["block 0", "block 1", "blocks 1+", "all"]
        assert groups["block 0"] == record["metrics"]
        assert groups["block 1"] == groups["blocks 1+"]
    # "all" is what a plain evaluation of the run on all 8 images gives
    cfg = load_cfg(f"{runs[0]}/config.yaml", ["DATASETS.SYNTHETIC.NUM_VAL", "8",
                                              "MODEL.WEIGHTS", f"{runs[0]}/model_final.pth"])
    model = VCLRTrainer.build_model(cfg)
    load_for_evaluation(model, cfg)
    plain = openworld_metrics(VCLRTrainer.test(cfg, model))
    assert saved[runs[0]]["groups"]["all"] == plain
    assert plain["all mask AR@100"] > 0
    capsys.readouterr()
    base, run = (saved[r]["groups"]["all"] for r in runs)  # the table: run − base
    row = " | ".join(tool.signed(run[k] - base[k]) for k in tool.METRICS)
    assert f"| all | {row} |" in first
    assert [tool.signed(x) for x in (-0.04, 0.04, -1.25, 2.0)] == ["+0.0", "+0.0", "-1.2", "+2.0"]
    assert "Over the one pair," in first and "sd across the 2 blocks" in first

    def no_evaluation(*args):
        raise AssertionError("evaluated again")

    tool.evaluate_run, kept = no_evaluation, tool.evaluate_run
    try:
        assert tool.main([runs[1], "--baseline", runs[0], "--num-val", "8",
                          "--output", str(out)]) == 0
        again = capsys.readouterr().out  # the same tables (without the model-building logs)
        assert again == tables
        # two pairs that are each other's opposite: their mean is 0 on every block
        assert tool.main([runs[1], runs[0], "--baseline", runs[0], runs[1], "--num-val", "8",
                          "--output", str(out)]) == 0
    finally:
        tool.evaluate_run = kept
    both = capsys.readouterr().out
    # two runs: their mean ± sd per group, a row of the ablation's table on more images
    for side in ("RUN", "baseline"):
        assert f"{side}, over the 2 runs, mean ± sd:" in both
    row = " | ".join(tool.mean_sd([saved[r]["groups"]["blocks 1+"][k] for r in runs[::-1]])
                     for k in tool.METRICS)
    assert both.count(f"| blocks 1+ | {row} |") == 2  # RUN and baseline: the same two runs
    assert float(row.split(" ± ")[0]) == round(
        (saved[runs[0]]["groups"]["blocks 1+"][tool.METRICS[0]]
         + saved[runs[1]]["groups"]["blocks 1+"][tool.METRICS[0]]) / 2, 1)
    assert "Over the 2 pairs" in both
    assert "| sd across the 2 blocks of the mean over the pairs |" + " 0.0 |" * 5 in both
    # a run whose weights are another file than the one evaluated (trained again): evaluated
    # again, the other read back
    os.utime(f"{runs[0]}/model_final.pth", (1, 1))
    calls = []

    def counted(run, *args):
        calls.append(run)
        return kept(run, *args)

    tool.evaluate_run = counted
    try:
        assert tool.main([runs[1], "--baseline", runs[0], "--num-val", "8",
                          "--output", str(out)]) == 0
    finally:
        tool.evaluate_run = kept
    assert calls == [runs[0]]
    with pytest.raises(SystemExit):  # 10 images are two blocks of 4 and 2 that count nowhere
        tool.main([runs[0], "--num-val", "10"])
    assert "10 validation images are not whole blocks of 4" in capsys.readouterr().err
    assert json.loads(out.read_text())[runs[0]]["weights"]["mtime"] == 1


def test_bad_arguments_are_named(tmp_path, capsys):
    tool = load_tool("eval_blocks")
    with pytest.raises(SystemExit):
        tool.main(["x", "y", "--baseline", "z"])
    assert "--baseline needs one run per RUN: 2 runs, 1 baselines" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit):
        tool.main(["x", "--output", str(tmp_path / "bad.json")])
    assert "bad.json is not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "missing")])
    assert re.search(r"has no config.yaml \(.*missing/config.yaml\)", capsys.readouterr().err)


def test_runs_on_different_blocks_and_an_unwritable_report_are_named(tmp_path, capsys):
    tool = load_tool("eval_blocks")
    metrics = dict.fromkeys(tool.METRICS, 50.0)

    def saved(block: int, groups: list[str]) -> dict:
        return {"num_val": 8, "block": block, "groups": {g: metrics for g in groups}}

    out = tmp_path / "blocks.json"
    out.write_text(json.dumps({"x": saved(4, ["block 0", "block 1", "blocks 1+", "all"]),
                               "y": saved(2, ["block 0", "block 1", "block 2", "block 3",
                                              "blocks 1+", "all"]),
                               "z": saved(4, ["block 0", "block 1", "blocks 1+", "all"])}))
    with pytest.raises(SystemExit):  # read back, not evaluated: x and y do not share blocks
        tool.main(["x", "--baseline", "y", "--num-val", "8", "--output", str(out)])
    assert "y and x were evaluated on different blocks" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a folder where the report should go
        tool.main(["x", "--baseline", "z", "--num-val", "8", "--output", str(out),
                   "--report", str(tmp_path)])
    assert f"cannot write --report {tmp_path}" in capsys.readouterr().err

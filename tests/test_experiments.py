"""Ablation runs, the demo and the ablation report (vclr_d2/engine/experiments.py, tools/)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from tests.train_utils import TINY
from vclr_d2.engine.experiments import ROWS, experiment_cfg, run_row
from vclr_d2.engine.report import markdown_table, paired_differences
from vclr_d2.utils import load_tool

ROOT = Path(__file__).resolve().parents[1]
QUICK = TINY + ["SOLVER.MAX_ITER", "3", "TEST.DETECTIONS_PER_IMAGE", "10"]


_tool = load_tool


@pytest.fixture
def opts(tmp_path):
    return QUICK + ["DATASETS.SYNTHETIC.ROOT", str(tmp_path / "data")]


def _weights(folder: Path) -> dict:
    return torch.load(folder / "model_final.pth", map_location="cpu", weights_only=False)["model"]


def test_one_seed_gives_identical_numbers_twice(tmp_path, opts):
    config = str(ROOT / "configs" / ROWS["d"].config)
    runs = {name: run_row(config, seed, str(tmp_path / name), opts, threads=1)[0]
            for name, seed in (("first", 5), ("again", 5), ("other", 6))}
    assert runs["first"]["metrics"] == runs["again"]["metrics"]
    assert set(runs["first"]["metrics"]) >= {"known box AR@100", "novel box AR@100",
                                              "known mask AR@10", "novel mask AR@10"}
    first, again, other = (_weights(tmp_path / n) for n in ("first", "again", "other"))
    assert all(torch.equal(first[k], again[k]) for k in first)  # bit-exact, student and teacher
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed matters
    # a finished run is read back, not trained again
    record, model = run_row(config, 5, str(tmp_path / "first"), opts)
    assert model is None and record == runs["first"]
    # ... unless it is the record of another run, or not a record
    with pytest.raises(ValueError, match="record of another run"):
        run_row(config, 6, str(tmp_path / "first"), opts)
    # ... or trained with another config than the file gives now (edited since): keys named
    saved = tmp_path / "first" / "config.yaml"
    saved.write_text(saved.read_text().replace("MAX_ITER: 3", "MAX_ITER: 700"))
    changed = r"another config .*\(key: then -> now\): SOLVER.MAX_ITER: 700 -> 3; delete"
    with pytest.raises(ValueError, match=changed):
        run_row(config, 5, str(tmp_path / "first"), opts)
    saved.write_text("SOLVER: [")
    with pytest.raises(ValueError, match="first/config.yaml: not a config"):
        run_row(config, 5, str(tmp_path / "first"), opts)
    (tmp_path / "other" / "run.json").write_text("{")
    with pytest.raises(ValueError, match="other/run.json: not a run record"):
        run_row(config, 6, str(tmp_path / "other"), opts)


def test_a_key_added_after_a_run_counts_as_changed_only_off_its_default(tmp_path, opts):
    """A run saved before ``PSEUDO_LABELS.SCORE_WEIGHT`` existed is what the default (1.0)
    trains, so it is reused; asking for 0.0 names the key."""
    import yaml

    from vclr_d2.engine.experiments import _config_changes

    config = str(ROOT / "configs" / ROWS["e"].config)
    saved = yaml.safe_load(experiment_cfg(config, 0, str(tmp_path), opts).dump())
    del saved["MODEL"]["VCLR"]["PSEUDO_LABELS"]["SCORE_WEIGHT"]
    saved["SOLVER"]["BASE_LR"] = 0.5  # and one real change beside it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = experiment_cfg(config, 0, str(tmp_path), opts)
    lr = cfg.SOLVER.BASE_LR
    assert _config_changes(str(tmp_path / "config.yaml"), cfg) == [
        f"SOLVER.BASE_LR: 0.5 -> {lr}"]
    cfg = experiment_cfg(config, 0, str(tmp_path),
                         opts + ["MODEL.VCLR.PSEUDO_LABELS.SCORE_WEIGHT", "0.0"])
    assert _config_changes(str(tmp_path / "config.yaml"), cfg) == [
        "MODEL.VCLR.PSEUDO_LABELS.SCORE_WEIGHT: <absent> -> 0.0", f"SOLVER.BASE_LR: 0.5 -> {lr}"]


def test_experiment_cfg_requires_the_known_novel_split(tmp_path, opts):
    config = str(ROOT / "configs" / ROWS["a"].config)
    with pytest.raises(ValueError, match="TEST.OPENWORLD.KNOWN_CLASSES"):
        experiment_cfg(config, 0, str(tmp_path), opts + ["TEST.OPENWORLD.KNOWN_CLASSES", "[]"])
    with pytest.raises(ValueError, match="synth_openworld_val_all"):
        experiment_cfg(config, 0, str(tmp_path), opts + ["DATASETS.TEST",
                                                         "('synth_openworld_val_novel',)"])


def test_every_row_config_builds_and_the_rows_differ_as_documented(tmp_path, opts):
    cfgs = {k: experiment_cfg(str(ROOT / "configs" / r.config), 0, str(tmp_path), opts)
            for k, r in ROWS.items()}
    assert not cfgs["a"].INPUT.LOAD_PROPOSALS and cfgs["b"].INPUT.LOAD_PROPOSALS
    assert list(cfgs["b"].INPUT.VIEWS.NAMES) == ["natural"]
    assert cfgs["b"].MODEL.VCLR.RANDOM_ERASE_PROB == 0 and cfgs["c"].MODEL.VCLR.RANDOM_ERASE_PROB
    assert list(cfgs["c"].INPUT.VIEWS.NAMES) == ["natural", "depth", "style"]
    assert not cfgs["c"].MODEL.VCLR.SIM_ON and cfgs["d"].MODEL.VCLR.SIM_ON
    assert cfgs["e"].MODEL.VCLR.PSEUDO_LABELS.ENABLED and cfgs["e"].INPUT.VIEWS.TEACHER == "depth"
    assert list(cfgs["e"].INPUT.VIEWS.NAMES) == ["natural", "depth"]
    assert list(cfgs["f"].INPUT.VIEWS.NAMES) == ["natural", "depth", "style"]
    assert cfgs["f"].MODEL.VCLR.PSEUDO_LABELS.SCORE_WEIGHT == 0.0
    assert cfgs["f"].MODEL.VCLR.RANDOM_ERASE_PROB == 0 and cfgs["f"].MODEL.VCLR.SIM_ON
    assert cfgs["m"].MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert not cfgs["m"].INPUT.LOAD_PROPOSALS
    assert len({c.SOLVER.MAX_ITER for c in cfgs.values()}) == 1  # same schedule everywhere


def test_row_f_is_row_e_with_the_overrides_its_5600_iteration_run_was_made_with(tmp_path, opts):
    # docs/experiments.md ran (f) as row (e) with these overrides before it had a config file;
    # the file must give the same run, so that its numbers are (f)'s
    overrides = ["INPUT.VIEWS.NAMES", "['natural', 'depth', 'style']",
                 "INPUT.VIEWS.PROBS", "[0.3333333333, 0.3333333333, 0.3333333333]",
                 "INPUT.VIEWS.DIRS", "['', '{split}_depth', '{split}_style']",
                 "INPUT.VIEWS.EXTS", "['', '.png', '.png']",
                 "MODEL.VCLR.PSEUDO_LABELS.SCORE_WEIGHT", "0.0"]
    e = experiment_cfg(str(ROOT / "configs" / ROWS["e"].config), 0, str(tmp_path),
                       opts + overrides)
    f = experiment_cfg(str(ROOT / "configs" / ROWS["f"].config), 0, str(tmp_path), opts)
    assert f.dump() == e.dump()
    assert f.dump() != experiment_cfg(str(ROOT / "configs" / ROWS["e"].config), 0,
                                      str(tmp_path), opts).dump()


def test_table_and_paired_differences():
    def rec(seed, v):
        return {"seed": seed, "metrics": {"novel box AR@100": v}}

    a = [rec(0, 30.0), rec(1, 32.0), rec(2, 31.0)]
    d = [rec(2, 41.0), rec(0, 36.0), rec(1, 40.0)]
    assert paired_differences(d, a, "novel box AR@100") == [10.0, 6.0, 8.0]
    md = markdown_table({"a": a, "d": d}, ["novel box AR@100"], {"a": "base", "d": "v-CLR"})
    assert md.splitlines()[2] == "| (a) base | 31.0 ± 1.0 |"
    assert md.splitlines()[3] == "| (d) v-CLR | 39.0 ± 2.6 |"


def test_demo_trains_both_models_in_parallel_and_prints_known_and_novel(tmp_path, opts, capsys):
    out = tmp_path / "demo"
    assert _tool("demo").main(["--output", str(out), "--jobs", "2", "--num-vis", "2", *opts]) == 0
    printed = capsys.readouterr().out
    records = json.loads((out / "results.json").read_text())
    assert sorted(records) == ["baseline", "vclr"]
    assert [r["threads"] for r in records["baseline"] + records["vclr"]] == [1, 1]
    assert Path(records["baseline"][0]["config"]).name == "baseline.yaml"
    table = [line for line in printed.splitlines() if line.startswith("| known |")
             or line.startswith("| novel |")]
    assert len(table) == 8  # known and novel x box/mask x AR@10/AR@100
    m = records["vclr"][0]["metrics"]
    diff = m["novel box AR@100"] - records["baseline"][0]["metrics"]["novel box AR@100"]
    assert f"{diff:+.1f} |" in next(line for line in table if "novel | box AR@100" in line)
    import cv2

    png = cv2.imread(str(out / "predictions.png"))
    assert png is not None and png.shape[0] == 2 * (256 + 22)  # 2 images, 64 px drawn x4


def test_ablation_writes_the_report_and_its_json(tmp_path, opts, capsys):
    report = tmp_path / "docs" / "ablation.md"
    assert _tool("ablation").main(["--rows", "b", "a", "--seeds", "0", "--jobs", "1",
                                   "--output", str(tmp_path / "runs"), "--report", str(report),
                                   *opts]) == 0
    text = report.read_text()
    assert (f"python tools/ablation.py --rows b a --seeds 0 --jobs 1 --output "
            f"{tmp_path / 'runs'} --report") in text  # a non-default output is in the command
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert rows[0].startswith("| (a) known-class ground truth") and rows[1].startswith("| (b)")
    data = json.loads(report.with_suffix(".json").read_text())
    assert sorted(data["runs"]) == ["a", "b"] and data["wall_seconds"] > 0
    # one seed: the difference, and no "± 0.0" that would read as no spread
    assert re.search(r"\| \(b\) − \(a\) \| novel box AR@100 \| ([+-]\d+\.\d) \| \1 \(one seed\) \|",
                     text), text
    # runs one after the other in one process: each log holds its own run only
    first = (tmp_path / "runs" / "b_seed0" / "log.txt").read_text()
    assert "proposals.yaml" in first and "baseline.yaml" not in first
    # --report-only: the report from the runs made so far, the missing ones named
    only = tmp_path / "only.md"
    assert _tool("ablation").main(["--rows", "a", "m", "--seeds", "0", "--report-only",
                                   "--output", str(tmp_path / "runs"), "--report", str(only),
                                   *opts]) == 0
    text = only.read_text()
    assert "Not run yet: (m) seed 0" in text and "| (a) known-class" in text
    assert "Seeds 0; `--report-only` report of the finished runs, written on " in text
    assert "| (m)" not in text and not (tmp_path / "runs" / "m_seed0").exists()
    assert "The runs trained on" not in text  # all of them here
    record = tmp_path / "runs" / "a_seed0" / "run.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "machine": "CPU X"}))
    assert _tool("ablation").main(["--rows", "a", "--seeds", "0", "--report-only", "--output",
                                   str(tmp_path / "runs"), "--report", str(only), *opts]) == 0
    assert "The runs trained on CPU X (1 run). " in only.read_text()
    # a report of runs made with other overrides or threads than its command says: refused
    made = json.loads(record.read_text())["threads"]
    for other, says in (
            (["--threads", str(made + 1), *opts],
             f"a_seed0/run.json was made with {made} threads, not the --threads {made + 1}"),
            (opts[:-2], "a_seed0/run.json is the record of another run")):
        with pytest.raises(SystemExit):
            _tool("ablation").main(["--rows", "a", "--seeds", "0", "--report-only", "--output",
                                    str(tmp_path / "runs"), "--report", str(only), *other])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _tool("ablation").main(["--rows", "z"])
    assert "unknown rows ['z']" in capsys.readouterr().err


def test_ablation_report_counts_short_machine_names_with_the_detailed_one():
    from collections import Counter

    where = _tool("ablation").where_trained
    here = "AMD EPYC (family 25, model 1, AVX2 kernels), 2 cores, torch 2.1"
    short = "AMD EPYC, 2 cores, torch 2.1"
    assert where(Counter({here: 9}), here) == ""
    assert where(Counter({short: 6, here: 9}), here) == (
        f'6 runs were recorded as "{short}", the short form of this machine\'s name used before '
        "run records gave the CPU family and torch's kernels. ")
    # elsewhere: each name with its run count, a short name under the detailed one it shortens
    intel = "Intel Xeon (family 6, model 85, AVX512 kernels), 2 cores, torch 2.1"
    text = where(Counter({short: 2, here: 1, "CPU X": 1}), intel)
    assert text.startswith(f"The runs trained on {here} (3 runs, 2 of them recorded as \"{short}\"")
    assert text.endswith("; CPU X (1 run). ")
    # a short name with no detailed form among the records or here stays as it is
    assert where(Counter({short: 2}), intel) == f"The runs trained on {short} (2 runs). "


def test_machine_names_the_cpu_generation_and_torch_kernels(tmp_path):
    from vclr_d2.engine.experiments import machine

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\n"
                    "model name\t: Other\n")
    tail = (f"{torch.backends.cpu.get_cpu_capability()} kernels), {os.cpu_count()} cores, "
            f"torch {torch.__version__}")
    assert machine(str(info)) == f"AMD EPYC (family 25, model 1, {tail}"
    info.write_text("model name\t: Some CPU\n")
    assert machine(str(info)) == f"Some CPU ({tail}"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_pool_workers_exit_when_the_ablation_process_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    # a pool as run_rows builds it, its worker busy with a long task and another one queued
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from vclr_d2.engine.experiments import exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "        initializer=exit_with_parent, initargs=(os.getpid(), 0.1))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 60); pool.submit(time.sleep, 60)\n"
        "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        worker = int(parent.stdout.readline())
        time.sleep(0.5)
        assert not _gone(worker)  # it lives while its parent does
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(worker)
    finally:
        parent.kill()


def test_ablation_reports_the_runs_on_more_validation_images(tmp_path, opts, capsys,
                                                             monkeypatch):
    """--num-val: the runs (NUM_VAL 4) evaluated again on 8 validation images; the first 4
    give each run's record again; kept in the run folder and read back while the weights are
    the same file; runs trained from another clone are read back too."""
    from vclr_d2.engine import experiments

    runs = tmp_path / "runs"
    ablation = _tool("ablation")
    assert ablation.main(["--rows", "a", "b", "--seeds", "0", "--jobs", "1", "--output",
                          str(runs), *opts]) == 0
    report = tmp_path / "val8.md"
    args = ["--rows", "a", "b", "--seeds", "0", "--jobs", "1", "--report-only", "--output",
            str(runs), "--report", str(report), "--num-val", "8", *opts]
    assert ablation.main(args) == 0
    text = report.read_text()
    assert text.startswith("# Ablation on the built-in synthetic open-world set, 8 validation "
                           "images\n")
    assert "--report " + str(report) + " --num-val 8 " in text  # in the printed command
    assert ("with its first 8 validation images (`--num-val 8`, evaluated after training): the "
            "first 4 are the runs' own validation set, on which their run.json was measured "
            "(2 of the 2 runs give exactly those numbers again there), the 4 after them") in text
    saved = {r: json.loads((runs / f"{r}_seed0" / "val8.json").read_text()) for r in "ab"}
    records = {r: json.loads((runs / f"{r}_seed0" / "run.json").read_text()) for r in "ab"}
    for r in "ab":
        assert saved[r]["num_val"] == 8 and saved[r]["block"] == 4
        assert saved[r]["groups"]["block 0"] == records[r]["metrics"]
        assert saved[r]["groups"]["all"] != records[r]["metrics"]  # 4 more images count
    # the table is on all 8 images; the differences on all 8, on the first 4, on the 4 after
    a, b = (saved[r]["groups"] for r in "ab")
    m = "novel box AR@100"
    assert f"| {a['all']['known box AR@10']:.1f} | {a['all']['known box AR@100']:.1f} |" in text
    diff = f"{b['all'][m] - a['all'][m]:+.1f}"
    assert (f"| (b) − (a) | {m} | {diff} | {diff} (one seed) | "
            f"{b['block 0'][m] - a['block 0'][m]:+.1f} | "
            f"{b['blocks 1+'][m] - a['blocks 1+'][m]:+.1f} |") in text
    assert "| on the runs' own 4 | on the 4 after them |" in text
    assert "| row | train + final evaluation | evaluation on 8 images | threads |" in text
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["runs"]["a"][0]["run_metrics"] == records["a"]["metrics"]
    assert data["runs"]["a"][0]["metrics"] == a["all"]

    evaluated = []

    def counted(run_dir, *args, **kwargs):
        evaluated.append(Path(run_dir).name)
        return {"num_val": 8, "block": 4, "eval_seconds": 1.0, "groups": saved["a"]["groups"]}

    monkeypatch.setattr(experiments, "evaluate_blocks", counted)
    # a record trained from another clone names its config by that clone's path: read back
    record = runs / "a_seed0" / "run.json"
    record.write_text(json.dumps({**records["a"], "config": "/other/clone/configs/synthetic/"
                                  "baseline.yaml"}))
    capsys.readouterr()
    assert ablation.main(args) == 0 and evaluated == []  # read back from val8.json
    assert report.read_text() == text
    os.utime(runs / "b_seed0" / "model_final.pth", (1, 1))  # another file than evaluated
    assert ablation.main(args) == 0 and evaluated == ["b_seed0"]
    (runs / "a_seed0" / "val8.json").write_text("{")  # unreadable: made again
    assert ablation.main(args) == 0 and evaluated == ["b_seed0", "a_seed0"]
    record.write_text(json.dumps({**records["a"], "config": "/other/clone/configs/synthetic/"
                                  "proposals.yaml"}))
    with pytest.raises(SystemExit):
        ablation.main(args)
    assert "a_seed0/run.json is the record of another run" in capsys.readouterr().err
    record.write_text(json.dumps(records["a"]))
    monkeypatch.undo()
    for n, says in (("4", "--num-val 4 must be a multiple of the runs' own DATASETS.SYNTHETIC"
                          ".NUM_VAL (4) larger than it"),
                    ("10", "--num-val 10 must be a multiple"),
                    ("0", "--num-val must be positive, got 0")):
        with pytest.raises(SystemExit):
            ablation.main([*args[:-len(opts) - 1], n, *opts])
        assert says in capsys.readouterr().err
    # training with --num-val: checked before any run trains
    with pytest.raises(SystemExit):
        ablation.main(["--rows", "c", "--seeds", "0", "--jobs", "1", "--output", str(runs),
                       "--num-val", "6", *opts])
    assert "--num-val 6 must be a multiple" in capsys.readouterr().err
    assert not (runs / "c_seed0").exists()
    (runs / "b_seed0" / "config.yaml").unlink()  # a record without the config to evaluate
    with pytest.raises(SystemExit):
        ablation.main(args)
    assert "b_seed0 has a run.json but no config.yaml" in capsys.readouterr().err

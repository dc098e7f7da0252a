"""vclr_d2.utils (what the tools share) and the report writer of the multi-seed tools."""

from __future__ import annotations

import json

import pytest

from vclr_d2.engine.report import write_summary
from vclr_d2.utils import (
    InputError,
    datasets_root,
    expand_datasets_root,
    load_json,
    load_tool,
    run_tool,
    write_json,
)


def test_load_json_names_the_file_and_the_position_of_the_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [1, 2,]}')
    with pytest.raises(InputError, match=r"ground-truth file .*bad.json is not valid JSON: .* "
                                         r"line 1, column 18"):
        load_json(bad, "ground-truth")
    with pytest.raises(InputError, match="proposals file not found: .*missing.json"):
        load_json(tmp_path / "missing.json", "proposals")


def test_write_json_is_atomic_and_round_trips(tmp_path):
    out = tmp_path / "sub" / "x.json"
    write_json({"a": [1, 2.5]}, out)
    assert json.loads(out.read_text()) == {"a": [1, 2.5]}
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.json"]  # no temporary left


def test_datasets_root_reads_the_environment_once_for_everyone(monkeypatch, tmp_path):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert datasets_root() == "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert expand_datasets_root("$DETECTRON2_DATASETS/coco/${DETECTRON2_DATASETS}") == (
        f"{tmp_path}/coco/{tmp_path}")


def test_run_tool_turns_an_input_error_into_status_1_and_one_line(capsys):
    def body():
        raise InputError("annotation file not found: x.json")

    assert run_tool("tool.py", body) == 1
    assert capsys.readouterr().err == "tool.py: error: annotation file not found: x.json\n"
    assert run_tool("tool.py", lambda: None) == 0


def test_load_tool_loads_once_and_names_a_missing_tool():
    first = load_tool("merge_proposals")
    assert load_tool("merge_proposals") is first
    assert callable(first.main)
    with pytest.raises(InputError, match="no tool 'no_such_tool': .*no_such_tool.py not found"):
        load_tool("no_such_tool")


def test_write_summary_writes_the_table_and_the_record(tmp_path):
    def res(novel):
        return {"val": {"bbox": {"AR@100_unseen": novel}}}

    md = write_summary(str(tmp_path), "rounds", "Self-training, x.yaml",
                       {"round 1": [res(10.0), res(20.0)], "round 2": [res(13.0), res(21.0)]},
                       "round 1", [0, 1], {"seeds": [0, 1]})
    assert md.splitlines()[0] == ("Self-training, x.yaml, seed(s) 0, 1 (mean ± standard "
                                  "deviation): teacher (EMA) weights, class-agnostic AR in "
                                  "percent.")
    assert md.splitlines()[-1] == (
        "| val | novel | box AR@100 | 15.0 ± 7.1 | 17.0 ± 5.7 | 2.0 ± 1.4 |")
    assert (tmp_path / "rounds.md").read_text() == md + "\n"
    assert json.loads((tmp_path / "rounds.json").read_text()) == {"seeds": [0, 1]}

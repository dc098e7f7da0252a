"""Long runs that fail safely: the divergence guard, atomic finite checkpoints and the checks
of ``--eval-only``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from vclr_d2.engine import VCLRCheckpointer, VCLRStepTrainer, VCLRTrainer, setup_cfg
from vclr_d2.modeling import DynamicKMatcher, HungarianMatcher

from .train_utils import CONFIG, ROOT, TINY, cli_args, model_state, train_net


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))


def test_nan_gradients_stop_training_before_a_nonfinite_checkpoint(tmp_path, datasets):
    """The issue's probe: gradients turn NaN at iteration 3 while the loss stays finite."""
    out = tmp_path / "out"
    cfg = setup_cfg(cli_args(out, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "1",
                             "DATASETS.TEST", "()"), setup_logging=False)
    trainer = VCLRTrainer(cfg)
    trainer.resume_or_load(resume=False)
    weight = trainer.model.head.embed.weight
    weight.register_hook(lambda g: g * float("nan") if trainer.iter == 3 else g)
    with pytest.raises(FloatingPointError) as e:
        trainer.train()
    msg = str(e.value)
    assert "non-finite gradients at iteration 3" in msg and "head.embed.weight" in msg
    assert "loss_score=" in msg and "loss_sim=" in msg  # the loss terms, with values
    saved = sorted(f for f in os.listdir(out) if f.endswith(".pth"))
    assert saved == ["model_0000000.pth", "model_0000001.pth", "model_0000002.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"
    state = model_state(out / "model_0000002.pth")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert torch.isfinite(weight).all()  # the step of iteration 3 was not taken


class _Toy(nn.Module):
    def __init__(self, bad: str):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.bad = bad

    def forward(self, batch):
        x = (self.w * torch.tensor(batch)).sum()
        return {"loss_ok": x, "loss_bad": x * float(self.bad)}


def test_nonfinite_loss_is_named_with_its_iteration_and_leaves_the_weights():
    model = _Toy("inf")
    trainer = VCLRStepTrainer(model, [[1.0, 2.0]] * 3, torch.optim.SGD(model.parameters(), 0.1),
                              seed=0)
    trainer.iter = 7
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 7: loss_bad "
                                                 r"\(loss terms: loss_ok=3, loss_bad=inf\)"):
        trainer.run_step()
    assert model.w.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("matcher", [HungarianMatcher(), DynamicKMatcher()])
def test_matchers_name_nonfinite_predictions(matcher):
    """Before: scipy's 'matrix contains invalid numeric entries' (or nothing, for dynamic_k)."""
    objectness = torch.zeros(4)
    objectness[1] = float("nan")
    boxes = torch.tensor([[0.0, 0, 8, 8]] * 4)
    boxes[2, 0] = float("inf")
    locations = torch.tensor([[4.0, 4], [12, 4], [4, 12], [12, 12]])
    with pytest.raises(FloatingPointError,
                       match=r"objectness: 1 of 4 values; boxes: 1 of 16 values"):
        matcher(objectness, boxes, locations, torch.full((4,), 8.0),
                torch.tensor([[0.0, 0, 8, 8]]), (16, 16))


def test_the_trainer_names_the_iteration_of_nonfinite_predictions(tmp_path, datasets):
    """BASE_LR 1e6 without clipping: the first step blows the weights up."""
    cfg = setup_cfg(cli_args(tmp_path / "out", "SOLVER.MAX_ITER", "4", "SOLVER.BASE_LR", "1e6",
                             "SOLVER.CLIP_GRADIENTS.ENABLED", "False", "DATASETS.TEST", "()"),
                    setup_logging=False)
    trainer = VCLRTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError,
                       match=r"^iteration 1: non-finite predictions reached the matcher"):
        trainer.train()


def test_checkpointer_refuses_nonfinite_weights_and_names_unreadable_files(tmp_path):
    model = nn.Linear(2, 2)
    ckpt = VCLRCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0000000")
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"refusing to save checkpoint "
                                                 r"'model_0000001'.*1 of 2 tensors.*\(bias\)"):
        ckpt.save("model_0000001")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*empty.pth \(0 bytes\)"):
        ckpt.load(str(tmp_path / "empty.pth"))


# Run train_net with torch.save dying (os._exit) halfway through writing its first file.
_DIE_IN_SAVE = """
import io, os, runpy, sys, torch
real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os._exit(9)
torch.save = dying_save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, datasets):
    """The issue's probe: killed while ``--resume`` (to a later MAX_ITER) rewrites
    model_final.pth, the only checkpoint."""
    out = tmp_path / "out"
    tn = train_net()
    tn.main(cli_args(out, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"))
    final = out / "model_final.pth"
    before = hashlib.sha256(final.read_bytes()).hexdigest()
    longer = ["SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()"]
    run = subprocess.run(
        [sys.executable, "-c", _DIE_IN_SAVE, str(ROOT / "tools" / "train_net.py"),
         "--config-file", CONFIG, "--resume", *TINY, *longer, "OUTPUT_DIR", str(out)],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=600)
    assert run.returncode == 9, run.stderr[-3000:]
    assert f"Saving checkpoint to {final}" in run.stdout + run.stderr  # it died while saving
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == before
    # the next --resume loads it and finishes
    tn.main(cli_args(out, *longer, flags=("--resume",)))
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2 and ckpt["trainer"]["iteration"] == 2
    assert not [f for f in os.listdir(out) if ".tmp" in f]  # the dead write's file is gone


def test_eval_only_needs_finite_weights(tmp_path, datasets):
    tn = train_net()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--eval-only needs weights: set MODEL.WEIGHTS.*"
                                         "--allow-random-weights"):
        tn.main(cli_args(out, flags=("--eval-only",)))

    cfg = setup_cfg(cli_args(out), setup_logging=False)
    model = VCLRTrainer.build_model(cfg)
    with torch.no_grad():
        model.teacher["head"].objectness.bias.fill_(float("nan"))
    torch.save({"model": model.state_dict()}, tmp_path / "nan.pth")
    with pytest.raises(FloatingPointError,
                       match=r"refusing to evaluate .*nan.pth: its 1 of \d+ tensors hold NaN or "
                             r"infinite values \(teacher.head.objectness.bias\)"):
        tn.main(cli_args(out, "MODEL.WEIGHTS", str(tmp_path / "nan.pth"),
                         flags=("--eval-only",)))

    results = tn.main(cli_args(out, "DATASETS.TEST", "('synth_openworld_val_novel',)",
                               flags=("--eval-only", "--allow-random-weights")))
    assert 0.0 <= results["bbox"]["AR@100"] <= 100.0

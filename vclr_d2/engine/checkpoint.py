"""``VCLRCheckpointer``: detectron2's ``DetectionCheckpointer`` with atomic, finite checkpoints.

- A checkpoint is written to a temporary file in the output folder, flushed to disk and renamed
  over its final name (``os.replace``); ``last_checkpoint`` is rewritten the same way after it.
  A crash or kill during a save leaves the previous checkpoint and ``last_checkpoint`` as they
  were; the ``.<name>.pth.tmp<pid>`` file such a crash leaves is removed by the next save of
  that name.
- A model with NaN or infinite weights is never saved: ``save`` raises ``FloatingPointError``
  naming the tensors.
- A file that cannot be read (truncated, not a checkpoint) raises an error naming it.

``load_for_evaluation`` is what ``--eval-only`` loads: it refuses to run without weights (unless
asked to evaluate a random model) and refuses weights that are not finite.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

__all__ = ["VCLRCheckpointer", "load_for_evaluation", "nonfinite_tensors"]

logger = logging.getLogger(__name__)


def nonfinite_tensors(state: Mapping[str, object]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def _describe(names: list[str], total: int) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{len(names)} of {total} tensors hold NaN or infinite values ({shown})"


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(folder: str, name: str) -> None:
    """Remove ``.<name>.tmp<pid>`` files left by processes that no longer run (a crash)."""
    prefix = f".{name}.tmp"
    for f in os.listdir(folder):
        pid = f[len(prefix):]
        if not (f.startswith(prefix) and pid.isdigit()) or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            os.remove(os.path.join(folder, f))
        except PermissionError:  # a live process of another user
            pass


def _atomic_write(path: str, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    folder, name = os.path.split(path)
    _remove_stale_temporaries(folder, name)
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


class VCLRCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose saves are atomic and refuse non-finite weights (see the
    module doc). Folders that are not local (``PathManager`` URLs) are saved as detectron2
    does."""

    def _local(self) -> bool:
        return bool(self.save_dir) and os.path.isdir(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        state = self.model.state_dict()
        bad = nonfinite_tensors(state)
        if bad:
            raise FloatingPointError(f"refusing to save checkpoint '{name}': the model's "
                                     f"{_describe(bad, len(state))}")
        if not self._local():
            super().save(name, **kwargs)
            return
        data = {"model": state}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local():
            super().tag_last_checkpoint(last_filename_basename)
            return
        _atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                      lambda f: f.write(last_filename_basename.encode()))

    def _load_file(self, filename: str) -> dict:
        try:
            return super()._load_file(filename)
        except (EOFError, RuntimeError, ValueError, OSError) as e:
            size = os.path.getsize(filename) if os.path.isfile(filename) else None
            raise RuntimeError(
                f"cannot read checkpoint {filename} ({size} bytes): {type(e).__name__}: {e}; "
                "the file is truncated or not a checkpoint") from e


def load_for_evaluation(model: nn.Module, cfg, *, resume: bool = False,
                        allow_random: bool = False) -> str:
    """Load the weights that ``--eval-only`` evaluates into ``model``; returns their file.

    ``resume`` loads ``OUTPUT_DIR/last_checkpoint`` when there is one, else ``MODEL.WEIGHTS``.
    Without either, ``ValueError`` unless ``allow_random`` (then the model keeps its random
    initialisation, with a warning, and "" is returned). Weights with a NaN or an infinity raise
    ``FloatingPointError`` naming the file and the tensors.
    """
    checkpointer = VCLRCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    path = (checkpointer.get_checkpoint_file() if resume and checkpointer.has_checkpoint()
            else cfg.MODEL.WEIGHTS)
    if not path:
        if not allow_random:
            raise ValueError("--eval-only needs weights: set MODEL.WEIGHTS (or --resume with a "
                             f"checkpoint in {cfg.OUTPUT_DIR}); pass --allow-random-weights to "
                             "evaluate a randomly initialised model on purpose")
        logger.warning("Evaluating a RANDOMLY INITIALISED model (--allow-random-weights): its "
                       "results say nothing about a trained one")
        return ""
    checkpointer.load(path, checkpointables=[])
    state = model.state_dict()
    bad = nonfinite_tensors(state)
    if bad:
        raise FloatingPointError(f"refusing to evaluate {path}: its {_describe(bad, len(state))}")
    return path

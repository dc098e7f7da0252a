"""Reading pretraining checkpoints: files, wrapper dicts and key prefixes.

Shared by the ResNet and ConvNeXt converters. A pretraining checkpoint is a (possibly nested)
dict whose innermost level maps names to tensors; the backbone's names sit under a prefix that
depends on the method (``module.encoder_q.`` for MoCo v2, ``module.base_encoder.`` for MoCo v3,
``module.backbone.`` inside DINO's ``teacher``, ``module.encoder.`` for PixPro/CLoVE...).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "WRAPPER_KEYS",
    "Report",
    "choose_prefix",
    "find_prefixes",
    "read_checkpoint",
    "save_detectron2_checkpoint",
    "save_state_dict",
    "unwrap_state_dict",
]

logger = logging.getLogger(__name__)

# Top-level entries that hold the state dict, tried in this order when none is given. DINO's
# full checkpoints hold "student" and "teacher": its own evaluation reads the teacher.
WRAPPER_KEYS = ("state_dict", "model", "teacher", "student", "model_ema", "network", "net")
# Name parts of the second network of momentum / EMA methods (MoCo's key encoder, BYOL's target,
# CLoVE's encoder_k): a prefix with one of them is used only when nothing else was found.
_MOMENTUM_PARTS = ("encoder_k", "momentum", "target", "key_encoder", "_ema", "ema_")


@dataclass
class Report:
    """What a conversion did: where it read, what it kept and what it dropped.

    Attributes:
        source: the input file; wrapper: the top-level entry read (None: the file itself);
        prefix: the key prefix of the backbone; converted: number of tensors written;
        dropped: keys read but not written (heads, the momentum encoder, queues...);
        notes: facts the user needs (config keys to set, the normalisation the weights expect).
    """

    source: str
    wrapper: str | None = None
    prefix: str = ""
    converted: int = 0
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, max_groups: int = 8) -> str:
        """A few lines for a terminal; dropped keys grouped (``module.encoder_k.*`` (320))."""
        lines = [f"read {self.source}"
                 + (f" [{self.wrapper!r}]" if self.wrapper else "")
                 + f", backbone prefix {self.prefix!r}: {self.converted} tensors converted"]
        counters = [k for k in self.dropped if k.endswith("num_batches_tracked")]
        others = [k for k in self.dropped if not k.endswith("num_batches_tracked")]
        if others:
            lines.append(f"dropped {len(others)} keys that are no part of the backbone: "
                         + ", ".join(self._groups(others, max_groups)))
        if counters:
            lines.append(f"dropped {len(counters)} batch-norm num_batches_tracked counters")
        lines += self.notes
        return "\n".join(lines)

    def _groups(self, keys: Sequence[str], limit: int) -> list[str]:
        """Keys grouped by the prefix and one more name part (inside the prefix) or by as many
        parts as the prefix has (outside it), with counts; at most ``limit`` groups."""
        groups: dict[str, int] = {}
        for k in keys:
            parts = k.split(".")
            depth = self.prefix.count(".") + (1 if k.startswith(self.prefix) else 0)
            depth = max(depth, 1)
            g = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
            groups[g] = groups.get(g, 0) + 1
        out = [f"{g} ({n})" if n > 1 else g for g, n in groups.items()]
        return out[:limit] + ([f"... {len(out) - limit} more groups"] if len(out) > limit else [])


def read_checkpoint(path: str, *, trust_pickle: bool = False) -> object:
    """The object stored in a ``.pth``/``.pt``/``.pth.tar``/``.bin``, ``.safetensors`` or
    detectron2 ``.pkl`` file.

    PyTorch files are read with ``weights_only=True``. Files that also pickle other objects
    (DINO's full checkpoints keep their ``argparse`` arguments) and detectron2 ``.pkl`` files
    need ``trust_pickle=True``, which runs the file's pickled code: only for files from a
    source you trust.

    Raises:
        FileNotFoundError: no such file. ValueError: the file cannot be read (the message names
            it and says whether ``trust_pickle`` would help).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    if path.endswith(".pkl"):
        if not trust_pickle:
            raise ValueError(f"{path} is a pickle file, which can run code when read: pass "
                             "--trust-pickle if it comes from a source you trust")
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise ValueError(f"cannot read {path}: {e}") from e
        raise ValueError(
            f"{path} pickles objects other than tensors, so it was not read ({e}). If the file "
            "comes from a source you trust, pass --trust-pickle (it runs the file's pickled code)"
        ) from e
    except Exception as e:
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e


def _tensor_items(obj: Mapping) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in obj.items()
            if isinstance(v, torch.Tensor | np.ndarray)}


def unwrap_state_dict(obj: object, key: str | None = None, *, source: str = "checkpoint"
                      ) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside a checkpoint object.

    Args:
        obj: what ``read_checkpoint`` returned.
        key: the entry holding the state dict (``a.b`` for nested entries); None: the object
            itself when it holds tensors, else the first of ``WRAPPER_KEYS`` present (up to
            three levels down).
        source: the file name, for messages.

    Returns:
        (name -> tensor, the entry read or None for the object itself).

    Raises:
        KeyError: ``key`` is not in the checkpoint. ValueError: no state dict was found.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a dict of tensors")
    if key is not None:
        node: object = obj
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                have = list(node) if isinstance(node, Mapping) else []
                raise KeyError(f"{source} has no entry {key!r} (entries: {have[:12]})")
            node = node[part]
        tensors = _tensor_items(node) if isinstance(node, Mapping) else {}
        if not tensors:
            raise ValueError(f"{source}[{key!r}] holds no tensors")
        return tensors, key
    path: list[str] = []
    node = obj
    for _ in range(3):
        tensors = _tensor_items(node)
        if tensors:
            return tensors, ".".join(path) or None
        inner = next((k for k in WRAPPER_KEYS if isinstance(node.get(k), Mapping)), None)
        if inner is None:
            break
        path.append(inner)
        node = node[inner]
    raise ValueError(
        f"{source}: no dict of tensors found (looked in the file and its entries "
        f"{list(WRAPPER_KEYS)}); its entries are {list(obj)[:12]}: name the one that holds the "
        "weights with --key")


def find_prefixes(keys: Iterable[str], anchor: str, companion: str) -> list[str]:
    """Every prefix P with ``P + anchor`` and ``P + companion`` among ``keys``, shortest first."""
    keys = set(keys)
    found = {k[: -len(anchor)] for k in keys if k.endswith(anchor)}
    found = {p for p in found if not p or p.endswith(".")}
    return sorted((p for p in found if p + companion in keys), key=lambda p: (len(p), p))


def choose_prefix(candidates: Sequence[str], given: str | None, *, what: str, source: str,
                  example: str) -> str:
    """The backbone prefix: ``given`` when set (it must be a candidate), else the only
    candidate, else the only one that is not a momentum/target network's.

    Raises:
        ValueError: nothing found, ``given`` not found, or still ambiguous (the message lists
            the candidates and asks for ``--prefix``).
    """
    if given is not None:
        if given not in candidates:
            raise ValueError(f"{source}: --prefix {given!r} does not lead to {what} weights "
                             f"(found under: {list(candidates) or 'nothing'})")
        return given
    if not candidates:
        raise ValueError(f"{source}: found no {what} weights: expected keys such as "
                         f"'<prefix>{example}'")
    online = [p for p in candidates if not any(m in p for m in _MOMENTUM_PARTS)]
    if len(candidates) == 1:
        return candidates[0]
    if len(online) == 1:
        logger.info("%s: %s weights under %s; using %r", source, what, list(candidates),
                    online[0])
        return online[0]
    raise ValueError(f"{source}: {what} weights under several prefixes {list(candidates)}; "
                     "choose one with --prefix")


def save_detectron2_checkpoint(state: Mapping[str, torch.Tensor], path: str, *,
                               author: str) -> None:
    """Write ``{"model": state, "__author__": author, "matching_heuristics": False}`` as a
    ``.pth`` (torch tensors) or ``.pkl`` (numpy arrays, detectron2's model-zoo format) file
    that ``DetectionCheckpointer`` loads by exact names."""
    if not path.endswith((".pth", ".pt", ".pkl")):
        raise ValueError(f"output {path}: use a .pth or .pkl file name")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".pkl"):
        data = {"model": {k: v.detach().cpu().numpy() for k, v in state.items()},
                "__author__": author, "matching_heuristics": False}
        with open(path, "wb") as f:
            pickle.dump(data, f)
        return
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in state.items()},
                "__author__": author, "matching_heuristics": False}, path)


def save_state_dict(state: Mapping[str, torch.Tensor], path: str) -> None:
    """Write a plain state dict (what ``MODEL.CONVNEXT.WEIGHTS`` reads) as ``.safetensors`` or
    ``.pth``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(tensors, path)
    elif path.endswith((".pth", ".pt", ".bin")):
        torch.save(tensors, path)
    else:
        raise ValueError(f"output {path}: use a .safetensors, .pth, .pt or .bin file name")

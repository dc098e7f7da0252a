"""A training data stream that is a function of (seed, iteration), so training can resume exactly.

detectron2's training loader draws its order from a sampler that always starts at the
beginning, and its augmentations from the global RNGs of whichever worker maps an image: after
``--resume`` the images and views of the first iterations are shown again, and different random
crops, flips and views are drawn. Here, instead:

- the **global batch** of iteration ``i`` (``SOLVER.IMS_PER_BATCH`` images over all processes)
  is a pure function of ``(seed, i)``: with aspect-ratio grouping, the group of iteration ``i``
  is drawn with probability proportional to the group's size and the batch takes the next
  images of that group's own stream (its indices, reshuffled every pass); without grouping there
  is one group, the whole dataset;
- process ``r`` of ``W`` maps images ``r * B / W ... (r + 1) * B / W - 1`` of that batch;
- image ``j`` of the global batch of iteration ``i`` is mapped with the Python, NumPy and torch
  RNGs seeded from ``(seed, i, j)`` (and restored afterwards), so its view, crop, resize and
  flip do not depend on which worker maps it, on ``DATALOADER.NUM_WORKERS``, on the number of
  processes, or on what ran before.

``TrainStreamLoader`` starts at any iteration (``start_iter``): what a checkpoint needs to
continue the stream is the iteration and the seed, both in it. Data-loader workers take
iterations in turn (worker ``w`` of ``K`` maps iterations ``start + w, start + w + K, ...``),
and PyTorch's loader hands their batches over in iteration order.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from detectron2.data import get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = [
    "BatchPlan", "TrainStream", "TrainStreamLoader", "build_train_stream_loader", "sample_seed",
    "seeded_rngs",
]

logger = logging.getLogger(__name__)

# Group choices are drawn in chunks of this many iterations, each from its own generator, so
# that the choice of iteration i does not depend on which iterations were asked for before.
_CHUNK = 4096
# Tags that keep the seed sequences of the different uses apart.
_GROUP_TAG, _PERM_TAG, _SAMPLE_TAG = 1, 2, 3


def sample_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed from ``seed`` and integer ``keys`` (numpy's ``SeedSequence`` hashing)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *keys])
               .generate_state(1)[0])


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Seed Python's, NumPy's and torch's (CPU) global RNGs with ``seed`` inside the block and
    restore their previous states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class BatchPlan:
    """Which dataset indices form the global batch of each iteration (see the module doc).

    Args:
        groups: dataset indices of each aspect-ratio group (one group: no grouping); empty
            groups are dropped.
        batch_size: images per iteration over all processes.
        seed: the stream's seed.
        shuffle: reshuffle each group at every pass (False: file order).
    """

    def __init__(self, groups: Sequence[Sequence[int]], batch_size: int, seed: int,
                 shuffle: bool = True):
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups if len(g)]
        if not self.groups:
            raise ValueError("the training set is empty")
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        sizes = np.array([len(g) for g in self.groups], dtype=np.float64)
        self.group_probs = sizes / sizes.sum()
        self._chunk_counts: list[np.ndarray] = []  # per chunk: (G,) batches of each group
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _choices(self, chunk: int) -> np.ndarray:
        rng = np.random.default_rng(sample_seed(self.seed, _GROUP_TAG, chunk))
        return rng.choice(len(self.groups), size=_CHUNK, p=self.group_probs)

    def group_and_position(self, iteration: int) -> tuple[int, int]:
        """The group of ``iteration`` and how many batches that group gave before it."""
        if len(self.groups) == 1:
            return 0, iteration
        chunk, offset = divmod(iteration, _CHUNK)
        while len(self._chunk_counts) < chunk:
            choices = self._choices(len(self._chunk_counts))
            self._chunk_counts.append(np.bincount(choices, minlength=len(self.groups)))
        before = (np.sum(self._chunk_counts[:chunk], axis=0) if chunk
                  else np.zeros(len(self.groups), dtype=np.int64))
        choices = self._choices(chunk)[: offset + 1]
        g = int(choices[-1])
        return g, int(before[g] + np.count_nonzero(choices[:-1] == g))

    def _index(self, group: int, position: int) -> int:
        members = self.groups[group]
        epoch, offset = divmod(position, len(members))
        if not self.shuffle:
            return int(members[offset])
        key = (group, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.groups):
                self._perms.clear()
            rng = np.random.default_rng(sample_seed(self.seed, _PERM_TAG, group, epoch))
            self._perms[key] = rng.permutation(len(members))
        return int(members[self._perms[key][offset]])

    def global_batch(self, iteration: int) -> list[int]:
        """Dataset indices of the ``batch_size`` images of ``iteration``."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        g, n = self.group_and_position(iteration)
        start = n * self.batch_size
        return [self._index(g, start + j) for j in range(self.batch_size)]


class TrainStream(IterableDataset):
    """Batches of this process for iterations ``start_iter, start_iter + 1, ...`` (forever).

    Args:
        dataset: dataset dicts (or any indexable of them).
        mapper: maps a dataset dict to the model's input; must not return None.
        plan: the global batches.
        rank, world_size: this process and the number of processes; the global batch is split
            in ``world_size`` equal consecutive parts.
        start_iter: the first iteration.
    """

    def __init__(self, dataset: Sequence[dict], mapper: Callable[[dict], dict], plan: BatchPlan,
                 *, rank: int = 0, world_size: int = 1, start_iter: int = 0):
        if plan.batch_size % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={plan.batch_size} is not divisible by the "
                             f"number of processes ({world_size})")
        self.dataset = dataset
        self.mapper = mapper
        self.plan = plan
        self.rank = rank
        self.world_size = world_size
        self.start_iter = start_iter

    @property
    def local_batch_size(self) -> int:
        return self.plan.batch_size // self.world_size

    def batch(self, iteration: int) -> list[dict]:
        """This process's mapped images of ``iteration``."""
        b = self.local_batch_size
        first = self.rank * b
        indices = self.plan.global_batch(iteration)[first:first + b]
        out = []
        for j, index in enumerate(indices, start=first):
            with seeded_rngs(sample_seed(self.plan.seed, _SAMPLE_TAG, iteration, j)):
                mapped = self.mapper(self.dataset[index])
            if mapped is None:
                raise ValueError(f"the mapper returned None for dataset index {index}; the "
                                 "exact-resume stream cannot skip images")
            out.append(mapped)
        return out

    def __iter__(self) -> Iterator[list[dict]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        iteration = self.start_iter + worker
        while True:
            yield self.batch(iteration)
            iteration += workers


def _as_is(batch: list[dict]) -> list[dict]:
    return batch


class TrainStreamLoader:
    """The training loader: iterating it starts ``DATALOADER.NUM_WORKERS`` workers on a
    ``TrainStream`` from ``start_iter`` with ``seed``, both of which may be changed (e.g. by a
    resume) until then. Each ``iter()`` starts a new stream."""

    def __init__(self, dataset: Sequence[dict], mapper: Callable[[dict], dict], *,
                 groups: Sequence[Sequence[int]], batch_size: int, seed: int,
                 num_workers: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.dataset = dataset if isinstance(dataset, DatasetFromList) else DatasetFromList(
            list(dataset), copy=False)
        self.mapper = mapper
        self.groups = groups
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.start_iter = 0

    def stream(self) -> TrainStream:
        plan = BatchPlan(self.groups, self.batch_size, self.seed, self.shuffle)
        return TrainStream(self.dataset, self.mapper, plan, rank=self.rank,
                           world_size=self.world_size, start_iter=self.start_iter)

    def __iter__(self) -> Iterator[list[dict]]:
        # A generator: nothing (no worker) starts before the first batch is asked for.
        stream = self.stream()
        logger.info(f"Training stream: seed {self.seed}, from iteration {self.start_iter}, "
                    f"{stream.local_batch_size} images per process and iteration, "
                    f"{self.num_workers} workers")
        if self.num_workers == 0:
            yield from stream
            return
        # The loader's own generator keeps it from drawing on torch's global RNG.
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                            collate_fn=_as_is,
                            generator=torch.Generator().manual_seed(self.seed & 0x7FFFFFFF))
        yield from loader


def build_train_stream_loader(cfg, mapper: Callable[[dict], dict], seed: int
                              ) -> TrainStreamLoader:
    """The ``TrainStreamLoader`` of ``cfg.DATASETS.TRAIN`` (with ``DATALOADER`` and
    ``SOLVER.IMS_PER_BATCH``) for this process."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r}: the v-CLR "
                         "training stream samples like 'TrainingSampler' (uniformly, every image "
                         "once per pass); other samplers are not supported")
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        wide = np.array([d["width"] > d["height"] for d in dicts], dtype=bool)
        groups = [np.flatnonzero(wide), np.flatnonzero(~wide)]
    else:
        groups = [np.arange(len(dicts))]
    return TrainStreamLoader(dicts, mapper, groups=groups, batch_size=cfg.SOLVER.IMS_PER_BATCH,
                             seed=seed, num_workers=cfg.DATALOADER.NUM_WORKERS,
                             rank=comm.get_rank(), world_size=comm.get_world_size())

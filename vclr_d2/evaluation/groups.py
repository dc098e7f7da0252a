"""``ImageGroupsEvaluator``: one inference pass, results for several groups of images.

A difference of two models measured on one validation set of a few hundred images moves with
the sample of images as well as with the training seed, and training more seeds does not
average the sample out (every seed is evaluated on the same images). The synthetic set's images
are seeded per index, so its first N validation images are the same whatever
``DATASETS.SYNTHETIC.NUM_VAL`` is: evaluated on a larger validation split in blocks of N, a
trained run's first block is exactly its own validation set and the other blocks are further
samples of the same kind (``tools/eval_blocks.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from detectron2.evaluation import DatasetEvaluator

__all__ = ["ImageGroupsEvaluator", "index_blocks"]


class ImageGroupsEvaluator(DatasetEvaluator):
    """Routes each image to one evaluator per group (of image ids) that contains it.

    ``evaluate()`` returns ``{group name: that group's evaluator's results}``, in the order of
    ``groups``; a group evaluates only the images of it that went through ``process``.
    """

    def __init__(self, make_evaluator: Callable[[], DatasetEvaluator],
                 groups: Mapping[str, Collection[int]]):
        """
        Args:
            make_evaluator: builds a fresh evaluator (e.g. ``build_evaluator(cfg, name)``);
                called once per group.
            groups: group name -> image ids; groups may overlap.

        Raises:
            ValueError: no groups, or an empty one (named).
        """
        if not groups:
            raise ValueError("ImageGroupsEvaluator: no groups given")
        empty = [name for name, ids in groups.items() if not ids]
        if empty:
            raise ValueError(f"ImageGroupsEvaluator: groups {empty} have no image ids")
        self._groups = OrderedDict((name, frozenset(int(i) for i in ids))
                                   for name, ids in groups.items())
        self._evaluators = OrderedDict((name, make_evaluator()) for name in self._groups)

    def reset(self) -> None:
        for evaluator in self._evaluators.values():
            evaluator.reset()

    def process(self, inputs: Sequence[Mapping[str, Any]],
                outputs: Sequence[Mapping[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs):
            image_id = int(inp["image_id"])
            for name, ids in self._groups.items():
                if image_id in ids:
                    self._evaluators[name].process([inp], [out])

    def evaluate(self) -> OrderedDict:
        return OrderedDict((name, ev.evaluate()) for name, ev in self._evaluators.items())


def index_blocks(image_ids: Sequence[int], block: int) -> OrderedDict:
    """Groups of a dataset's images, in dataset order: ``"block 0"``, ``"block 1"``, ... of
    ``block`` images each (a last, shorter block is dropped), ``"blocks 1+"`` (all blocks but
    the first, when there are two or more) and ``"all"`` (every full block).

    Raises:
        ValueError: ``block`` < 1, or fewer images than one block.
    """
    if block < 1:
        raise ValueError(f"index_blocks: block must be at least 1, got {block}")
    count = len(image_ids) // block
    if count < 1:
        raise ValueError(f"index_blocks: {len(image_ids)} images are fewer than one block of "
                         f"{block}")
    ids = [int(i) for i in image_ids[:count * block]]
    groups = OrderedDict((f"block {b}", ids[b * block:(b + 1) * block]) for b in range(count))
    if count > 1:
        groups["blocks 1+"] = ids[block:]
    groups["all"] = ids
    return groups

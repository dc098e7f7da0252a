"""Train-and-evaluate runs on the built-in synthetic set: the ablation rows and the demo.

``tools/ablation.py`` and ``tools/demo.py`` are command lines over this module. A run is one
config file (a row of the ablation) and one seed; it trains with ``VCLRTrainer`` into
``<output>/<row>_seed<seed>/``, evaluates the EMA teacher on ``synth_openworld_val_all`` with the
known/novel split of the set's families, and writes ``run.json`` there (metrics, training time).
A run whose ``run.json`` exists is read back instead of trained again, after checking that it
was trained with the config that its config file and overrides give now (a config file edited
since is an error that names the changed keys, not a silently stale result).

Metrics are named ``"<objects> <box|mask> AR@<k>"`` with objects ``known`` (families annotated
in training), ``novel`` (never annotated: the open-world score) and ``all``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import platform
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.utils.env import seed_all_rng

from .setup import get_vclr_cfg, load_cfg

__all__ = ["ROWS", "Row", "TEST_SET", "evaluate_blocks", "evaluate_larger_val",
           "exit_with_parent", "experiment_cfg", "machine", "openworld_metrics",
           "read_run_record", "run_row", "run_rows", "weights_stamp"]

logger = logging.getLogger(__name__)

TEST_SET = "synth_openworld_val_all"
OBJECTS = ("known", "novel", "all")
_SPLIT_SUFFIX = {"known": "_seen", "novel": "_unseen", "all": ""}


@dataclass(frozen=True)
class Row:
    """One line of the ablation: a config file under ``configs/`` and what it adds."""

    key: str
    config: str
    title: str


ROWS: dict[str, Row] = {r.key: r for r in (
    Row("a", "synthetic/baseline.yaml",
        "known-class ground truth, natural images, no student augmentations (the paper's "
        "baseline)"),
    Row("b", "synthetic/proposals.yaml", "(a) + proposals"),
    Row("c", "synthetic/views.yaml", "(b) + views and student augmentations"),
    Row("d", "synthetic/vclr.yaml", "(c) + L_sim = v-CLR"),
    Row("e", "synthetic/vclr_plus.yaml",
        "(b) + natural/depth views + L_sim, the teacher on the depth view making "
        "pseudo-labels"),
    Row("f", "synthetic/vclr_plus_views.yaml",
        "(d) without student augmentations + the depth-view teacher's pseudo-labels, score "
        "weight 0"),
    Row("m", "synthetic/mask_rcnn.yaml",
        "detectron2 Mask R-CNN, same backbone and data as (a) (yardstick)"),
)}


def experiment_cfg(config_file: str, seed: int, output_dir: str,
                   opts: Sequence[str] = ()) -> CfgNode:
    """Frozen config of one run: ``config_file`` + ``opts`` with ``SEED`` = ``seed``; datasets
    registered from it.

    Raises:
        ValueError: the config does not evaluate on ``synth_openworld_val_all`` with its known
            families as ``TEST.OPENWORLD.KNOWN_CLASSES`` (the known/novel split).
    """
    cfg = load_cfg(config_file, list(opts), SEED=seed, OUTPUT_DIR=output_dir)
    known = sorted(MetadataCatalog.get(TEST_SET).known_classes)
    if TEST_SET not in cfg.DATASETS.TEST or sorted(cfg.TEST.OPENWORLD.KNOWN_CLASSES) != known:
        raise ValueError(f"{config_file}: an ablation run evaluates on {TEST_SET!r} with "
                         f"TEST.OPENWORLD.KNOWN_CLASSES {known}; it has DATASETS.TEST "
                         f"{list(cfg.DATASETS.TEST)} and KNOWN_CLASSES "
                         f"{list(cfg.TEST.OPENWORLD.KNOWN_CLASSES)}")
    return cfg


def openworld_metrics(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Box and mask AR@10 / AR@100 of known, novel and all objects from the open-world
    evaluator's results on ``synth_openworld_val_all`` (with or without the dataset level)."""
    res = results.get(TEST_SET, results)
    out = {}
    for task, label in (("bbox", "box"), ("segm", "mask")):
        if task not in res:
            continue
        for objects in OBJECTS:
            for k in ("AR@10", "AR@100"):
                out[f"{objects} {label} {k}"] = float(res[task][k + _SPLIT_SUFFIX[objects]])
    return out


def machine(cpuinfo: str = "/proc/cpuinfo") -> str:
    """A short description of this machine: CPU model with its family and model numbers, the
    instruction set of torch's CPU kernels, core count, torch version.

    Runs of one seed repeat bit for bit only on CPUs that agree on all of these: two machines
    sold under the same model name (e.g. "AMD EPYC") can differ in generation and in the
    kernels torch picks (AVX2 or AVX512), and so in a run's last digits and its speed.
    """
    import torch

    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():  # the first processor's block is enough
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    kind = [f"family {fields['cpu family']}, model {fields['model']}"] if (
        "cpu family" in fields and "model" in fields) else []
    kind.append(f"{torch.backends.cpu.get_cpu_capability()} kernels")
    return f"{cpu} ({', '.join(kind)}), {os.cpu_count()} cores, torch {torch.__version__}"


def _read_run_file(path: str, what: str, load, error: type[Exception]):
    """``load`` of the open file ``path``; an unreadable one (``error``) is a ValueError naming
    it as not a ``what``."""
    try:
        with open(path) as f:
            return load(f)
    except error as e:
        raise ValueError(f"{path}: not a {what} ({e}); delete the folder to train the run "
                         "again") from None


def _config_changes(saved_file: str, cfg: CfgNode) -> list[str]:
    """``"KEY: then -> now"`` for every key where the config a run saved (``saved_file``, its
    ``config.yaml``) differs from ``cfg`` (``OUTPUT_DIR`` aside: the same folder can be named
    differently). Empty when they agree or when the run saved no config.

    A key the saved config lacks (added to the project after the run was trained) is a change
    only when ``cfg`` sets it to something other than its default: a new key's default keeps
    earlier behaviour, so such a run is what ``cfg`` would train."""
    if not os.path.isfile(saved_file):
        return []
    import yaml
    from detectron2.evaluation.testing import flatten_results_dict

    def flat(d: dict) -> dict:  # {"SOLVER.MAX_ITER": 1400, ...}
        return {k.replace("/", "."): v for k, v in flatten_results_dict(d).items()}

    then = _read_run_file(saved_file, "config", yaml.safe_load, yaml.YAMLError)
    if not isinstance(then, dict):
        raise ValueError(f"{saved_file}: not a config (a YAML mapping); delete the folder to "
                         "train the run again")
    then = flat(then)
    now = flat(yaml.safe_load(cfg.dump()))
    default = flat(yaml.safe_load(get_vclr_cfg().dump()))
    for k in set(now) - set(then):  # keys added since: their defaults reproduce the run
        if k in default and now[k] == default[k]:
            then[k] = now[k]
    keys = sorted((set(then) | set(now)) - {"OUTPUT_DIR"})
    return [f"{k}: {then.get(k, '<absent>')} -> {now.get(k, '<absent>')}"
            for k in keys if then.get(k, "<absent>") != now.get(k, "<absent>")]


def _same_config_file(a: str, b: str) -> bool:
    """Whether two config paths name the same project config: a run record keeps the absolute
    path it was trained with, and the same runs are read back from another clone or worktree
    (the config's content is checked separately, key by key)."""
    def tail(path: str) -> str:
        path = os.path.normpath(os.path.abspath(path)).replace(os.sep, "/")
        return path.rsplit("/configs/", 1)[1] if "/configs/" in path else path

    return tail(a) == tail(b)


def read_run_record(config_file: str, seed: int, output_dir: str,
                    opts: Sequence[str] = ()) -> dict | None:
    """The record ``<output_dir>/run.json`` of the run ``config_file`` + ``opts``, ``seed``;
    None when the run has none yet. A record of another run (config, seed or overrides), one
    whose saved ``config.yaml`` differs from what they give now, or an unreadable one is a
    ValueError naming the file."""
    record_file = os.path.join(output_dir, "run.json")
    if not os.path.isfile(record_file):
        return None
    record = _read_run_file(record_file, "run record", json.load, json.JSONDecodeError)
    wanted = {"config": config_file, "seed": seed, "opts": list(opts)}
    found = {k: record.get(k) for k in wanted}
    if isinstance(found["config"], str) and _same_config_file(found["config"], config_file):
        found["config"] = config_file  # trained from another clone: the same config file
    if found != wanted:
        raise ValueError(f"{record_file} is the record of another run ({found}, not "
                         f"{wanted}); delete the folder or choose another output")
    changed = _config_changes(os.path.join(output_dir, "config.yaml"),
                              experiment_cfg(config_file, seed, output_dir, opts))
    if changed:
        raise ValueError(f"{record_file} was trained with another config than {config_file} "
                         f"+ opts gives now (key: then -> now): {'; '.join(changed[:8])}"
                         f"{' ...' if len(changed) > 8 else ''}; delete the folder to train "
                         "the run again, or choose another output")
    return record


def run_row(config_file: str, seed: int, output_dir: str, opts: Sequence[str] = (),
            threads: int | None = None) -> tuple[dict, object]:
    """Train (or read back) and evaluate one run.

    Args:
        threads: torch intra-op threads for this run (None: leave torch's setting). Float
            results depend on it: a run repeats exactly with the same seed and thread count.

    Returns:
        the run record ``{"config", "seed", "opts", "threads", "machine", "metrics",
        "train_seconds", "eval_seconds"}`` (also in ``<output_dir>/run.json``), and the
        trained model (None when the record was read back).
    """
    import torch

    from .trainer import VCLRTrainer

    if threads:
        torch.set_num_threads(threads)

    record = read_run_record(config_file, seed, output_dir, opts)
    if record is not None:
        logger.info(f"{output_dir}/run.json exists: reusing it (delete the folder to train again)")
        return record, None
    logger.info(f"run: {config_file}, seed {seed}, {torch.get_num_threads()} threads -> "
                f"{output_dir}")
    cfg = experiment_cfg(config_file, seed, output_dir, opts)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    seed_all_rng(seed)
    trainer = VCLRTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    # EvalHook evaluated the teacher after the last iteration when TEST.EVAL_PERIOD > 0
    results = getattr(trainer, "_last_eval_results", None)
    start = time.perf_counter()
    if not results:
        results = VCLRTrainer.test(cfg, trainer.model)
    record = {
        "config": config_file, "seed": seed, "opts": list(opts),
        "threads": torch.get_num_threads(), "machine": machine(),
        "metrics": openworld_metrics(results),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    with open(os.path.join(output_dir, "run.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record, trainer.model


def _run_record(args: tuple) -> dict:
    """Process-pool entry: one run, its logs in its folder, the record only. In a worker
    process (``quiet``) the console output goes to ``<output_dir>/console.txt`` so that the
    parent's progress stays readable."""
    config_file, seed, output_dir, opts, threads, quiet = args
    import sys

    from detectron2.utils.logger import setup_logger

    os.makedirs(output_dir, exist_ok=True)
    # a worker runs several runs: each run's log only in its own folder
    for name in ("detectron2", "vclr_d2"):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
    if quiet:
        sys.stdout = sys.stderr = open(os.path.join(output_dir, "console.txt"), "a", buffering=1)
    setup_logger.cache_clear()
    setup_logger(output_dir, name="detectron2", abbrev_name="d2")
    setup_logger(output_dir, name="vclr_d2")
    return run_row(config_file, seed, output_dir, opts, threads)[0]


def exit_with_parent(parent_pid: int, period: float = 2.0) -> None:
    """Process-pool initializer: a daemon thread ends this worker once its parent process is
    gone. Without it, killing ``tools/ablation.py`` leaves its workers running, and they go on
    to the runs already queued for them."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _threads_per_job(threads: int | None, jobs: int) -> int:
    """``threads``, or by default the machine's cores shared among ``jobs`` processes."""
    return threads or max(1, (os.cpu_count() or 1) // max(jobs, 1))


def _process_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes, each a fresh interpreter (spawn: no forked torch thread pools)
    that ends when this process is gone (:func:`exit_with_parent`)."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))


def run_rows(runs: Sequence[tuple[str, int, str]], opts: Sequence[str] = (), jobs: int = 1,
             threads: int | None = None, on_done=None) -> list[dict]:
    """Several runs ``(config_file, seed, output_dir)``, ``jobs`` at a time in separate
    processes (each with its own log in its output folder).

    Args:
        threads: torch threads per run; None gives each run ``cpu_count // jobs``.
        on_done: called with each record as it finishes (progress).

    Returns:
        the records in the order of ``runs``.
    """
    threads = _threads_per_job(threads, jobs)
    tasks = [(c, s, o, list(opts), threads, jobs > 1) for c, s, o in runs]
    if jobs <= 1:
        records = []
        for t in tasks:
            records.append(_run_record(t))
            if on_done:
                on_done(records[-1])
        return records
    with _process_pool(jobs) as pool:
        futures = [pool.submit(_run_record, t) for t in tasks]
        for f in futures:
            f.add_done_callback(lambda f: on_done and not f.exception() and on_done(f.result()))
        return [f.result() for f in futures]


def evaluate_blocks(run_dir: str, num_val: int, block: int | None = None,
                    weights: str = "model_final.pth") -> dict:
    """Evaluate a trained run folder on ``num_val`` validation images of its synthetic set, in
    blocks of ``block`` images (default: the run's own ``DATASETS.SYNTHETIC.NUM_VAL``).

    The run's ``config.yaml`` with ``DATASETS.SYNTHETIC.NUM_VAL`` = ``num_val`` and the EMA
    teacher of ``<run_dir>/<weights>``, as ``--eval-only`` does. The set's images are seeded by
    their index, so block 0 is exactly the validation set the run was measured on (the same
    metrics as its ``run.json``) and the blocks after it are further samples of the same kind.

    Returns:
        ``{"num_val", "block", "eval_seconds", "groups": {group: metrics}}`` with the groups of
        :func:`vclr_d2.evaluation.index_blocks` ("block 0", "block 1", ..., "blocks 1+", "all")
        and the metrics of :func:`openworld_metrics`.

    Raises:
        FileNotFoundError: the folder has no ``config.yaml`` or no ``weights`` (both named).
        ValueError: the config does not evaluate on ``synth_openworld_val_all``, or ``num_val``
            is not a multiple of the block (the images after the last whole block would count
            in no group).
    """
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import inference_on_dataset

    from ..evaluation import ImageGroupsEvaluator, build_evaluator, index_blocks
    from .checkpoint import load_for_evaluation
    from .trainer import VCLRTrainer

    config = os.path.join(run_dir, "config.yaml")
    weights_file = os.path.join(run_dir, weights)
    for f in (config, weights_file):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{run_dir!r} has no {os.path.basename(f)} ({f})")
    own = load_cfg(config, [])
    if TEST_SET not in own.DATASETS.TEST:
        raise ValueError(f"{config} does not evaluate on {TEST_SET} "
                         f"(DATASETS.TEST = {list(own.DATASETS.TEST)})")
    block = block or own.DATASETS.SYNTHETIC.NUM_VAL
    if num_val < block or num_val % block:
        raise ValueError(f"{num_val} validation images are not whole blocks of {block} "
                         f"({run_dir}): pass a multiple of the block")
    cfg = load_cfg(config, ["DATASETS.SYNTHETIC.NUM_VAL", str(num_val),
                            "MODEL.WEIGHTS", weights_file])
    groups = index_blocks([d["image_id"] for d in DatasetCatalog.get(TEST_SET)], block)
    model = VCLRTrainer.build_model(cfg)
    load_for_evaluation(model, cfg)
    evaluator = ImageGroupsEvaluator(lambda: build_evaluator(cfg, TEST_SET, None), groups)
    start = time.perf_counter()
    results = inference_on_dataset(model, VCLRTrainer.build_test_loader(cfg, TEST_SET),
                                   evaluator)
    return {"num_val": num_val, "block": block,
            "eval_seconds": round(time.perf_counter() - start, 1),
            "groups": {name: openworld_metrics(res) for name, res in results.items()}}


def weights_stamp(path: str) -> dict:
    """Size and modification time of a weights file: a result evaluated from it is read back
    only while the file is the same (a run trained again writes a new one)."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime": stat.st_mtime}


def evaluate_larger_val(output_dir: str, num_val: int, threads: int | None = None) -> dict:
    """:func:`evaluate_blocks` of a finished run on ``num_val`` validation images, kept in
    ``<output_dir>/val<num_val>.json`` and read back from there while ``model_final.pth`` is
    the file it was made from (same size and modification time; a run trained again is
    evaluated again, and so is a run whose file cannot be read, with a warning naming it).

    Args:
        threads: torch intra-op threads for the evaluation (None: leave torch's setting).
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    cache = os.path.join(output_dir, f"val{num_val}.json")
    weights = os.path.join(output_dir, "model_final.pth")
    stamp = weights_stamp(weights) if os.path.isfile(weights) else None
    if os.path.isfile(cache):
        try:  # derived data: an unreadable file is made again, not an error
            saved = _read_run_file(cache, "larger-validation record", json.load,
                                   json.JSONDecodeError)
        except ValueError as e:
            logger.warning(f"{e}: evaluating again")
            saved = {}
        if isinstance(saved, dict) and saved.get("weights") == stamp and saved.get(
                "num_val") == num_val:
            return saved
        logger.info(f"{cache} is not of {weights} as it is now: evaluating again")
    result = {**evaluate_blocks(output_dir, num_val), "weights": stamp}
    with open(cache, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _larger_val_task(args: tuple) -> dict:
    """Process-pool entry of :func:`evaluate_larger_val`."""
    output_dir, num_val, threads = args
    return evaluate_larger_val(output_dir, num_val, threads)


def evaluate_runs_larger_val(output_dirs: Sequence[str], num_val: int, jobs: int = 1,
                             threads: int | None = None) -> list[dict]:
    """:func:`evaluate_larger_val` of several finished runs, ``jobs`` at a time in separate
    processes (as :func:`run_rows` trains them); results in the order of ``output_dirs``."""
    tasks = [(o, num_val, _threads_per_job(threads, jobs)) for o in output_dirs]
    if jobs <= 1:
        return [_larger_val_task(t) for t in tasks]
    with _process_pool(jobs) as pool:
        return list(pool.map(_larger_val_task, tasks))

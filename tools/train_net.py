#!/usr/bin/env python
"""Train or evaluate v-CLR with detectron2's ``DefaultTrainer`` machinery.

    python tools/train_net.py --config-file configs/voc.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/voc.yaml --eval-only MODEL.WEIGHTS ckpt.pth
    python tools/train_net.py --config-file configs/synthetic/vclr.yaml MODEL.DEVICE cpu
    python tools/train_net.py --config-file configs/synthetic/vclr.yaml --num-gpus 2 \\
        --dist-url auto MODEL.DEVICE cpu          # 2 CPU processes (gloo)

``--eval-only`` evaluates the EMA teacher (``MODEL.VCLR.TEST_WITH_TEACHER``) of
``MODEL.WEIGHTS`` (or, with ``--resume``, of ``OUTPUT_DIR/last_checkpoint``); it stops without
weights unless ``--allow-random-weights`` is given, and refuses weights with NaN or infinite
values. ``--resume`` continues from ``OUTPUT_DIR/last_checkpoint`` exactly (model, teacher,
optimizer, scheduler, iteration and data stream). ``--num-gpus`` (processes per machine),
``--num-machines``, ``--machine-rank`` and ``--dist-url`` are detectron2's; with
``MODEL.DEVICE cpu`` the processes use gloo.
"""

import json

from detectron2.utils import comm

from vclr_d2.engine import (
    VCLRTrainer,
    argument_parser,
    get_vclr_cfg,
    launch,
    load_for_evaluation,
    setup_cfg,
)


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = VCLRTrainer.build_model(cfg)
        load_for_evaluation(model, cfg, resume=args.resume,
                            allow_random=args.allow_random_weights)
        results = VCLRTrainer.test(cfg, model)
        if comm.is_main_process():  # one machine-readable line, for scripts
            print("EVAL_RESULTS " + json.dumps({k: dict(v) for k, v in results.items()}))
        return results
    trainer = VCLRTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args) -> None:
    """``main`` in ``--num-gpus`` processes on each of ``--num-machines`` machines."""
    device = get_vclr_cfg(args.config_file, args.opts).MODEL.DEVICE
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,), device=device)


if __name__ == "__main__":
    run(argument_parser().parse_args())

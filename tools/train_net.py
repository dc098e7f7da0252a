#!/usr/bin/env python
"""Train or evaluate v-CLR with detectron2's ``DefaultTrainer`` machinery.

    python tools/train_net.py --config-file configs/voc.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/voc.yaml --eval-only MODEL.WEIGHTS ckpt.pth
    python tools/train_net.py --config-file configs/synthetic/vclr.yaml MODEL.DEVICE cpu

``--eval-only`` evaluates the EMA teacher (``MODEL.VCLR.TEST_WITH_TEACHER``). ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url`` and ``--resume`` are detectron2's.
"""

import json

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

from vclr_d2.engine import VCLRTrainer, setup_cfg


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = VCLRTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = VCLRTrainer.test(cfg, model)
        if comm.is_main_process():  # one machine-readable line, for scripts
            print("EVAL_RESULTS " + json.dumps({k: dict(v) for k, v in results.items()}))
        return results
    trainer = VCLRTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))

#!/usr/bin/env python
"""Train and evaluate I-Net / DC-I-Net with Detectron2.

    python scripts/train_net.py --config-file configs/cpu/dcinet_r18_synth.yaml MODEL.DEVICE cpu
    python scripts/train_net.py --config-file configs/cuhk_sysu/dcinet_r50.yaml --num-gpus 1
    python scripts/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""
import os
import sys

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch

import dcinet_d2  # noqa: F401  (registers datasets, heads, backbones)
from dcinet_d2 import add_dcinet_config
from dcinet_d2.data.build import build_person_search_test_loader, resolve_num_identities
from dcinet_d2.data.sampler import build_person_search_train_loader
from dcinet_d2.evaluation import build_person_search_evaluator


class Trainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return build_person_search_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_person_search_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_person_search_evaluator(cfg, dataset_name, output_folder)


def setup(args):
    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    resolve_num_identities(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                               resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    sys.exit(cli())

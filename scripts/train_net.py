#!/usr/bin/env python
"""Train and evaluate I-Net / DC-I-Net with Detectron2.

    python scripts/train_net.py --config-file configs/cpu/dcinet_r18_synth.yaml MODEL.DEVICE cpu
    python scripts/train_net.py --config-file configs/cuhk_sysu/dcinet_r50.yaml --num-gpus 1
    python scripts/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""
import os
import sys
import traceback
import weakref

import dcinet_d2  # noqa: F401  (first: quiets Detectron2's import-time warnings; registers datasets, heads, backbones)
import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup

from dcinet_d2.checkpoint import load_weights
from dcinet_d2.cli import load_config, report_error
from dcinet_d2.data.build import (
    build_person_search_test_loader,
    build_person_search_train_loader,
    resolve_num_identities,
)
from dcinet_d2.distributed import launch
from dcinet_d2.evaluation import build_person_search_evaluator
from dcinet_d2.fileio import folder_write_problem
from dcinet_d2.resume import AtomicCheckpointer, check_last_checkpoint, restart_data_stream, rng_state, set_rng_state
from dcinet_d2.solver import build_optimizer


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's loaders, evaluator and optimizer, atomic checkpoints, and exact
    resume (random generators and data stream position in the checkpoint; dcinet_d2/resume.py)."""

    def build_hooks(self):
        # Called by DefaultTrainer.__init__ before the hooks that save checkpoints are made.
        self.checkpointer = AtomicCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return super().build_hooks()

    def state_dict(self):
        state = super().state_dict()
        # Detectron2 0.6 saves neither the optimizer (momentum, and the learning rate of the next step) nor
        # the random generators; later releases save the former as "_trainer".
        state["_trainer"] = self._trainer.state_dict()
        state["rng"] = rng_state()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])
        self._resumed_rng = state.get("rng")

    def resume_or_load(self, resume=True):
        self._resumed_rng = None
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0:
            restart_data_stream(self._trainer, self.start_iter)
            if self._resumed_rng is not None:  # after the new loader iterator, which draws a seed
                set_rng_state(self._resumed_rng)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_person_search_train_loader(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_person_search_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_person_search_evaluator(cfg, dataset_name, output_folder)


def build_cfg(args):
    """The config of the command line (not frozen); ValueError naming the file or key on bad input."""
    cfg = load_config(args.config_file, args.opts)
    if os.path.exists(cfg.OUTPUT_DIR) and not os.path.isdir(cfg.OUTPUT_DIR):
        raise ValueError(f"OUTPUT_DIR {cfg.OUTPUT_DIR}: exists and is not a folder")
    problem = folder_write_problem(cfg.OUTPUT_DIR)
    if problem:
        raise ValueError(f"OUTPUT_DIR {cfg.OUTPUT_DIR}: {problem}")
    if args.resume:
        check_last_checkpoint(cfg.OUTPUT_DIR)  # a corrupt last_checkpoint: one line here, not a traceback later
    weights = cfg.MODEL.WEIGHTS
    if args.eval_only and not args.resume and (not weights or ("://" not in weights and not os.path.isfile(weights))):
        raise ValueError(f"MODEL.WEIGHTS {weights!r}: --eval-only needs a trained checkpoint file")
    resolve_num_identities(cfg)
    return cfg


def setup(args):
    cfg = build_cfg(args)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    try:
        if args.eval_only:
            model = Trainer.build_model(cfg)
            if args.resume:
                DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
            else:  # refuses weights that leave the re-id head random (another architecture or config)
                load_weights(model, cfg.MODEL.WEIGHTS)
            return Trainer.test(cfg, model)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()
    except Exception:
        if comm.is_main_process():  # the traceback goes to the log file, the user gets one line (cli)
            with open(os.path.join(cfg.OUTPUT_DIR, "log.txt"), "a") as f:
                f.write("train_net.py failed:\n")
                traceback.print_exc(file=f)
        raise


def cli(argv=None):
    """Command line; returns the exit code: 2 with one "error: ..." line on bad input, 1 with one line (the
    traceback in OUTPUT_DIR/log.txt) when training or evaluation fails."""
    args = default_argument_parser().parse_args(argv)
    try:
        cfg = build_cfg(args)
    except Exception as e:  # noqa: BLE001 - bad input is reported in one line, never a traceback
        return report_error(e)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except Exception as e:  # noqa: BLE001 - the last line of a failure under launch names its cause
        log = os.path.join(cfg.OUTPUT_DIR, "log.txt")
        return report_error(e, 1, last_line=True, note=f" (full traceback in {log})")
    return 0


if __name__ == "__main__":
    sys.exit(cli())

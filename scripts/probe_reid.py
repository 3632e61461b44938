#!/usr/bin/env python
"""Train as train_net.py does, and every N iterations probe the re-id branch on one fixed training batch.

    python scripts/probe_reid.py --config-file configs/cpu/inet_mnv2_synth.yaml --every 20 OUTPUT_DIR out SEED 1

Written to metrics.json beside the training's own scalars (``probe/...``):
- ``probe/grad_{det,reid}/{backbone,box_head,box_predictor,reid}``: the norm of the gradient of the summed
  (weighted) detection losses, and of the summed (weighted) re-id losses, on each group of parameters
  (``reid``: the re-id branch's own layers, I-Net's projection or DC-I-Net's head);
- ``probe/embed_mean_cos``: mean cosine between different boxes of the probe batch's re-id samples (1: every
  box embedded alike), ``probe/embed_pos_cos``: the same between boxes of one identity in different images.
The probe changes nothing in the training: buffers (BN statistics, OLP dictionary, C2HEP centers) and the
random generators are restored after it (checked: 40 iterations with and without a probe at iteration 19 give
the same total loss at iteration 39, to the last digit). OLP's agreement with its dictionary is logged by
training itself (``reid/olp_pos_cos``, ``reid/olp_neg_cos``). docs/METHOD.md, "I-Net's shared box head", uses
these probes.
"""
import os
import sys
import weakref

import torch
import torch.nn.functional as F
from detectron2.engine import HookBase, default_argument_parser
from detectron2.layers import cat
from detectron2.utils.events import EventStorage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_net import Trainer, setup  # noqa: E402

from dcinet_d2.resume import rng_state, set_rng_state  # noqa: E402


DETECTION_LOSSES = ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")


def _groups(model):
    heads = model.roi_heads
    reid = heads.reid_embed if hasattr(heads, "reid_embed") else heads.reid_head
    return {"backbone": model.backbone, "box_head": heads.box_head, "box_predictor": heads.box_predictor,
            "reid": reid}


class ReIDProbe(HookBase):
    def __init__(self, every):
        self.every = every

    def before_train(self):
        self.batch = next(iter(Trainer.build_train_loader(self.trainer.cfg)))

    def after_step(self):
        if (self.trainer.iter + 1) % self.every:
            return
        model = self.trainer.model
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        rng = rng_state()
        captured = {}
        original = model.roi_heads._reid_losses

        def capture(embeddings, pids):
            captured["emb"], captured["pids"] = embeddings.detach(), pids
            return original(embeddings, pids)

        model.roi_heads._reid_losses = capture
        try:
            with EventStorage(self.trainer.iter):  # the probe's own reid/* scalars are not the training's
                losses = model(self.batch)
        finally:
            del model.roi_heads._reid_losses
        det = sum(v for k, v in losses.items() if k in DETECTION_LOSSES)
        reid = sum(v for k, v in losses.items() if k not in DETECTION_LOSSES)
        scalars = {}
        for name, module in _groups(model).items():
            params = [p for p in module.parameters() if p.requires_grad]
            for kind, loss in (("det", det), ("reid", reid)):
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                norm = sum((g.float() ** 2).sum() for g in grads if g is not None) ** 0.5
                scalars[f"probe/grad_{kind}/{name}"] = float(norm)  # 0 where the loss does not reach
        emb = F.normalize(captured["emb"], dim=1)
        pids = cat(captured["pids"])
        images = cat([torch.full_like(p, i) for i, p in enumerate(captured["pids"])])
        cos = emb @ emb.t()
        off = ~torch.eye(len(emb), dtype=torch.bool)
        scalars["probe/embed_mean_cos"] = float(cos[off].mean()) if off.any() else float("nan")
        pos = (pids[:, None] == pids[None, :]) & (pids[:, None] >= 0) & (images[:, None] != images[None, :])
        if pos.any():
            scalars["probe/embed_pos_cos"] = float(cos[pos].mean())
        self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        set_rng_state(rng)
        model.zero_grad(set_to_none=True)


def main(args):
    cfg = setup(args)
    trainer = Trainer(cfg)
    probe = ReIDProbe(args.every)
    probe.trainer = weakref.proxy(trainer)
    # before the PeriodicWriter (the last hook), which writes a step's scalars in its own after_step
    trainer._hooks.insert(len(trainer._hooks) - 1, probe)
    trainer.resume_or_load(resume=False)
    return trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--every", type=int, default=20, help="probe every N iterations")
    main(parser.parse_args())

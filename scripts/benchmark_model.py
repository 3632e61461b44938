#!/usr/bin/env python
"""Model speed on this machine (CPU): a training step of the small CPU config, and the per-image
inference cost of DC-I-Net and I-Net (ResNet50, VGG16) against Detectron2's plain Faster R-CNN R50-C4 and,
given its source, SeqNet (serend1p1ty/SeqNet, ResNet-50), at the field's test size.

    python scripts/benchmark_model.py [--cpu-config configs/cpu/dcinet_r18_synth.yaml] [--steps 20]
                                      [--images 3] [--skip-r50] [--proposals 1000 300] [--seqnet /tmp/seqnet]

Prints a markdown table for BENCHMARKS.md. Random weights and random images (900x1500): speed does not depend
on them, but the number of detections does: every model keeps every detection (score threshold 0, no final
NMS), so each outputs 100 boxes per image and the re-id models embed all 100. The models run in one process
on the same images, rounds interleaved (each image through every model in turn; the first image warms up).
SeqNet is imported from its source folder (``--seqnet``: a checkout of github.com/serend1p1ty/SeqNet, which
needs torchvision and yacs), built with random weights and its test settings forced to embed 100 boxes.
"""
import argparse
import sys
import time

import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg  # the plain Detectron2 baseline
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import dcinet_d2  # noqa: F401
from dcinet_d2.cli import load_config
from dcinet_d2.testing import random_batch


# Random weights through 50 layers without normalisation overflow (FrozenBN is an identity here), leaving no
# detection at all: use BN, calibrated on the benchmark images (see calibrate_bn), and keep every detection.
KEEP_ALL = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "1.0",
            "MODEL.RESNETS.NORM", "BN")


@torch.no_grad()
def calibrate_bn(model, run, images):
    """Set every BatchNorm's running statistics from one inference pass (``run(model, image)``) over
    ``images`` with the BatchNorms in training mode; returns the model in eval mode."""
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
    for img in images:
        run(model, img)
    return model.eval()


def sync(device):
    """Wait for the device's queued work (CUDA runs asynchronously), so that wall times measure it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_detectron2(model, img):
    """Detections of one uint8 image [3, H, W] (already at the test size) by a Detectron2 model."""
    return len(model([{"image": img, "height": img.shape[1], "width": img.shape[2]}])[0]["instances"])


def load_cfg(path, *opts, device="cpu"):
    cfg = load_config(path, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", *opts])
    if cfg.MODEL.REID.NUM_IDENTITIES == 0:
        cfg.MODEL.REID.NUM_IDENTITIES = 100
    return cfg


def time_train_steps(cfg, steps, size=None, warmup=2):
    """Median seconds of a training step (2 random images of ``size``, default the config's training size at
    4:3) over ``steps`` steps after ``warmup`` steps, and the size."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    size = size or (cfg.INPUT.MIN_SIZE_TRAIN[0], int(cfg.INPUT.MIN_SIZE_TRAIN[0] * 4 / 3))
    times = []
    with EventStorage():
        for step in range(steps + warmup):
            batch = random_batch(2, size=size, pids=((0, 1, 2, -1), (0, 1, 3)), seed=step)
            sync(cfg.MODEL.DEVICE)
            start = time.perf_counter()
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync(cfg.MODEL.DEVICE)
            if step >= warmup:  # the first steps warm up allocators
                times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], size


def build_seqnet(source, proposals=300, detections=100, device="cpu", size=(900, 1500)):
    """SeqNet's ResNet-50 (random weights) from its source folder, its test settings forced to keep every
    box: ``proposals`` after the RPN's NMS, the first stage's ``detections`` best boxes (score threshold 0,
    no NMS) embedded by its re-id res5 and returned without its second NMS; its resizing set to ``size`` (the
    images' height, width), so that it takes them as they are. Returns (model, run)."""
    sys.path.insert(0, source)
    try:
        import models.seqnet as seqnet
        from defaults import get_default_cfg
    except ImportError as e:
        raise SystemExit(f"--seqnet {source}: cannot import SeqNet from there ({e}); expected a checkout of "
                         "github.com/serend1p1ty/SeqNet (models/seqnet.py, defaults.py)") from None
    build_resnet = seqnet.build_resnet
    seqnet.build_resnet = lambda name, pretrained: build_resnet(name, pretrained=False)  # random weights
    cfg = get_default_cfg()
    cfg.merge_from_list(["MODEL.RPN.POST_NMS_TOPN_TEST", proposals, "MODEL.ROI_HEAD.SCORE_THRESH_TEST", 0.0,
                         "MODEL.ROI_HEAD.NMS_THRESH_TEST", 1.0, "MODEL.ROI_HEAD.DETECTIONS_PER_IMAGE_TEST",
                         detections, "INPUT.MIN_SIZE", min(size), "INPUT.MAX_SIZE", max(size)])
    torch.manual_seed(0)
    model = seqnet.SeqNet(cfg).to(device)
    heads = model.roi_heads
    second_stage = heads.postprocess_boxes

    def without_second_nms(*args, **kwargs):  # SeqNet sets its second NMS to 0.5 just before this call
        heads.nms_thresh = 1.0
        return second_stage(*args, **kwargs)

    heads.postprocess_boxes = without_second_nms

    def run(model, img):
        return len(model([img.to(device).float() / 255])[0]["boxes"])

    return model, run


def time_round_robin(models, images, device="cpu"):
    """Per model, mean seconds per image over ``images[1:]`` (the first warms every model up) and mean
    detections per image; each image runs through every model in turn. ``models``: {label: (model, run)}."""
    times = {label: [] for label in models}
    counts = {label: [] for label in models}
    with torch.no_grad():
        for i, img in enumerate(images):
            for label, (model, run) in models.items():
                sync(device)
                start = time.perf_counter()
                n = run(model, img)
                sync(device)
                if i > 0 or len(images) == 1:
                    times[label].append(time.perf_counter() - start)
                    counts[label].append(n)
    return {label: (sum(times[label]) / len(times[label]), sum(counts[label]) / len(counts[label]))
            for label in models}


def r50_models(args, images):
    """{row label: (model, run)} of the compared models, BN calibrated on the first of ``images``.
    ``args.opts`` (optional): config overrides for every Detectron2 model; ``args.seqnet_test`` (optional):
    SeqNet's (proposals, detections)."""
    extra = tuple(getattr(args, "opts", ()))
    plain = get_cfg()
    plain.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"))
    plain.merge_from_list(["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
                           "INPUT.MIN_SIZE_TEST", "900", "INPUT.MAX_SIZE_TEST", "1500", *KEEP_ALL, *extra])
    cfgs = {"Faster R-CNN R50-C4 (Detectron2), 1000 proposals": plain}
    for proposals in args.proposals:
        cfgs[f"DC-I-Net R50 (`configs/cuhk_sysu/dcinet_r50.yaml`), {proposals} proposals"] = load_cfg(
            "configs/cuhk_sysu/dcinet_r50.yaml", *KEEP_ALL, "MODEL.RPN.POST_NMS_TOPK_TEST", str(proposals),
            *extra, device=args.device)
    if not args.r50_only:
        cfgs["I-Net R50 (`dcinet_r50.yaml` + `MODEL.ROI_HEADS.NAME INetROIHeads`), 300 proposals"] = load_cfg(
            "configs/cuhk_sysu/dcinet_r50.yaml", *KEEP_ALL, "MODEL.ROI_HEADS.NAME", "INetROIHeads", *extra,
            device=args.device)
        cfgs["I-Net VGG16 (`configs/cuhk_sysu/inet_vgg16.yaml`), 300 proposals"] = load_cfg(
            "configs/cuhk_sysu/inet_vgg16.yaml", *KEEP_ALL, *extra, device=args.device)
        cfgs["DC-I-Net VGG16 (`configs/cuhk_sysu/dcinet_vgg16.yaml`), 300 proposals"] = load_cfg(
            "configs/cuhk_sysu/dcinet_vgg16.yaml", *KEEP_ALL, *extra, device=args.device)
    models = {}
    for label, cfg in cfgs.items():
        torch.manual_seed(0)
        models[label] = (calibrate_bn(build_model(cfg), run_detectron2, images[:1]), run_detectron2)
        print(f"built {label}", file=sys.stderr, flush=True)
    if args.seqnet:
        model, run = build_seqnet(args.seqnet, *getattr(args, "seqnet_test", (300, 100)), device=args.device,
                                  size=tuple(images[0].shape[1:]))
        models["SeqNet R50 (serend1p1ty/SeqNet), 300 proposals"] = (calibrate_bn(model, run, images[:1]), run)
    return models


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-config", default="configs/cpu/dcinet_r18_synth.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=3, help="R50 inference images (the first is warm-up)")
    p.add_argument("--size", type=int, nargs=2, default=[900, 1500], help="R50 image height, width")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-r50", action="store_true")
    p.add_argument("--r50-only", action="store_true", help="no I-Net and VGG16 rows")
    p.add_argument("--seqnet", default="", help="SeqNet source folder (github.com/serend1p1ty/SeqNet)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--proposals", type=int, nargs="+", default=[1000, 300],
                   help="DC-I-Net R50 test proposals (MODEL.RPN.POST_NMS_TOPK_TEST) to time")
    args = p.parse_args()
    rows = []
    if not args.skip_train:
        median, size = time_train_steps(load_cfg(args.cpu_config, device=args.device), args.steps)
        rows.append(f"| training step, 2 images {size[0]}x{size[1]}, `{args.cpu_config}` | {median:.3f} s "
                    f"(median of {args.steps}) | | |")
    if not args.skip_r50:
        g = torch.Generator().manual_seed(0)
        images = [(torch.rand(3, *args.size, generator=g) * 255).to(torch.uint8).to(args.device)
                  for _ in range(args.images)]
        results = time_round_robin(r50_models(args, images), images, args.device)
        base = [t for label, (t, _) in results.items() if label.startswith("SeqNet")]
        plain = [t for label, (t, _) in results.items() if label.startswith("Faster R-CNN")][0]
        for label, (t, n) in results.items():
            vs_seqnet = f"{t / base[0]:.2f}" if base else "-"
            rows.append(f"| {label}, {args.size[0]}x{args.size[1]} input, per image ({n:.0f} detections) | "
                        f"{t:.2f} s | {vs_seqnet} | {t / plain:.2f} |")
    print("| measurement | value | ratio to SeqNet | ratio to Faster R-CNN |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

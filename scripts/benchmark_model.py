#!/usr/bin/env python
"""Model speed on this machine (CPU): a training step of the small CPU config, and the per-image
inference cost of DC-I-Net ResNet50 against Detectron2's plain Faster R-CNN R50-C4 at the field's test size.

    python scripts/benchmark_model.py [--cpu-config configs/cpu/dcinet_r18_synth.yaml] [--steps 20]
                                      [--images 3] [--skip-r50] [--proposals 1000 300]

Prints a markdown table for BENCHMARKS.md. Random weights and random images: speed does not depend on them,
but the number of detections does: the R50 comparison keeps every detection (score threshold 0, no
final NMS), so both models output DETECTIONS_PER_IMAGE = 100 boxes per image and DC-I-Net embeds all 100.
"""
import argparse
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
def calibrate_bn(model, images):
    """Set every BatchNorm's running statistics from one training-mode pass over ``images``."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    h, w = images[0].shape[1:]
    batch = random_batch(len(images), size=(h, w), pids=((0, 1, -1),))
    for b, img in zip(batch, images):
        b["image"] = img
    with EventStorage():
        model(batch)
    return model.eval()


def load_cfg(path, *opts):
    cfg = load_config(path, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    if cfg.MODEL.REID.NUM_IDENTITIES == 0:
        cfg.MODEL.REID.NUM_IDENTITIES = 100
    return cfg


def time_train_steps(cfg, steps):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    size = (cfg.INPUT.MIN_SIZE_TRAIN[0], int(cfg.INPUT.MIN_SIZE_TRAIN[0] * 4 / 3))
    times = []
    with EventStorage():
        for step in range(steps + 2):
            batch = random_batch(2, size=size, pids=((0, 1, 2, -1), (0, 1, 3)), seed=step)
            start = time.perf_counter()
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step >= 2:  # the first steps warm up allocators
                times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], size


def time_inference(model, images):
    """Mean seconds per image (the first image warms up) and mean detections per image."""
    model.eval()
    times, counts = [], []
    with torch.no_grad():
        for img in images:
            inp = {"image": img, "height": img.shape[1], "width": img.shape[2]}
            start = time.perf_counter()
            out = model([inp])[0]["instances"]
            times.append(time.perf_counter() - start)
            counts.append(len(out))
    times = times[1:] if len(times) > 1 else times
    return sum(times) / len(times), sum(counts) / len(counts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-config", default="configs/cpu/dcinet_r18_synth.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=3, help="R50 inference images (the first is warm-up)")
    p.add_argument("--skip-r50", action="store_true")
    p.add_argument("--proposals", type=int, nargs="+", default=[1000, 300],
                   help="DC-I-Net R50 test proposals (MODEL.RPN.POST_NMS_TOPK_TEST) to time")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    median, size = time_train_steps(load_cfg(args.cpu_config), args.steps)
    rows.append(f"| training step, 2 images {size[0]}x{size[1]}, `{args.cpu_config}` | {median:.3f} s "
                f"(median of {args.steps}) |")
    if not args.skip_r50:
        g = torch.Generator().manual_seed(0)
        images = [(torch.rand(3, 900, 1200, generator=g) * 255).to(torch.uint8) for _ in range(args.images)]
        plain = get_cfg()
        plain.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"))
        plain.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
                               "INPUT.MIN_SIZE_TEST", "900", "INPUT.MAX_SIZE_TEST", "1500",
                               *KEEP_ALL])
        torch.manual_seed(0)
        t_plain, n_plain = time_inference(calibrate_bn(build_model(plain), images), images)
        rows.append(f"| Faster R-CNN R50-C4 (Detectron2), 900x1200 input, 1000 proposals, per image ({n_plain:.0f} "
                    f"detections) | {t_plain:.2f} s |")
        for proposals in args.proposals:
            ours = load_cfg("configs/cuhk_sysu/dcinet_r50.yaml", *KEEP_ALL,
                            "MODEL.RPN.POST_NMS_TOPK_TEST", str(proposals))
            torch.manual_seed(0)
            t_ours, n_ours = time_inference(calibrate_bn(build_model(ours), images), images)
            rows.append(f"| DC-I-Net R50 (`configs/cuhk_sysu/dcinet_r50.yaml`), same input, {proposals} proposals, "
                        f"per image ({n_ours:.0f} detections embedded) | {t_ours:.2f} s |")
            rows.append(f"| ratio DC-I-Net ({proposals} proposals) / Faster R-CNN | {t_ours / t_plain:.2f} |")
    print("| measurement | value |\n|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

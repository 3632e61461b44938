#!/usr/bin/env python
"""One command, a few minutes on one GPU, no internet: the GPU figures of issue 20 as a Markdown table.

    python scripts/benchmark_gpu.py [--device cuda] [--seqnet output/seqnet] [--demo output/demo] \
        [--out output/benchmark_gpu.md] [--tiny]

1. DC-I-Net R50 training step (``configs/cuhk_sysu/dcinet_r50.yaml``, 2 random images 900x1200, random
   weights with BN in place of FrozenBN, whose identity statistics overflow random weights).
2. Inference per image at 900x1500, 100 detections each, rounds interleaved (scripts/benchmark_model.py):
   DC-I-Net R50 (300 proposals), Detectron2's Faster R-CNN R50-C4 (1000 proposals) and SeqNet (300
   proposals) if its source is at ``--seqnet`` (a snapshot of github.com/serend1p1ty/SeqNet; carry it to the
   GPU machine under output/seqnet); otherwise its row says it was skipped and why.
3. The demo model's indexing rate (scripts/benchmark_search.py indexing, batch 1 and 4) if ``--demo`` holds
   config.yaml and model_final.pth (e.g. ``cp -r /tmp/demo19 output/demo``, carried along); the synthetic
   gallery is generated under $DCINET_DATASETS (default datasets/) when absent.

``--tiny``: small images, few steps and rounds (a smoke run of every path, e.g. ``--device cpu --tiny``).
Writes the table to stdout and to ``--out``.
"""
import argparse
import os
import subprocess
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# --tiny: few proposals and sampled RoIs (a ResNet-50 res5 costs about 1.5 GFLOPs a RoI).
TINY_TEST = ("MODEL.RPN.POST_NMS_TOPK_TEST", "8", "TEST.DETECTIONS_PER_IMAGE", "4")
TINY_TRAIN = ("MODEL.RPN.POST_NMS_TOPK_TRAIN", "16", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4",
              "MODEL.REID.BOXES_PER_IMAGE", "4")
from benchmark_model import KEEP_ALL, load_cfg, r50_models, time_round_robin, time_train_steps  # noqa: E402
from benchmark_search import indexing_rates  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def training_row(args):
    size = (128, 160) if args.tiny else (900, 1200)
    tiny = TINY_TRAIN if args.tiny else ()
    cfg = load_cfg(os.path.join(ROOT, "configs/cuhk_sysu/dcinet_r50.yaml"), *KEEP_ALL, *tiny, device=args.device)
    median, _ = time_train_steps(cfg, 1 if args.tiny else 20, size=size, warmup=1 if args.tiny else 2)
    return [f"DC-I-Net R50 training step, 2 images {size[0]}x{size[1]} (median)", f"{median:.3f} s", ""]


def inference_rows(args):
    size = (96, 160) if args.tiny else (900, 1500)
    seqnet = args.seqnet if os.path.isfile(os.path.join(args.seqnet, "models", "seqnet.py")) else ""
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, *size, generator=g) * 255).to(torch.uint8).to(args.device)
              for _ in range(2 if args.tiny else 6)]
    opts = SimpleNamespace(device=args.device, proposals=[300], r50_only=True, seqnet=seqnet,
                           opts=TINY_TEST if args.tiny else (), seqnet_test=(8, 4) if args.tiny else (300, 100))
    results = time_round_robin(r50_models(opts, images), images, args.device)
    rows = [[f"{label}, {size[0]}x{size[1]}, per image ({n:.0f} detections)", f"{1e3 * t:.1f} ms",
             f"{1 / t:.2f} images/s"] for label, (t, n) in results.items()]
    if not seqnet:
        rows.append(["SeqNet R50", f"skipped: no SeqNet source at {args.seqnet} (models/seqnet.py)", ""])
    return rows


def indexing_rows(args):
    config, weights = (os.path.join(args.demo, f) for f in ("config.yaml", "model_final.pth"))
    if not (os.path.isfile(config) and os.path.isfile(weights)):
        return [["demo model indexing", f"skipped: no config.yaml and model_final.pth in {args.demo}", ""]]
    datasets = os.environ.setdefault("DCINET_DATASETS", os.path.join(ROOT, "datasets"))
    if not os.path.isdir(os.path.join(datasets, "synthetic_cuhk_sysu")):
        subprocess.run([sys.executable, "-m", "dcinet_d2.data.synthetic", "--out",
                        os.path.join(datasets, "synthetic_cuhk_sysu"), "--format", "cuhk_sysu"], check=True)
    rates = indexing_rates(config, weights, images=8 if args.tiny else 120, batch_sizes=(1, 4),
                           device=args.device)
    return [[f"demo model indexing (`{args.demo}`), batch {batch}, {n} synthetic gallery images",
             f"{rate:.2f} images/s", ""] for batch, _, rate, n in rates]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seqnet", default=os.path.join(ROOT, "output", "seqnet"))
    p.add_argument("--demo", default=os.path.join(ROOT, "output", "demo"))
    p.add_argument("--out", default=os.path.join(ROOT, "output", "benchmark_gpu.md"))
    p.add_argument("--tiny", action="store_true", help="small sizes: a smoke run of every path")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device visible to torch {torch.__version__}")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    rows = [training_row(args), *inference_rows(args), *indexing_rows(args)]
    tiny = ", tiny: 8 proposals and 4 detections, whatever the labels say" if args.tiny else ""
    lines = [f"device: {name}, torch {torch.__version__}{tiny}\n",
             "| measurement | value | rate |", "|---|---|---|", *("| " + " | ".join(r) + " |" for r in rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Where a model's inference time goes, per image: timed wrappers around each stage of one forward pass.

    # a trained model on a registered gallery (reading and resizing included), as the index builds it:
    python scripts/profile_inference.py --config-file /tmp/demo19/config.yaml \
        --weights /tmp/demo19/model_final.pth [--dataset synth_cuhk_sysu_gallery] [--images 40] [--batch-size 4]
    # random weights (BN calibrated as scripts/benchmark_model.py does) on random images of a given size:
    python scripts/profile_inference.py --config-file configs/cuhk_sysu/dcinet_r50.yaml --size 900 1500 --images 3

Stages: reading (image decode), input (resize, to tensor), normalise (pixel mean / std, padding), backbone,
RPN (head, anchors, proposal NMS), box pooler, box head and box predictor (on every proposal), box inference
(scores, box decoding, per-class NMS), re-id pooler and re-id head (DC-I-Net: on every detection; I-Net: the
projection of the kept proposals' features), postprocess (rescaling to the original image), and "other": the
forward pass's wall time minus the timed stages (Python glue, Instances bookkeeping). Milliseconds per image,
the mean over every batch but the first (warm-up). The given ``--weights`` run with the index's detection
threshold when ``--det-thresh`` is given (the model then detects, and embeds, only what an index keeps).
Prints a Markdown table.
"""
import argparse
import sys
import time
from collections import defaultdict

import torch

import dcinet_d2  # noqa: F401
from dcinet_d2.cli import load_config

# The model's stages as (label, attribute path from the model, method): each is wrapped by a timer.
STAGES = [
    ("normalise", "", "preprocess_image"),
    ("backbone", "backbone", "forward"),
    ("RPN", "proposal_generator", "forward"),
    ("box pooler", "roi_heads.box_pooler", "forward"),
    ("box head", "roi_heads.box_head", "forward"),
    ("box predictor", "roi_heads.box_predictor", "forward"),
    ("box inference (score threshold, NMS)", "roi_heads.box_predictor", "inference"),
    ("re-id pooler", "roi_heads.reid_pooler", "forward"),
    ("re-id head", "roi_heads.reid_head", "forward"),
    ("re-id projection (I-Net)", "roi_heads.reid_embed", "forward"),
    ("postprocess", "", "_postprocess"),
]


def _resolve(model, path):
    obj = model
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def instrument(model, seconds):
    """Wrap each stage of ``model`` present in it so that its wall time adds to ``seconds[label]``."""
    for label, path, method in STAGES:
        obj = _resolve(model, path)
        if obj is None or not hasattr(obj, method):
            continue
        original = getattr(obj, method)

        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            out = _original(*args, **kwargs)
            seconds[_label] += time.perf_counter() - start
            return out

        setattr(obj, method, timed)


def profile_dataset(args):
    from dcinet_d2.search import PersonSearchPredictor
    from dcinet_d2.search.sources import dataset_items

    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", args.weights, *args.opts])
    predictor = PersonSearchPredictor(cfg, det_thresh=args.det_thresh)
    _, items = dataset_items(args.dataset)
    items = list(items)[: args.images]
    batches = [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    seconds, counts = defaultdict(float), []
    instrument(predictor.model, seconds)
    with torch.no_grad():
        for i, batch in enumerate([batches[0]] + batches):  # the first batch warms up
            if i == 1:
                seconds.clear()
                counts.clear()
            start = time.perf_counter()
            images = [item.load() for item in batch]
            seconds["reading"] += time.perf_counter() - start
            start = time.perf_counter()
            inputs = [predictor._input(im) for im in images]
            seconds["input (resize, to tensor)"] += time.perf_counter() - start
            start = time.perf_counter()
            outputs = predictor.model(inputs)
            seconds["forward"] += time.perf_counter() - start
            counts += [len(o["instances"]) for o in outputs]
    size = tuple(inputs[0]["image"].shape[1:])
    return seconds, len(counts), counts, size


def profile_random(args):
    sys.path.insert(0, "scripts")
    from benchmark_model import KEEP_ALL, calibrate_bn, load_cfg, run_detectron2
    from detectron2.modeling import build_model

    cfg = load_cfg(args.config_file, *KEEP_ALL, *args.opts)
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, *args.size, generator=g) * 255).to(torch.uint8) for _ in range(args.images)]
    torch.manual_seed(0)
    model = calibrate_bn(build_model(cfg), run_detectron2, images[:1])
    seconds, counts = defaultdict(float), []
    instrument(model, seconds)
    with torch.no_grad():
        for i, img in enumerate(images):
            if i == 1:
                seconds.clear()
                counts.clear()
            start = time.perf_counter()
            out = model([{"image": img, "height": img.shape[1], "width": img.shape[2]}])
            seconds["forward"] += time.perf_counter() - start
            counts.append(len(out[0]["instances"]))
    n = len(images) - 1 if len(images) > 1 else 1
    return seconds, n, counts, tuple(args.size)


def table(seconds, n, counts):
    """Markdown rows: stage, ms per image, share of the total."""
    forward = seconds.pop("forward")
    outside = {k: v for k, v in seconds.items() if k in ("reading", "input (resize, to tensor)")}
    inside = {k: v for k, v in seconds.items() if k not in outside}
    total = forward + sum(outside.values())
    rows = [(label, outside[label]) for label in ("reading", "input (resize, to tensor)") if label in outside]
    rows += [(label, inside[label]) for label, _, _ in STAGES if label in inside]
    rows.append(("other (Python glue, Instances)", forward - sum(inside.values())))
    lines = ["| stage | ms per image | share |", "|---|---|---|"]
    lines += [f"| {label} | {1e3 * s / n:.1f} | {100 * s / total:.0f}% |" for label, s in rows]
    lines.append(f"| **total** | **{1e3 * total / n:.1f}** ({n / total:.2f} images/s) | 100% |")
    lines.append(f"\ndetections per image: {sum(counts) / len(counts):.1f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="trained weights; empty: random weights on random images")
    p.add_argument("--dataset", default="synth_cuhk_sysu_gallery")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--det-thresh", type=float, default=None,
                   help="the index's detection threshold passed to the predictor (trained weights only)")
    p.add_argument("--size", type=int, nargs=2, default=[900, 1500], help="random image height, width")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = p.parse_args(argv)
    seconds, n, counts, size = profile_dataset(args) if args.weights else profile_random(args)
    print(f"input {size[0]}x{size[1]}, {n} images timed, {torch.get_num_threads()} threads\n")
    print(table(seconds, n, counts))
    print(f"\nCommand: python scripts/profile_inference.py {' '.join(argv or sys.argv[1:])}")


if __name__ == "__main__":
    main()

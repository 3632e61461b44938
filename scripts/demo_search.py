#!/usr/bin/env python
"""The README main job's last step: search an indexed gallery for one test identity, with dcinet-search.

    python scripts/demo_search.py --index output/demo/gallery_index --query-set synth_cuhk_sysu_query \
        --gallery-set synth_cuhk_sysu_gallery --vis output/demo/search.png [--query N] [--top-k 5]

First searches the index for every query of the query split (its image and box; its own image left out)
and says how often the queried person comes first and how many of the top-k hits are that person on
average (a hit counts when it overlaps a ground-truth box of that identity with IoU >= 0.5, the field's
rule). Then runs ``dcinet-search query --vis`` as a user would, on query ``--query`` (default: a typical
one, the first whose count of correct top-k hits is the median over all queries), and prints its ranked
hits, the picture's path and how many of them are the queried person.
"""
import argparse
import os
import subprocess
import sys

import numpy as np

import dcinet_d2  # noqa: F401  (registers the synthetic datasets)
from dcinet_d2.evaluation.matching import paired_iou


def _query(queries, i):
    q = queries[i]
    return q["file_name"], q["annotations"][0]["bbox"], q["annotations"][0]["person_id"]


def _correct(hits, pid, truth):
    """Per hit (dicts or Hit objects): does it show person ``pid`` (IoU >= 0.5 with one of its boxes)?"""
    def field(h, k):
        return h[k] if isinstance(h, dict) else getattr(h, k)

    def shows(hit):
        boxes = np.asarray(truth.get(os.path.basename(field(hit, "image")), {}).get(pid, []), np.float64)
        if not len(boxes):
            return False
        return bool((paired_iou(np.tile(field(hit, "box"), (len(boxes), 1)), boxes) >= 0.5).any())
    return [shows(h) for h in hits]


def _all_queries(args, queries, truth):
    """Number of correct top-k hits of every query, through the Python API (the index's own model)."""
    from dcinet_d2.cli import load_config
    from dcinet_d2.search import GalleryIndex, PersonSearchPredictor
    from dcinet_d2.search.sources import read_image_bgr

    index = GalleryIndex.load(args.index)
    cfg = load_config(os.path.join(args.index, "config.yaml"), ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.WEIGHTS = index.model["weights"]
    predictor = PersonSearchPredictor(cfg)
    counts = []
    for i in range(len(queries)):
        image, box, pid = _query(queries, i)
        emb = predictor.embed(read_image_bgr(image), [box]).numpy()
        hits = index.search(emb, args.top_k, one_per_image=True, exclude_images=[os.path.basename(image)])[0]
        counts.append(_correct(hits, pid, truth))
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--query-set", required=True)
    parser.add_argument("--gallery-set", required=True)
    parser.add_argument("--vis", required=True)
    parser.add_argument("--query", type=int, default=None)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    from detectron2.data import DatasetCatalog

    queries = DatasetCatalog.get(args.query_set)
    truth = {}
    for d in DatasetCatalog.get(args.gallery_set):
        for a in d["annotations"]:
            truth.setdefault(os.path.basename(d["file_name"]), {}).setdefault(a["person_id"], []).append(a["bbox"])
    if args.query is not None and not 0 <= args.query < len(queries):
        print(f"error: --query {args.query}: the query set has {len(queries)} queries", file=sys.stderr)
        return 2
    results = _all_queries(args, queries, truth)
    firsts = sum(bool(r and r[0]) for r in results)
    print(f"all {len(queries)} test queries: the queried person is ranked first in {firsts} "
          f"({100 * firsts / len(queries):.0f}%); {np.mean([sum(r) for r in results]):.1f} of the top "
          f"{args.top_k} hits are that person on average (one hit per gallery image, own image left out)")
    counts = [sum(r) for r in results]
    chosen = args.query if args.query is not None else counts.index(sorted(counts)[len(counts) // 2])
    image, box, pid = _query(queries, chosen)
    # The query's own image is in the gallery; leave it out (its box would trivially rank first).
    command = [os.path.join(os.path.dirname(sys.executable), "dcinet-search"), "query", "--index", args.index,
               "--image", image, "--box", ",".join(f"{v:.0f}" for v in box),
               "--exclude-image", os.path.basename(image),
               "--top-k", str(args.top_k), "--one-per-image", "--vis", args.vis]
    print(f"query {chosen}" + (" (a typical one: its count of correct hits is the median)" if args.query is None
                               else "") + ":\n$ dcinet-search " + " ".join(command[1:]))
    table = subprocess.run(command, capture_output=True, text=True)
    if table.returncode:
        sys.stderr.write(table.stderr)
        return table.returncode
    print(table.stdout, end="")
    # The command's hits are the API's for the same query and filters (one model, one index): scored above.
    correct = results[chosen]
    in_gallery = sum(pid in v for k, v in truth.items() if k != os.path.basename(image))
    print(f"query {chosen}: person {pid} in {os.path.basename(image)}; {int(np.sum(correct))} of the top "
          f"{len(correct)} hits are this person (ranks {''.join('+' if c else '-' for c in correct)}; the person is "
          f"in {in_gallery} other gallery images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

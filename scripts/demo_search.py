#!/usr/bin/env python
"""The README main job's last step: search an indexed gallery for one test identity, with dcinet-search.

    python scripts/demo_search.py --index output/demo/gallery_index --query-set synth_cuhk_sysu_query \
        --gallery-set synth_cuhk_sysu_gallery --vis output/demo/search.png [--query 0] [--top-k 5]

Runs ``dcinet-search query`` on query number ``--query`` of the query split (its image and box), as a user
would, prints its ranked hits and the picture's path, then says how many hits are the queried person (a hit
counts when it overlaps a ground-truth box of that identity with IoU >= 0.5, the field's rule).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

import dcinet_d2  # noqa: F401  (registers the synthetic datasets)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--query-set", required=True)
    parser.add_argument("--gallery-set", required=True)
    parser.add_argument("--vis", required=True)
    parser.add_argument("--query", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    from detectron2.data import DatasetCatalog

    queries = DatasetCatalog.get(args.query_set)
    if not 0 <= args.query < len(queries):
        print(f"error: --query {args.query}: the query set has {len(queries)} queries", file=sys.stderr)
        return 2
    query = queries[args.query]
    box, pid = query["annotations"][0]["bbox"], query["annotations"][0]["person_id"]
    # The query's own image is in the gallery; leave it out (its box would trivially rank first).
    command = [os.path.join(os.path.dirname(sys.executable), "dcinet-search"), "query", "--index", args.index,
               "--image", query["file_name"], "--box", ",".join(f"{v:.0f}" for v in box),
               "--exclude-image", os.path.basename(query["file_name"]),
               "--top-k", str(args.top_k), "--one-per-image", "--vis", args.vis]
    print("$ dcinet-search " + " ".join(command[1:]))
    table = subprocess.run(command, capture_output=True, text=True)
    if table.returncode:
        sys.stderr.write(table.stderr)
        return table.returncode
    print(table.stdout, end="")
    hits = json.loads(subprocess.run(command[:-2] + ["--json"], capture_output=True, text=True,
                                     check=True).stdout)["hits"]
    truth = {os.path.basename(d["file_name"]): [a["bbox"] for a in d["annotations"] if a["person_id"] == pid]
             for d in DatasetCatalog.get(args.gallery_set)}
    correct = [any(_iou(h["box"], g) >= 0.5 for g in truth.get(os.path.basename(h["image"]), [])) for h in hits]
    in_gallery = sum(len(v) > 0 for k, v in truth.items() if k != os.path.basename(query["file_name"]))
    print(f"query {args.query}: person {pid} in {os.path.basename(query['file_name'])}; "
          f"{int(np.sum(correct))} of the top {len(hits)} hits are this person "
          f"(marked {''.join('+' if c else '-' for c in correct)}; the person is in {in_gallery} other gallery "
          "images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

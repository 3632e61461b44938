#!/usr/bin/env python
"""The cost of a filtered gallery query (cameras, a time span) against an unfiltered one, on this machine.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/benchmark_filters.py [--boxes 100000] [--cameras 8] [--max-ef 64 128 ...]

Embeddings as scripts/benchmark_search.py draws them (identities of 10 noisy views, identity directions in a
32-dimensional subspace), 10 boxes an image, image i of camera ``cam{i % cameras}`` taken at i seconds; the
index's own search structure (HNSW from 100,000 boxes). For each filter: the share of boxes it selects,
single-query p50 / p95 through ``GalleryIndex.search`` (top 10, the filter and ``Hit`` objects included),
the ratio to the unfiltered p50, recall@10 against exact search over the selected rows, and the time of the
row mask alone; then the same with each strategy of the filtered search forced (exact over the kept rows;
the structure with the ID selector, HNSW's efSearch widened up to each ``--max-ef``), to show where the cost
goes and where the index's rule (FILTER_EXACT_MAX_ROWS, FILTER_MAX_EF_SEARCH in dcinet_d2/search/index.py)
comes from.
Prints Markdown tables for BENCHMARKS.md.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_search import clustered  # noqa: E402  (the same synthetic embeddings)


def build_index(embeddings, cameras):
    """A GalleryIndex of 10 boxes an image (distinct boxes, score 1); image i: camera cam{i % cameras},
    time i seconds."""
    from dcinet_d2.search.index import GalleryIndex

    index = GalleryIndex(embeddings.shape[1], gallery_root="/bench")
    for start in range(0, len(embeddings), 10):
        k, i = min(10, len(embeddings) - start), start // 10
        boxes = np.stack([np.arange(k), np.zeros(k), np.arange(k) + 1, np.ones(k)], 1).astype(np.float32)
        index.add(f"img{i:07d}.jpg", -1, boxes, np.ones(k, np.float32), embeddings[start:start + k],
                  camera=f"cam{i % cameras}", time=float(i))
    _ = index.embeddings  # join the chunks before timing
    return index


def filters(num_images, cameras):
    """(name, search keywords) of the measured filters."""
    span = lambda share: {"since": 0.0, "until": num_images * share - 1}  # noqa: E731
    return [("none", {}),
            (f"{cameras // 2} cameras of {cameras}", {"cameras": [f"cam{i}" for i in range(cameras // 2)]}),
            (f"1 camera of {cameras}", {"cameras": ["cam0"]}),
            ("time: 10% of images", span(0.1)),
            ("time: 1% of images", span(0.01)),
            ("time: 0.1% of images", span(0.001)),
            ("1 camera, 10% of time", {"cameras": ["cam0"], **span(0.1)})]


def _key(index, row):
    return index.images[int(index.entry_image[row])][0], tuple(round(float(v), 2) for v in index.boxes[row])


def measure(index, queries, kw, repeats, recall_queries):
    """(share selected, p50 ms, p95 ms, recall@10 vs exact over the selected rows, p50 ms of computing the
    row mask alone)."""
    import faiss

    masks = []
    for _ in range(50):
        t = time.perf_counter()
        keep = np.ones(index.num_boxes, bool)
        image_ok = index._image_filter((), kw.get("cameras"), kw.get("since"), kw.get("until"))
        if image_ok is not None:
            keep &= image_ok[index.entry_image]
        masks.append(time.perf_counter() - t)
    selected = np.flatnonzero(keep)
    exact = faiss.IndexFlatIP(index.dim)
    exact.add(index.embeddings[selected])
    truth = selected[exact.search(queries[:recall_queries], 10)[1]]
    recall = np.mean([len({(h.image, tuple(h.box)) for h in index.search(q, top_k=10, **kw)[0]}
                          & {_key(index, r) for r in t}) / 10 for q, t in zip(queries, truth)])
    times = []
    for q in queries[:repeats]:
        t = time.perf_counter()
        index.search(q, top_k=10, **kw)
        times.append(time.perf_counter() - t)
    return (len(selected) / index.num_boxes, np.percentile(times, 50) * 1e3, np.percentile(times, 95) * 1e3, recall,
            np.percentile(masks, 50) * 1e3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=100_000)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=300, help="single queries timed per filter")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--max-ef", type=int, nargs="*", default=[64, 128, 256, 512, 1024],
                        help="also time every filter with the selector forced, efSearch widened up to each of these")
    args = parser.parse_args(argv)
    import faiss

    from dcinet_d2.search import index as index_module

    rng = np.random.default_rng(0)
    data, centres = clustered(args.boxes, args.dim, rng, intrinsic=32)
    queries = centres[rng.integers(0, len(centres), args.repeats)]
    queries = queries + 0.05 * rng.standard_normal(queries.shape, dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = build_index(data, args.cameras)
    index.search(queries[0], top_k=10)  # builds the search structure
    chosen = {"FILTER_EXACT_MAX_ROWS": index_module.FILTER_EXACT_MAX_ROWS,
              "FILTER_MAX_EF_SEARCH": index_module.FILTER_MAX_EF_SEARCH}
    strategies = [("the index's choice", chosen),
                  ("exact over the kept rows", dict(chosen, FILTER_EXACT_MAX_ROWS=10**12))]
    strategies += [(f"selector, efSearch up to {ef}", {"FILTER_EXACT_MAX_ROWS": 0, "FILTER_MAX_EF_SEARCH": ef})
                   for ef in args.max_ef]
    table = {}
    for title, knobs in strategies:
        for key, value in knobs.items():
            setattr(index_module, key, value)
        for name, kw in filters(index.num_images, args.cameras):
            if index.num_images * 10 * min(kw.get("until", 1e18) / index.num_images, 1) < 10:
                continue  # fewer than 10 boxes pass: nothing to rank
            table[title, name] = measure(index, queries, kw, args.repeats, args.recall_queries)
            print(title, name, table[title, name], file=sys.stderr, flush=True)
    for key, value in chosen.items():
        setattr(index_module, key, value)
    names = [n for n, _ in filters(index.num_images, args.cameras) if (strategies[0][0], n) in table]
    print(f"{index.num_boxes:,} boxes, {index.num_images:,} images, {args.cameras} cameras, D = {args.dim}, search: "
          f"{index.search_kind}, threads: {faiss.omp_get_max_threads()}; the index's rule: exact over the kept rows "
          f"up to {chosen['FILTER_EXACT_MAX_ROWS']:,} of them, else HNSW with the selector, efSearch "
          f"{index_module.HNSW_EF_SEARCH} / share kept, at most {chosen['FILTER_MAX_EF_SEARCH']}\n")
    base = table[strategies[0][0], "none"][1]
    print("| filter | boxes kept | p50 (ms) | p95 (ms) | p50 / unfiltered p50 | recall@10 vs exact "
          "| of which the row mask (ms) |\n|---|---|---|---|---|---|---|")
    for name in names:
        share, p50, p95, recall, mask = table[strategies[0][0], name]
        print(f"| {name} | {share:.1%} | {p50:.3f} | {p95:.3f} | {p50 / base:.2f} | {recall:.3f} | {mask:.3f} |")
    print("\nEach strategy forced (p50 ms / recall@10):\n")
    print("| filter | boxes kept | " + " | ".join(t for t, _ in strategies[1:]) + " |")
    print("|---|---|" + "---|" * (len(strategies) - 1))
    for name in names:
        cells = [f"{table[t, name][1]:.2f} / {table[t, name][3]:.3f}" for t, _ in strategies[1:]]
        print(f"| {name} | {table[strategies[0][0], name][0]:.1%} | " + " | ".join(cells) + " |")
    print(f"\nCommand: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python "
          f"scripts/benchmark_filters.py {' '.join(argv or sys.argv[1:])}")


if __name__ == "__main__":
    main()

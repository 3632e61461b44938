#!/usr/bin/env python
"""Gallery search and indexing speed on this machine (CPU).

    python scripts/benchmark_search.py latency [--sizes 10000 100000 1000000] [--dim 256] \
        [--ef-search 32 64 128] [--intrinsic-dim 32]
    python scripts/benchmark_search.py indexing --config-file output/demo/config.yaml \
        --weights output/demo/model_final.pth --dataset synth_cuhk_sysu_gallery [--batch-sizes 1 2 4 8]

latency: embeddings drawn like real ones (identities with 10 noisy views each, unit length; two views of one
identity have cosine about 0.6; identity directions spread over a 32-dimensional subspace, as learned
embeddings concentrate their variance, or uniformly with --intrinsic-dim 0), 1000 queries that are new views. For exact
(faiss flat) and approximate (HNSW, the index's choice from APPROX_MIN_BOXES) search: build time, memory per
box, latency per single query through GalleryIndex.search (p50, p95; filters and Hit objects included),
batched time per query, and recall@10 of the approximate search against exact search.

indexing: images per second of a trained model over a registered gallery (reading, detection, embedding).
Prints Markdown tables for BENCHMARKS.md.
"""
import argparse
import sys
import time

import numpy as np


def clustered(n, dim, rng, views=10, noise=0.05, intrinsic=0):
    """[n, dim] float32 unit vectors: n // views identities, each a random direction plus Gaussian noise.

    intrinsic > 0: identity directions vary in a random ``intrinsic``-dimensional subspace (plus a little
    isotropic spread), as learned embeddings do (their variance concentrates in few principal directions);
    0: directions uniform on the whole sphere (no structure at all: the hardest case for any approximate
    search, whose graph or cells have nothing to follow).
    """
    ids = max(1, n // views)
    if intrinsic:
        basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].astype(np.float32)
        centres = rng.standard_normal((ids, intrinsic), dtype=np.float32) @ basis.T
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        centres += 0.2 / np.sqrt(dim) * rng.standard_normal(centres.shape, dtype=np.float32)
    else:
        centres = rng.standard_normal((ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, views, axis=0)[:n]
    x += noise * rng.standard_normal(x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, centres


def _index_with(embeddings):
    from dcinet_d2.search.index import GalleryIndex

    n = len(embeddings)
    index = GalleryIndex(embeddings.shape[1], gallery_root="/bench")
    per_image = 10
    for start in range(0, n, per_image):
        k = min(per_image, n - start)
        index.add(f"img{start // per_image:07d}.jpg", -1, np.zeros((k, 4), np.float32), np.ones(k, np.float32),
                  embeddings[start:start + k])
    _ = index.embeddings  # join the chunks before timing
    return index


def _latency(index, queries, approximate, repeats=200):
    times = []
    for q in queries[:repeats]:
        t = time.perf_counter()
        index.search(q, top_k=10, approximate=approximate)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    index.search(queries, top_k=10, approximate=approximate)
    batched = (time.perf_counter() - t) / len(queries)
    return np.percentile(times, 50) * 1e3, np.percentile(times, 95) * 1e3, batched * 1e3


def _structure_bytes(structure):
    import faiss

    return len(faiss.serialize_index(structure))


def latency(args):
    import faiss

    from dcinet_d2.search import index as index_module

    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        data, centres = clustered(n, args.dim, rng, intrinsic=args.intrinsic_dim)
        ids = rng.integers(0, len(centres), args.queries)
        queries = centres[ids] + 0.05 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        index = _index_with(data)
        t = time.perf_counter()
        flat = index.search_structure(approximate=False)
        build = time.perf_counter() - t
        exact_ids = flat.search(queries, 10)[1]
        p50, p95, batched = _latency(index, queries, False)
        rows.append([f"{n:,}", "exact (flat)", f"{build:.2f}", f"{_structure_bytes(flat) / n:.0f}",
                     f"{p50:.2f}", f"{p95:.2f}", f"{batched:.3f}", "1.000"])
        print(rows[-1], file=sys.stderr, flush=True)
        t = time.perf_counter()
        hnsw = index.search_structure(approximate=True)
        build = time.perf_counter() - t
        for ef in args.ef_search:
            hnsw.hnsw.efSearch = ef
            approx_ids = hnsw.search(queries, 10)[1]
            recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_ids, exact_ids)])
            p50, p95, batched = _latency(index, queries, True)
            rows.append([f"{n:,}", f"HNSW{index_module.HNSW_M}, efSearch {ef}", f"{build:.2f}",
                         f"{_structure_bytes(hnsw) / n:.0f}", f"{p50:.2f}", f"{p95:.2f}", f"{batched:.3f}",
                         f"{recall:.3f}"])
            print(rows[-1], file=sys.stderr, flush=True)
        del index, data
    print(f"threads: {faiss.omp_get_max_threads()}; HNSW M {index_module.HNSW_M}, efConstruction "
          f"{index_module.HNSW_EF_CONSTRUCTION}, default efSearch {index_module.HNSW_EF_SEARCH}; approximate from "
          f"{index_module.APPROX_MIN_BOXES:,} boxes\n")
    print("| boxes | search | build (s) | bytes per box | single query p50 (ms) | p95 (ms) | batched, per query (ms) "
          "| recall@10 vs exact |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def indexing_rates(config_file, weights, dataset="synth_cuhk_sysu_gallery", images=120, batch_sizes=(1, 2, 4, 8),
                   det_thresh=None, device="cpu", opts=()):
    """[(batch size, images per second, images)] of a trained model indexing a registered gallery (reading,
    detection, embedding), as ``dcinet-search index`` runs it."""
    import torch

    import dcinet_d2  # noqa: F401
    from dcinet_d2.cli import load_config
    from dcinet_d2.search import PersonSearchPredictor
    from dcinet_d2.search.sources import dataset_items

    cfg = load_config(config_file, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", device, *opts])
    # As dcinet-search index runs it: the model returns (and embeds) the detections the index keeps.
    det_thresh = cfg.TEST.PERSON_SEARCH.DET_THRESH if det_thresh is None else det_thresh
    predictor = PersonSearchPredictor(cfg, det_thresh=None if det_thresh < 0 else det_thresh)
    _, items = dataset_items(dataset)
    items = list(items)[:images]
    rows = []
    for batch in batch_sizes:
        predictor.predict_batch([items[0].load()] * batch)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # predict_batch returns CPU tensors: the work is done
        t = time.perf_counter()
        for start in range(0, len(items), batch):
            predictor.predict_batch([item.load() for item in items[start:start + batch]])
        rows.append((batch, len(items) / (time.perf_counter() - t), len(items)))
        print(f"| {batch} | {rows[-1][1]:.2f} | {len(items)} |", file=sys.stderr, flush=True)
    return rows


def indexing(args):
    rows = indexing_rates(args.config_file, args.weights, args.dataset, args.images, args.batch_sizes,
                          args.det_thresh, args.device, args.opts)
    print("| batch size | images/s | images |\n|---|---|---|")
    for batch, rate, n in rows:
        print(f"| {batch} | {rate:.2f} | {n} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--intrinsic-dim", type=int, default=32,
                   help="identity directions in a subspace of this dimension; 0 = uniform on the sphere")
    i = sub.add_parser("indexing")
    i.add_argument("--config-file", required=True)
    i.add_argument("--weights", required=True)
    i.add_argument("--dataset", default="synth_cuhk_sysu_gallery")
    i.add_argument("--images", type=int, default=120)
    i.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    i.add_argument("--det-thresh", type=float, default=None,
                   help="the index's detection threshold (default: the config's TEST.PERSON_SEARCH.DET_THRESH); "
                        "negative: the config's MODEL.ROI_HEADS.SCORE_THRESH_TEST, every detection embedded")
    i.add_argument("--device", default="cpu")
    i.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    latency(args) if args.what == "latency" else indexing(args)
    print(f"\nCommand: .venv/bin/python scripts/benchmark_search.py {' '.join(argv or sys.argv[1:])}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Gallery search and indexing speed on this machine (CPU).

    python scripts/benchmark_search.py latency [--sizes 10000 100000 1000000] [--dim 256] \
        [--ef-search 32 64 128] [--intrinsic-dim 32]
    python scripts/benchmark_search.py compressed [--boxes 1000000 10000000] [--dir /tmp/bench_ivfpq] \
        [--phase all|build|measure] [--opq]
    python scripts/benchmark_search.py indexing --config-file output/demo/config.yaml \
        --weights output/demo/model_final.pth --dataset synth_cuhk_sysu_gallery [--batch-sizes 1 2 4 8]

latency: embeddings drawn like real ones (identities with 10 noisy views each, unit length; two views of one
identity have cosine about 0.6; identity directions spread over a 32-dimensional subspace, as learned
embeddings concentrate their variance, or uniformly with --intrinsic-dim 0), 1000 queries that are new views. For exact
(faiss flat) and approximate (HNSW, the index's choice from APPROX_MIN_BOXES) search: build time, memory per
box, latency per single query through GalleryIndex.search (p50, p95; filters and Hit objects included),
batched time per query, and recall@10 of the approximate search against exact search.

compressed: the IVF-PQ index of millions of boxes (index_type "ivfpq"), built and measured through
GalleryIndex on the same clustered embeddings, written to --dir in chunks (never all in memory). build: the
embeddings and 200 queries drawn chunk by chunk, the index saved (one part file, search.faiss) and the
drawn embeddings deleted; measure (in a fresh process): resident memory grown by loading the index and running
the queries (the part's embeddings stay memory-mapped), single-query latency through GalleryIndex.search at
several nprobe, with and without exact re-ranking, and recall@10 against exact top 10s computed in chunks from
the on-disk embeddings. --opq also trains OPQ+IVF-PQ on the same sample and measures it (the rejected option).
--phase splits the two (each under its own lock); delete --dir afterwards.

indexing: images per second of a trained model over a registered gallery (reading, detection, embedding).
Prints Markdown tables for BENCHMARKS.md.
"""
import argparse
import sys
import time

import numpy as np


def clustered(n, dim, rng, views=10, noise=0.05, intrinsic=0, basis=None):
    """[n, dim] float32 unit vectors: n // views identities, each a random direction plus Gaussian noise.

    basis: [dim, intrinsic] orthonormal subspace (default: drawn), so chunks drawn apart share one.
    intrinsic > 0: identity directions vary in a random ``intrinsic``-dimensional subspace (plus a little
    isotropic spread), as learned embeddings do (their variance concentrates in few principal directions);
    0: directions uniform on the whole sphere (no structure at all: the hardest case for any approximate
    search, whose graph or cells have nothing to follow).
    """
    ids = max(1, n // views)
    if intrinsic:
        if basis is None:
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


def _rss():
    """(RssAnon, RssFile) of this process, bytes (memory-mapped file pages count in RssFile once touched)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile"))


def _folder_bytes(path):
    import os

    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _compressed_build(n, folder, dim, intrinsic, queries, chunk=1_000_000):
    """Draw n embeddings in chunks into a .npy memmap (with ``queries`` new views of random identities), save
    them as a GalleryIndex with an IVF-PQ structure, delete the drawn file. Returns build facts."""
    import json
    import os

    from dcinet_d2.search.index import GalleryIndex

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].astype(np.float32) if intrinsic else None
    drawn = os.path.join(folder, "embeddings.npy")
    data = np.lib.format.open_memmap(drawn, "w+", np.float32, (n, dim))
    chunk = chunk - chunk % 10  # whole identities per chunk
    query_rows = np.sort(rng.choice(n, queries, replace=False))
    qs = []
    for start in range(0, n, chunk):
        part, centres = clustered(min(chunk, n - start), dim, np.random.default_rng([0, start]),
                                  intrinsic=intrinsic, basis=basis)
        data[start:start + len(part)] = part
        for row in query_rows[(query_rows >= start) & (query_rows < start + len(part))]:
            qs.append(centres[(row - start) // 10] + 0.05 * rng.standard_normal(dim, dtype=np.float32))
    data.flush()
    qs = np.stack(qs)
    np.save(os.path.join(folder, "queries.npy"), qs / np.linalg.norm(qs, axis=1, keepdims=True))
    images = [(f"img{i:08d}.jpg", -1) for i in range((n + 9) // 10)]
    index = GalleryIndex.from_rows(dim, images, np.arange(n, dtype=np.int64) // 10, np.zeros((n, 4), np.float32),
                                   np.ones(n, np.float32), data, gallery_root="/bench")
    index.index_type = "ivfpq"
    t = time.perf_counter()
    index.search_structure()
    build = time.perf_counter() - t
    t = time.perf_counter()
    index.save(os.path.join(folder, "index"), compact=True, search_file=True)
    facts = {"boxes": n, "build_s": build, "write_s": time.perf_counter() - t,
             "disk_bytes": _folder_bytes(os.path.join(folder, "index"))}
    del index, data
    os.remove(drawn)
    with open(os.path.join(folder, "build.json"), "w") as f:
        json.dump(facts, f)
    return facts


def _exact_top10(embeddings, queries, chunk=262_144):
    """Exact top-10 row ids [q, 10] of ``queries`` over ``embeddings`` [N, D], read chunk by chunk."""
    best_sims = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(embeddings), chunk):
        sims = queries @ np.asarray(embeddings[start:start + chunk], np.float32).T
        sims = np.concatenate([best_sims, sims], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(start, start + sims.shape[1] - best_ids.shape[1]),
                                                        (len(queries), sims.shape[1] - best_ids.shape[1]))], axis=1)
        top = np.argpartition(-sims, 9, axis=1)[:, :10]
        best_sims, best_ids = np.take_along_axis(sims, top, 1), np.take_along_axis(ids, top, 1)
    return best_ids  # (unordered: recall@10 compares sets)


def _compressed_measure(folder, nprobes, reranks, opq):
    """Load the saved index (memory growth), time single queries, recall@10 against exact top 10s."""
    import json
    import os

    from dcinet_d2.search.index import GalleryIndex

    with open(os.path.join(folder, "build.json")) as f:
        facts = json.load(f)
    queries = np.load(os.path.join(folder, "queries.npy"))
    before = _rss()
    t = time.perf_counter()
    index = GalleryIndex.load(os.path.join(folder, "index"))
    load = time.perf_counter() - t
    loaded = _rss()
    assert index.search_kind == "ivfpq" and isinstance(index.embeddings, np.memmap)
    structure = index.search_structure()
    found = {}
    rows = []
    for nprobe in nprobes:
        for rerank in reranks:
            structure.nprobe, index.rerank = nprobe, rerank
            index.search(queries[0], top_k=10)  # warm-up
            times = []
            for q in queries:
                t = time.perf_counter()
                index.search(q, top_k=10)
                times.append(time.perf_counter() - t)
            found[nprobe, rerank] = structure.search(queries, 10)[1]
            rows.append([nprobe, rerank, np.percentile(times, 50) * 1e3, np.percentile(times, 95) * 1e3])
    after = _rss()
    grown = (loaded[0] - before[0]) + (loaded[1] - before[1])
    exact = _exact_top10(index.embeddings, queries)
    n = facts["boxes"]
    table = []
    for (nprobe, rerank, p50, p95), ids in zip(rows, found.values()):
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ids, exact)])
        table.append([f"{n:,}", f"IVF{structure.ivf.nlist},PQ{structure.ivf.pq.M}, nprobe {nprobe}",
                      f"{rerank} x k" if rerank else "no", f"{facts['build_s']:.0f}",
                      f"{facts['disk_bytes'] / 2**30:.2f}", f"{grown / n:.0f}",
                      f"{(after[0] - before[0]) / n:.0f}", f"{p50:.2f}", f"{p95:.2f}",
                      f"{recall:.3f}"])
        print(table[-1], file=sys.stderr, flush=True)
    print(f"{n:,} boxes: load {load:.1f} s; resident memory grown by the load {grown / 2**20:.0f} MiB (anon "
          f"{(loaded[0] - before[0]) / 2**20:.0f}, file-backed {(loaded[1] - before[1]) / 2**20:.0f}), after the "
          f"queries anon {(after[0] - before[0]) / 2**20:.0f} MiB, file-backed (page cache of the part file "
          f"mapped by re-ranking reads) {(after[1] - before[1]) / 2**20:.0f} MiB; part write {facts['write_s']:.0f} s",
          file=sys.stderr, flush=True)
    if opq:
        table += _opq_rows(index, queries, exact, nprobes, reranks)
    return table


def _opq_rows(index, queries, exact, nprobes, reranks):
    """The rejected option: OPQ rotation before IVF-PQ, trained on the same sample, searched the same way."""
    import faiss

    from dcinet_d2.search import compressed

    n, dim = index.embeddings.shape
    m = compressed.pq_bytes(dim)
    structure = faiss.index_factory(dim, f"OPQ{m},IVF{compressed.ivf_lists(n)},PQ{m}np",
                                        faiss.METRIC_INNER_PRODUCT)
    rows = np.sort(np.random.default_rng(0).choice(n, min(n, compressed.TRAIN_ROWS), replace=False))
    t = time.perf_counter()
    structure.train(np.ascontiguousarray(index.embeddings[rows]))
    for start in range(0, n, compressed.ADD_ROWS):
        structure.add(np.ascontiguousarray(index.embeddings[start:start + compressed.ADD_ROWS]))
    build = time.perf_counter() - t
    search = compressed.CompressedSearch(structure, index.embeddings)
    table = []
    for nprobe in nprobes:
        for rerank in reranks:
            search.nprobe, search.rerank = nprobe, rerank
            times = []
            for q in queries:
                t = time.perf_counter()
                search.search(q[None], 10)
                times.append(time.perf_counter() - t)
            ids = search.search(queries, 10)[1]
            recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ids, exact)])
            table.append([f"{n:,}", f"OPQ{m},IVF{compressed.ivf_lists(n)},PQ{m}, nprobe {nprobe} (faiss only)",
                          f"{rerank} x k" if rerank else "no", f"{build:.0f}", "", "", "",
                          f"{np.percentile(times, 50) * 1e3:.2f}", f"{np.percentile(times, 95) * 1e3:.2f}",
                          f"{recall:.3f}"])
            print(table[-1], file=sys.stderr, flush=True)
    return table


def compressed_bench(args):
    import json
    import os
    import subprocess

    import faiss

    table = []
    for n in args.boxes:
        folder = os.path.join(args.dir, str(n))
        if args.phase in ("all", "build"):
            print(f"{n:,} boxes: built {_compressed_build(n, folder, args.dim, args.intrinsic_dim, args.queries)}",
                  file=sys.stderr, flush=True)
        if args.phase == "all":
            # Measured in a fresh process: memory the build freed would be reused by the load, hiding its growth.
            options = ["--nprobe", *map(str, args.nprobe), "--rerank", *map(str, args.rerank)] + \
                (["--opq"] if args.opq else [])
            subprocess.run([sys.executable, __file__, "compressed", "--phase", "measure", "--boxes", str(n), "--dir",
                            args.dir, *options], check=True, stdout=subprocess.DEVNULL)
        elif args.phase == "measure":
            with open(os.path.join(folder, "measure.json"), "w") as f:
                json.dump(_compressed_measure(folder, args.nprobe, args.rerank, args.opq), f)
        if args.phase in ("all", "measure"):
            with open(os.path.join(folder, "measure.json")) as f:
                table += json.load(f)
    if table:
        print(f"threads: {faiss.omp_get_max_threads()}; D {args.dim}; {args.queries} queries\n")
        print("| boxes | index | exact re-ranking | build (s) | disk (GiB) | memory after load (bytes per box) | "
              "anonymous memory after the queries (bytes per box) | single query p50 (ms) | p95 (ms) | "
              "recall@10 vs exact |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in table:
            print("| " + " | ".join(row) + " |")


def indexing_rates(config_file, weights, dataset="synth_cuhk_sysu_gallery", images=120, batch_sizes=(1, 2, 4, 8),
                   det_thresh=None, device="cpu", opts=(), workers=(1,)):
    """[(batch size, workers, images per second, images)] of a trained model indexing a registered gallery
    (reading, detection, embedding), as ``dcinet-search index`` runs it (``predicted_batches``)."""

    import dcinet_d2  # noqa: F401
    from dcinet_d2.cli import load_config
    from dcinet_d2.search import PersonSearchPredictor
    from dcinet_d2.search.indexer import predicted_batches
    from dcinet_d2.search.sources import dataset_items

    cfg = load_config(config_file, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", device, *opts])
    # As dcinet-search index runs it: the model returns (and embeds) the detections the index keeps.
    det_thresh = cfg.TEST.PERSON_SEARCH.DET_THRESH if det_thresh is None else det_thresh
    predictor = PersonSearchPredictor(cfg, det_thresh=None if det_thresh < 0 else det_thresh)
    _, items = dataset_items(dataset)
    items = list(items)[:images]
    rows = []
    for batch in batch_sizes:
        for n in workers:
            for _ in predicted_batches(predictor, items[:batch * n], batch, n):  # warm-up
                pass
            t = time.perf_counter()
            for _ in predicted_batches(predictor, items, batch, n):
                pass  # outputs are on the CPU: the work is done
            rows.append((batch, n, len(items) / (time.perf_counter() - t), len(items)))
            print(f"| {batch} | {n} | {rows[-1][2]:.2f} | {len(items)} |", file=sys.stderr, flush=True)
    return rows


def indexing(args):
    rows = indexing_rates(args.config_file, args.weights, args.dataset, args.images, args.batch_sizes,
                          args.det_thresh, args.device, args.opts, args.workers)
    print("| batch size | workers | images/s | images |\n|---|---|---|---|")
    for batch, workers, rate, n in rows:
        print(f"| {batch} | {workers} | {rate:.2f} | {n} |")


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
    c = sub.add_parser("compressed")
    c.add_argument("--boxes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    c.add_argument("--dim", type=int, default=256)
    c.add_argument("--queries", type=int, default=200)
    c.add_argument("--intrinsic-dim", type=int, default=32)
    c.add_argument("--dir", default="/tmp/bench_ivfpq", help="embeddings and indexes (GBs: delete afterwards)")
    c.add_argument("--phase", choices=["all", "build", "measure"], default="all")
    c.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    c.add_argument("--rerank", type=int, nargs="+", default=[0, 4])
    c.add_argument("--opq", action="store_true", help="also measure OPQ+IVF-PQ (the option not taken)")
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
    i.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="forward passes at once (dcinet-search index --workers), each measured")
    i.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    {"latency": latency, "compressed": compressed_bench, "indexing": indexing}[args.what](args)
    print(f"\nCommand: .venv/bin/python scripts/benchmark_search.py {' '.join(argv or sys.argv[1:])}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The cost of a filtered gallery query (cameras, a time span) against an unfiltered one, on this machine.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/benchmark_filters.py [--boxes 100000] [--cameras 8] \
        [--layout round-robin|contiguous] [--grouped] [--max-ef 256] [--ef-per-share 32 40 48 64] \
        [--slice-rows 25000 50000]

Embeddings as scripts/benchmark_search.py draws them (identities of 10 noisy views, identity directions in a
32-dimensional subspace), 10 boxes an image. --layout round-robin: image i of camera ``cam{i % cameras}``
taken at i seconds; contiguous (as a real gallery, whose rows are sorted by path and a camera is a folder or
a video): the images of a camera are consecutive, each camera covering the same span of time (image j of a
camera taken at j seconds). The index's own search structure (HNSW from 100,000 boxes), its camera graphs and
its time-slice graphs (built first, their build time and bytes reported). The time spans start at time 0 (a
slice border) unless "from X%" says where. For each filter: the share of boxes it selects,
single-query p50 / p95 through ``GalleryIndex.search`` (top 10, ``Hit`` objects included; the filter's mask
and search reused, as for a reviewer's many queries with one filter; the filters taken in a new random order for
each query, so no filter finds its own graphs in the cache from its last query; --grouped: a filter's queries
one after the other), the ratio to the unfiltered p50, the CPU time of the process's threads (a filter's
sub-searches run side by side),
recall@10 against exact search over the selected rows, the p50 of a filter's first query (nothing reused)
and of the row mask alone; then the same with each strategy of the filtered search forced (exact over the
kept rows; the camera graphs at each --camera-ef, every camera holding kept rows walked; the time-slice graphs
with slices of each --slice-rows; the structure with the ID selector,
efSearch = each --ef-per-share / share, at least 64, up to each --max-ef), to show where the cost goes and where
the rule (the constants of dcinet_d2/search/filtered.py) comes from. The time-slice graphs forced take the cheaper
of the two cuts (filtered.time_slices), a slice walked or scanned as the cost model has it.
Prints Markdown tables for BENCHMARKS.md.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_search import clustered  # noqa: E402  (the same synthetic embeddings)


def build_index(embeddings, cameras, layout):
    """A GalleryIndex of 10 boxes an image (distinct boxes, score 1), in canonical order; the camera and time
    of each image by ``layout`` (module docstring)."""
    from dcinet_d2.search.index import GalleryIndex

    index = GalleryIndex(embeddings.shape[1], gallery_root="/bench")
    num_images = -(-len(embeddings) // 10)
    block = -(-num_images // cameras)
    for start in range(0, len(embeddings), 10):
        k, i = min(10, len(embeddings) - start), start // 10
        camera, t = (i % cameras, i) if layout == "round-robin" else (i // block, i % block)
        boxes = np.stack([np.arange(k), np.zeros(k), np.arange(k) + 1, np.ones(k)], 1).astype(np.float32)
        index.add(f"cam{camera}/img{i:07d}.jpg", -1, boxes, np.ones(k, np.float32), embeddings[start:start + k],
                  camera=f"cam{camera}", time=float(t))
    _ = index.embeddings  # join the chunks before timing
    return index.sort()


def filters(index, cameras):
    """(name, search keywords) of the measured filters."""
    end = max(index.times) + 1
    span = lambda share, start=0.0: {"since": end * start, "until": end * (start + share) - 1}  # noqa: E731
    some = lambda n: {"cameras": [f"cam{i}" for i in range(n)]}  # noqa: E731
    return [("none", {}),
            (f"{cameras // 2} cameras of {cameras}", some(cameras // 2)),
            (f"2 cameras of {cameras}", some(2)),
            (f"1 camera of {cameras}", some(1)),
            ("time: 50%", span(0.5)),
            ("time: 50%, from 25%", span(0.5, 0.25)),
            ("time: 25%", span(0.25)),
            ("time: 25%, from 40%", span(0.25, 0.4)),
            ("time: 20%", span(0.2)),
            ("time: 20%, from 33%", span(0.2, 0.33)),
            ("time: 10%", span(0.1)),
            ("time: 1%", span(0.01)),
            ("time: 0.1%", span(0.001)),
            ("2 cameras, 50% of time", {**some(2), **span(0.5)}),
            ("1 camera, 10% of time", {**some(1), **span(0.1)})]


def _key(index, row):
    return index.images[int(index.entry_image[row])][0], tuple(round(float(v), 2) for v in index.boxes[row])


def interleaved(index, queries, named_filters, grouped=False, seed=0):
    """name -> (p50 ms, p95 ms, CPU p50 ms: all the process's threads) of ``index.search`` (top 10) for each
    query with each filter, the filters in a new random order for each query (so that no filter's graphs stay
    in the cache from its own last query, and a slow spell of the machine falls on every filter alike), or
    ``grouped``: all queries of a filter one after the other; each filter's mask and search kept."""
    from dcinet_d2.search import index as index_module

    index_module.FILTER_CACHE_SIZE = max(index_module.FILTER_CACHE_SIZE, len(named_filters))
    for _, kw in named_filters:
        index.search(queries[0], top_k=10, **kw)
    rng = np.random.default_rng(seed)
    times, cpu = {name: [] for name, _ in named_filters}, {name: [] for name, _ in named_filters}
    order = [(q, i) for i in range(len(named_filters)) for q in queries] if grouped else \
        [(q, i) for q in queries for i in rng.permutation(len(named_filters))]
    for q, i in order:
        name, kw = named_filters[i]
        t, c = time.perf_counter(), time.process_time()
        index.search(q, top_k=10, **kw)
        times[name].append(time.perf_counter() - t)
        cpu[name].append(time.process_time() - c)
    return {name: (np.percentile(t, 50) * 1e3, np.percentile(t, 95) * 1e3, np.percentile(cpu[name], 50) * 1e3)
            for name, t in times.items()}


def measure(index, queries, kw, recall_queries, first_queries=50):
    """(share selected, recall@10 vs exact over the selected rows, p50 ms of a filter's first query, p50 ms of
    computing the row mask alone)."""
    import faiss

    masks = []
    for _ in range(50):
        index._filters.clear()
        t = time.perf_counter()
        index._filter(None, (), kw.get("cameras"), kw.get("since"), kw.get("until"))
        masks.append(time.perf_counter() - t)
    chosen = index._filter(None, (), kw.get("cameras"), kw.get("since"), kw.get("until"))
    selected = np.arange(index.num_boxes) if chosen is None else np.flatnonzero(chosen.keep)
    exact = faiss.IndexFlatIP(index.dim)
    exact.add(index.embeddings[selected])
    truth = selected[exact.search(queries[:recall_queries], 10)[1]]
    firsts = []
    for q in queries[:first_queries]:
        index._filters.clear()
        t = time.perf_counter()
        index.search(q, top_k=10, **kw)
        firsts.append(time.perf_counter() - t)
    recall = np.mean([len({(h.image, tuple(h.box)) for h in index.search(q, top_k=10, **kw)[0]}
                          & {_key(index, r) for r in t}) / 10 for q, t in zip(queries, truth)])
    return len(selected) / index.num_boxes, recall, np.percentile(firsts, 50) * 1e3, np.percentile(masks, 50) * 1e3


def build_graphs(index, name):
    """Build every graph of partition ``name`` ("cameras", "times") the index wants; (seconds, bytes of the
    graphs, boxes in them)."""
    import faiss

    t = time.perf_counter()
    graphs = index.partition_graphs(name)
    for p in graphs.wanted():
        graphs.graph(p)
    seconds = time.perf_counter() - t
    size = sum(faiss.serialize_index(graphs.graph(p)).nbytes for p in graphs.wanted())
    return seconds, size, sum(len(graphs.rows[p]) for p in graphs.wanted())


def describe(what, seconds, size, boxes, index):
    return (f"{what}: {boxes:,} boxes, built in {seconds:.1f} s, {size / 2**20:.0f} MiB ({size / index.num_boxes:.0f} "
            f"bytes a box of the index)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=100_000)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layout", choices=("round-robin", "contiguous"), default="round-robin")
    parser.add_argument("--repeats", type=int, default=300, help="single queries timed per filter (interleaved)")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--grouped", action="store_true",
                        help="time each filter's queries one after the other (its graphs stay in the cache)")
    parser.add_argument("--max-ef", type=int, nargs="*", default=[256],
                        help="also time every filter with the selector forced, efSearch widened up to each of these")
    parser.add_argument("--camera-ef", type=int, nargs="*", default=[64, 96],
                        help="also time every filter with the camera graphs forced, at each of these efSearch")
    parser.add_argument("--ef-per-share", type=int, nargs="*", default=[32, 40, 48, 64],
                        help="... and efSearch = each of these / share kept")
    parser.add_argument("--slice-rows", type=int, nargs="*", default=[25_000, 50_000],
                        help="also time every filter with the time-slice graphs forced, slices of each of these rows")
    args = parser.parse_args(argv)
    import faiss

    from dcinet_d2.search import filtered

    rng = np.random.default_rng(0)
    data, centres = clustered(args.boxes, args.dim, rng, intrinsic=32)
    queries = centres[rng.integers(0, len(centres), args.repeats)]
    queries = queries + 0.05 * rng.standard_normal(queries.shape, dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = build_index(data, args.cameras, args.layout)
    t = time.perf_counter()
    index.search(queries[0], top_k=10)  # builds the search structure
    structure_s, structure_bytes = time.perf_counter() - t, faiss.serialize_index(index.search_structure()).nbytes
    built = [describe("camera graphs", *build_graphs(index, "cameras"), index)]
    knobs = ("FILTER_STRATEGY", "FILTER_MAX_EF_SEARCH", "FILTER_EF_PER_SHARE", "GRAPH_ROWS_PER_EF",
             "CAMERA_EF_SEARCH", "TIME_SLICE_ROWS")
    chosen = {key: getattr(filtered, key) for key in knobs}
    strategies = [("the index's choice", chosen),
                  ("exact over the kept rows", dict(chosen, FILTER_STRATEGY="exact"))]
    strategies += [(f"camera graphs, ef {ef}", dict(chosen, FILTER_STRATEGY="cameras", GRAPH_ROWS_PER_EF=0,
                                                    CAMERA_EF_SEARCH=ef)) for ef in args.camera_ef]
    strategies += [(f"time slices of {rows:,} rows", dict(chosen, FILTER_STRATEGY="times", TIME_SLICE_ROWS=rows))
                   for rows in args.slice_rows]
    strategies += [(f"selector, ef {e} / share up to {ef}",
                    dict(chosen, FILTER_STRATEGY="selector", FILTER_MAX_EF_SEARCH=ef, FILTER_EF_PER_SHARE=e))
                   for e in args.ef_per_share for ef in args.max_ef]
    table, slice_rows = {}, None
    for title, values in strategies:
        for key, value in values.items():
            setattr(filtered, key, value)
        if slice_rows != filtered.TIME_SLICE_ROWS:  # time slices of another size: built now, not in a timed query
            slice_rows = filtered.TIME_SLICE_ROWS
            for name, (size, _) in filtered.TIME_PARTITIONS.items():
                index._graphs.pop(name, None)
                made = describe(f"{name.replace('times', 'time-slice')} graphs of {size * slice_rows:,} rows",
                                *build_graphs(index, name), index)
                built += [made] if made.split(":")[0] not in {b.split(":")[0] for b in built} else []
        named = filters(index, args.cameras)
        measured = {name: measure(index, queries, kw, args.recall_queries) for name, kw in named}
        for name, (p50, p95, cpu) in interleaved(index, queries[:args.repeats], named, args.grouped).items():
            share, recall, first, mask = measured[name]
            table[title, name] = share, p50, p95, recall, first, mask, cpu
            print(title, name, table[title, name], file=sys.stderr, flush=True)
    for key, value in chosen.items():
        setattr(filtered, key, value)
    names = [n for n, _ in filters(index, args.cameras)]
    print(f"{index.num_boxes:,} boxes, {index.num_images:,} images, {args.cameras} cameras ({args.layout}), "
          f"D = {args.dim}, search: {index.search_kind} (built in {structure_s:.1f} s, {structure_bytes / 2**20:.0f} "
          f"MiB), threads: {faiss.omp_get_max_threads()}; {'; '.join(built)}. The rule: the cheapest by cost in "
          f"rows of an exact scan (exact: the rows kept; a graph walk: {chosen['GRAPH_ROWS_PER_EF']} a unit of "
          f"efSearch): "
          f"exact, camera graphs or time-slice graphs ({chosen['TIME_SLICE_ROWS']:,} rows a slice, and twice as "
          f"many; efSearch "
          f"{chosen['CAMERA_EF_SEARCH']}), or HNSW with the selector (efSearch {chosen['FILTER_EF_PER_SHARE']} / "
          f"share kept, at least {filtered.FILTER_MIN_EF_SEARCH} where it rejects a row, at most "
          f"{chosen['FILTER_MAX_EF_SEARCH']}); sub-searches on "
          f"{filtered.search_threads()} threads\n")
    base = table[strategies[0][0], "none"][1]
    base_cpu = table[strategies[0][0], "none"][6]
    print("| filter | boxes kept | p50 (ms) | p95 (ms) | p50 / unfiltered p50 | CPU p50 (ms) | CPU / unfiltered "
          "| recall@10 vs exact | a filter's first query, p50 (ms) | of which the row mask (ms) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        share, p50, p95, recall, first, mask, cpu = table[strategies[0][0], name]
        print(f"| {name} | {share:.1%} | {p50:.3f} | {p95:.3f} | {p50 / base:.2f} | {cpu:.3f} | {cpu / base_cpu:.2f} "
              f"| {recall:.3f} | {first:.3f} | {mask:.3f} |")
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

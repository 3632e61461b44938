"""Benchmark of the vectorised evaluation against a per-detection Python-loop reference (the field's way).

Builds a CUHK-SYSU-sized tree (6,978 test images, 2,900 queries, TestG50/TestG100) and a PRW-sized one
(6,112 test frames, 2,057 queries) with helper-written files and random results in memory, then times
both implementations and checks that they agree query by query. The reference parses the files itself
every time (scipy.io.loadmat) and may run on a subset of the queries, extrapolated linearly (said so in the
table). dcinet_d2 is timed three ways, each the median of --repeats runs:

- cold: an empty protocol cache directory ($DCINET_CACHE) and every in-memory cache of dcinet_d2 cleared
  (as a new process on a new machine): every file is parsed, and the parsed arrays are written to the cache;
- disk cache: the in-memory caches cleared again, the disk cache kept (a new process, e.g. a second
  ``dcinet-eval`` run): CUHK-SYSU's pool.mat, Images.mat and TestG files come from the cache (PRW's files
  are not cached on disk: there the column is another cold run);
- in memory: the same process evaluating again (parsed files and protocol arrays kept in memory, as when a
  training run evaluates several checkpoints).

"reference, files parsed" is the reference without its parsing. Also times saving and loading a large
results file.

    .venv/bin/python scripts/benchmark_eval.py [--workdir DIR] [--reference-queries N] [--repeats N] [--quick]
"""
import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "evaluation"))

import eval_trees  # noqa: E402
import reference_impl  # noqa: E402

from dcinet_d2.evaluation.offline import evaluate_search_results  # noqa: E402
from dcinet_d2.evaluation.results import load_results, save_results  # noqa: E402


def _clear_memory_caches():
    """Forget everything dcinet_d2 keeps in memory (parsed files, protocol arrays): a new process's state."""
    for name, module in list(sys.modules.items()):
        if name.startswith("dcinet_d2."):
            for value in vars(module).values():
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()


def _directory_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def _cached_tree(root, build):
    """Build a tree once per --workdir (its contents are kept in tree.pkl beside it)."""
    cache = os.path.join(root, "tree.pkl")
    if os.path.isfile(cache):
        with open(cache, "rb") as f:
            return pickle.load(f)
    out = build()
    with open(cache, "wb") as f:
        pickle.dump(out, f)
    return out


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _reference_search(galleries_fn, results, n_ref, det_thresh=0.5):
    """Reference on the first n_ref queries: (per-query APs, parse seconds, loop seconds for n_ref)."""
    galleries, parse = _timed(galleries_fn)
    gallery, queries = reference_impl._as_numpy(results)
    out, loop = _timed(reference_impl.search, gallery, queries[:n_ref], galleries[:n_ref], det_thresh)
    return out, parse, loop, len(galleries)


def _row(name, ours, ref_total, ref_warm, ref_note, max_diff):
    cold, disk, memory = ours
    return (f"| {name} | {cold:.2f} s | {disk:.3f} s | {memory:.3f} s | {ref_total:.1f} s{ref_note} | "
            f"{ref_total / cold:.1f}x | {ref_total / disk:.1f}x | {ref_total / memory:.1f}x | {ref_warm:.1f} s | "
            f"{max_diff:.1e} |")


def _ours(results, fmt, root, repeats, **kwargs):
    """(result, (cold, disk-cache, in-memory) seconds, medians over ``repeats``, cache size in bytes)."""
    times = []
    saved = os.environ.get("DCINET_CACHE")
    try:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(prefix="dcinet-bench-cache-") as cache:
                os.environ["DCINET_CACHE"] = cache
                _clear_memory_caches()
                out, cold = _timed(evaluate_search_results, results, fmt, root, **kwargs)
                _clear_memory_caches()
                _, disk = _timed(evaluate_search_results, results, fmt, root, **kwargs)
                _, memory = _timed(evaluate_search_results, results, fmt, root, **kwargs)
                times.append((cold, disk, memory))
                cache_bytes = _directory_size(cache)
    finally:
        if saved is None:
            os.environ.pop("DCINET_CACHE", None)
        else:
            os.environ["DCINET_CACHE"] = saved
        _clear_memory_caches()
    return out, tuple(statistics.median(t[i] for t in times) for i in range(3)), cache_bytes


def _against_reference(ours, results, n_ref, galleries, detection_gt):
    """Time the reference on the same results (search on n_ref queries, extrapolated; detection in full).

    Returns (seconds with parsing, seconds without, number of queries, table note, max abs difference of
    per-query AP and detection AP, as fractions)."""
    ref, parse, loop, n_all = _reference_search(galleries, results, n_ref)
    det_gt, det_parse = _timed(detection_gt)
    det, det_loop = _timed(reference_impl.detection, det_gt, results)
    n = len(ref["aps"])
    diff = max(np.abs(ours["per_query"]["ap"][:n] - np.asarray(ref["aps"])).max(),
               abs(ours["det_ap"] - det["ap"]) / 100)
    warm = loop * n_all / n + det_loop
    note = "" if n == n_all else f" ({n} of {n_all} queries, extrapolated)"
    return parse + det_parse + warm, warm, n_all, note, diff


def bench_cuhk(workdir, n_ref, quick, repeats):
    root = os.path.join(workdir, "cuhk_sysu")
    n_test, n_queries = (700, 290) if quick else (6978, 2900)
    t0 = time.perf_counter()
    images, queries = _cached_tree(root, lambda: eval_trees.cuhk_tree(
        root, n_images=n_test + 50, n_test=n_test, n_ids=n_test // 2, n_queries=n_queries,
        gallery_sizes=(50, 100), seed=0))
    results = eval_trees.random_results(images, queries, dim=256, seed=1)
    print(f"CUHK-SYSU tree: {n_test} test images, {len(queries)} queries ({time.perf_counter() - t0:.0f} s to "
          "build)", file=sys.stderr)
    rows = []
    for size in (100, -1):
        ours, t_ours, cache_bytes = _ours(results, "cuhk_sysu", root, repeats, gallery_size=size)
        total, warm, n_all, note, diff = _against_reference(
            ours, results, n_ref, lambda size=size: reference_impl.cuhk_sysu_galleries(root, size),
            lambda: reference_impl.cuhk_sysu_detection_gt(root, labeled=False))
        label = "full set" if size == -1 else f"gallery {size}"
        rows.append(_row(f"CUHK-SYSU {label}, {n_all} queries, {n_test} images", t_ours, total, warm, note, diff))
        print(f"CUHK-SYSU {label}: protocol cache {cache_bytes / 2**20:.1f} MB", file=sys.stderr)
    return rows, root, images, queries


def bench_prw(workdir, n_ref, quick, repeats):
    root = os.path.join(workdir, "prw")
    n_test, n_queries = (600, 200) if quick else (6112, 2057)
    t0 = time.perf_counter()
    images, queries = _cached_tree(root, lambda: eval_trees.prw_tree(
        root, n_frames=n_test + 50, n_train=50, n_ids=max(100, n_test // 12), n_queries=n_queries, n_cams=6,
        seed=0))
    results = eval_trees.random_results(images, queries, dim=256, seed=2)
    print(f"PRW tree: {len(images)} test frames, {len(queries)} queries ({time.perf_counter() - t0:.0f} s to "
          "build)", file=sys.stderr)
    rows = []
    for cross in (False, True):
        ours, t_ours, _ = _ours(results, "prw", root, repeats, cross_camera=cross)
        total, warm, n_all, note, diff = _against_reference(
            ours, results, n_ref, lambda cross=cross: reference_impl.prw_galleries(root, cross),
            lambda: reference_impl.prw_detection_gt(root))
        label = "cross-camera" if cross else "all"
        rows.append(_row(f"PRW {label}, {n_all} queries, {len(images)} frames", t_ours, total, warm, note, diff))
    return rows


def bench_results_file(workdir, images, queries, dets_per_image):
    """Save and load a results file of realistic size (every image with ``dets_per_image`` detections)."""
    results = eval_trees.random_results(images, queries, dim=256, seed=3, extra_dets=dets_per_image)
    path = os.path.join(workdir, "search_results.pth")
    _, t_save = _timed(save_results, path, results)
    size = os.path.getsize(path) / 2**20
    _, t_load = _timed(load_results, path)
    n_dets = sum(len(v["scores"]) for v in results["gallery"].values())
    return [f"| results file: {len(images)} images, {n_dets} detections, D = 256 ({size:.0f} MB) | "
            f"save {t_save:.2f} s, load + validate {t_load:.2f} s | | | | | | | | |"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="where the trees are written (default: a temp folder); "
                        "trees already there are reused")
    parser.add_argument("--reference-queries", type=int, default=300,
                        help="queries the reference runs on (its time is extrapolated to all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of dcinet_d2 per setting (each from an empty cache); the median is shown")
    parser.add_argument("--quick", action="store_true", help="10x smaller trees (a smoke test)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.reference_queries < 1:
        parser.error("--repeats and --reference-queries must be at least 1")
    workdir = args.workdir or tempfile.mkdtemp(prefix="dcinet-bench-")
    rows, _, images, queries = bench_cuhk(workdir, args.reference_queries, args.quick, args.repeats)
    rows += bench_prw(workdir, args.reference_queries, args.quick, args.repeats)
    rows += bench_results_file(workdir, images, queries, dets_per_image=30)
    print("| evaluation | dcinet_d2 cold (no cache) | dcinet_d2, disk cache | dcinet_d2, in memory | reference, "
          "parsing included | speed-up cold | speed-up disk cache | speed-up in memory | reference, files parsed | "
          "max abs difference (per-query AP, det AP; fraction) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nCommand: .venv/bin/python scripts/benchmark_eval.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"Machine: {os.cpu_count()} CPU cores, numpy {np.__version__}")


if __name__ == "__main__":
    main()

"""Benchmark of the vectorised evaluation against a per-detection Python-loop reference (the field's way).

Builds a CUHK-SYSU-sized tree (6,978 test images, 2,900 queries, TestG50/TestG100) and a PRW-sized one
(6,112 test frames, 2,057 queries) with helper-written files and random results in memory, then times
both implementations (parsing included on both sides; each side reads the files itself) and checks that
they agree query by query. The reference may run on a subset of the queries, extrapolated linearly (said
so in the table). "Files parsed" columns: dcinet_d2 evaluating a second time in the same process (parsed
files and CUHK-SYSU protocol arrays are cached, as when a training run evaluates several checkpoints),
the reference without its parsing. Also times saving and loading a large results file.

    .venv/bin/python scripts/benchmark_eval.py [--workdir DIR] [--reference-queries N] [--quick]
"""
import argparse
import os
import pickle
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


def _clear_parser_caches():
    """Forget the parsed files (dcinet_d2.data caches them per file) so that every timing parses."""
    import dcinet_d2.data.cuhk_sysu as cuhk
    import dcinet_d2.data.prw as prw

    for module in (cuhk, prw):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


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


def _row(name, ours, ref_total, ours_warm, ref_warm, ref_note, max_diff):
    return (f"| {name} | {ours:.2f} s | {ref_total:.1f} s{ref_note} | {ref_total / ours:.1f}x | {ours_warm:.2f} s | "
            f"{ref_warm:.1f} s | {ref_warm / ours_warm:.1f}x | {max_diff:.1e} |")


def _ours(results, fmt, root, **kwargs):
    """(result, seconds from cold parser caches, seconds with the files already parsed)."""
    _clear_parser_caches()
    out, cold = _timed(evaluate_search_results, results, fmt, root, **kwargs)
    _, warm = _timed(evaluate_search_results, results, fmt, root, **kwargs)
    return out, cold, warm


def bench_cuhk(workdir, n_ref, quick):
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
        ours, t_ours, t_warm = _ours(results, "cuhk_sysu", root, gallery_size=size)
        ref, parse, loop, n_all = _reference_search(
            lambda: reference_impl.cuhk_sysu_galleries(root, size), results, n_ref)
        det_gt, det_parse = _timed(reference_impl.cuhk_sysu_detection_gt, root, labeled=False)
        det, det_loop = _timed(reference_impl.detection, det_gt, results)
        n = len(ref["aps"])
        diff = max(np.abs(ours["per_query"]["ap"][:n] - np.asarray(ref["aps"])).max(),
                   abs(ours["det_ap"] - det["ap"]) / 100)
        warm = loop * n_all / n + det_loop
        note = "" if n == n_all else f" ({n} of {n_all} queries, extrapolated)"
        label = "full set" if size == -1 else f"gallery {size}"
        rows.append(_row(f"CUHK-SYSU {label}, {n_all} queries, {n_test} images", t_ours, parse + det_parse + warm,
                         t_warm, warm, note, diff))
    return rows, root, images, queries


def bench_prw(workdir, n_ref, quick):
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
        ours, t_ours, t_warm = _ours(results, "prw", root, cross_camera=cross)
        ref, parse, loop, n_all = _reference_search(
            lambda: reference_impl.prw_galleries(root, cross), results, n_ref)
        det_gt, det_parse = _timed(reference_impl.prw_detection_gt, root)
        det, det_loop = _timed(reference_impl.detection, det_gt, results)
        n = len(ref["aps"])
        diff = max(np.abs(ours["per_query"]["ap"][:n] - np.asarray(ref["aps"])).max(),
                   abs(ours["det_ap"] - det["ap"]) / 100)
        warm = loop * n_all / n + det_loop
        note = "" if n == n_all else f" ({n} of {n_all} queries, extrapolated)"
        label = "cross-camera" if cross else "all"
        rows.append(_row(f"PRW {label}, {n_all} queries, {len(images)} frames", t_ours, parse + det_parse + warm,
                         t_warm, warm, note, diff))
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
            f"save {t_save:.2f} s, load + validate {t_load:.2f} s | | | | | | |"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="where the trees are written (default: a temp folder); "
                        "trees already there are reused")
    parser.add_argument("--reference-queries", type=int, default=300,
                        help="queries the reference runs on (its time is extrapolated to all)")
    parser.add_argument("--quick", action="store_true", help="10x smaller trees (a smoke test)")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="dcinet-bench-")
    rows, _, images, queries = bench_cuhk(workdir, args.reference_queries, args.quick)
    rows += bench_prw(workdir, args.reference_queries, args.quick)
    rows += bench_results_file(workdir, images, queries, dets_per_image=30)
    print("| evaluation | dcinet_d2, parsing included | reference, parsing included | speed-up | dcinet_d2, "
          "files parsed | reference, files parsed | speed-up | max abs difference (per-query AP, det AP; "
          "fraction) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nCommand: .venv/bin/python scripts/benchmark_eval.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"Machine: {os.cpu_count()} CPU cores, numpy {np.__version__}")


if __name__ == "__main__":
    main()

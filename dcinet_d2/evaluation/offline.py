"""Offline evaluation of a results file, and the ``dcinet-eval`` command.

    dcinet-eval --format cuhk_sysu|prw|generic --root DIR --results FILE [--gallery-size N]
                [--det-thresh T] [--cross-camera] [--labeled-only]

prints a table and, as its last line, the summary as JSON (``--root`` is the JSON file for ``generic``).
"""
import argparse
import json
import logging
import os
import sys

import numpy as np

from . import cuhk_sysu, generic, prw
from .protocol import evaluate_detection, evaluate_search
from .results import gallery_detections, load_results, validate_results

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "SUMMARY_KEYS", "evaluate_search_results", "summarize", "format_table", "main"]

FORMATS = ("cuhk_sysu", "prw", "generic")
SUMMARY_KEYS = ("mAP", "top1", "top5", "top10", "det_ap", "det_recall")


def _dataset(dataset_format, root, gallery_size, cross_camera):
    """(gallery image names, protocol factory, detection ground truth) of a dataset."""
    if dataset_format == "cuhk_sysu":
        cuhk_sysu.check_gallery_size(root, gallery_size)
        names = cuhk_sysu.gallery_images(root)
        return names, lambda: cuhk_sysu.search_protocol(root, gallery_size, names), cuhk_sysu.detection_ground_truth
    if dataset_format == "prw":
        names = prw.gallery_images(root)
        return names, lambda: prw.search_protocol(root, cross_camera, names), prw.detection_ground_truth
    if dataset_format == "generic":
        names = generic.gallery_images(root)
        return names, lambda: generic.search_protocol(root, names), generic.detection_ground_truth
    raise ValueError(f"unknown dataset format {dataset_format!r}: expected one of {FORMATS}")


def evaluate_search_results(results, dataset_format, root, *, gallery_size=100, det_thresh=0.5,
                            cross_camera=False, labeled_only=False):
    """The field's search and detection metrics of a results file on a dataset.

    Args:
        results (str or dict): a results file path, or the dict it holds (ARCHITECTURE.md "Results file").
        dataset_format (str): "cuhk_sysu", "prw" or "generic".
        root (str): dataset root (generic: the JSON file).
        gallery_size (int): CUHK-SYSU only: 50, 100, 500, 1000, 2000, 4000 or -1 (full set).
        det_thresh (float): detections with a lower score are ignored.
        cross_camera (bool): PRW only: the cross-camera setting instead of "all".
        labeled_only (bool): detection metrics over labelled people only (default: all people).
    Returns:
        dict: ``mAP``, ``top1``, ``top5``, ``top10``, ``det_ap``, ``det_recall`` (float, percent: the JSON-able
        summary, see :func:`summarize`), ``setting`` (dict), ``cmc`` (np.ndarray[100], percent), ``per_query``
        (dict of np.ndarray[Q]: ``ap`` in [0, 1], ``first_tp_rank`` (-1: none), ``count_tp``, ``count_gt``),
        ``detection`` (dict: ``count_tp``, ``count_gt``, ``num_detections``).
    """
    # NaN checks happen once, on the concatenated gallery (gallery_detections).
    if isinstance(results, (str, os.PathLike)):
        source = str(results)
        results = load_results(source, check_finite=False)
    else:
        source = "results"
        results = validate_results(results, source, check_finite=False)
    names, make_protocol, detection_gt = _dataset(dataset_format, root, gallery_size, cross_camera)
    protocol = make_protocol()
    gallery, queries = gallery_detections(results, names, source)
    if len(queries) != protocol.num_queries:
        raise ValueError(f"{source}: {len(queries)} query embeddings, but the {dataset_format} protocol of {root} "
                         f"has {protocol.num_queries} queries")
    search = evaluate_search(gallery, queries, protocol, det_thresh=det_thresh)
    boxes, image_index, labelled = detection_gt(root, names, labeled=labeled_only)
    det = evaluate_detection(gallery, boxes, image_index, det_thresh=det_thresh,
                             gt_labeled=labelled if labeled_only else None)
    setting = {"format": dataset_format, "root": str(root), "det_thresh": float(det_thresh),
               "labeled_only": bool(labeled_only), "queries": protocol.num_queries, "gallery_images": len(names)}
    if dataset_format == "cuhk_sysu":
        setting["gallery_size"] = int(gallery_size)
    if dataset_format == "prw":
        setting["cross_camera"] = bool(cross_camera)
    return {**search.summary(), **det.summary(), "setting": setting, "cmc": search.cmc,
            "per_query": {"ap": search.ap, "first_tp_rank": search.first_tp_rank, "count_tp": search.count_tp,
                          "count_gt": search.count_gt},
            "detection": {"count_tp": det.count_tp, "count_gt": det.count_gt,
                          "num_detections": det.num_detections}}


def summarize(result):
    """The JSON-able summary of :func:`evaluate_search_results`: the metrics (percent) and the setting."""
    return {**{k: round(float(result[k]), 4) for k in SUMMARY_KEYS}, **result["setting"]}


def format_table(result):
    """A readable table (str) of one evaluation."""
    from tabulate import tabulate

    setting = result["setting"]
    name = {"cuhk_sysu": "CUHK-SYSU", "prw": "PRW", "generic": "generic"}[setting["format"]]
    if "gallery_size" in setting:
        name += f" (gallery {'full set' if setting['gallery_size'] == -1 else setting['gallery_size']})"
    if "cross_camera" in setting:
        name += " (cross-camera)" if setting["cross_camera"] else " (all)"
    rows = [[name, setting["queries"], *(f"{result[k]:.2f}" for k in SUMMARY_KEYS)]]
    headers = ["dataset", "queries", "mAP", "top-1", "top-5", "top-10",
               "det AP" + (" (labelled)" if setting["labeled_only"] else ""), "det recall"]
    return tabulate(rows, headers=headers, tablefmt="github")


def _parser():
    parser = argparse.ArgumentParser(prog="dcinet-eval", description="Person-search evaluation of a results file "
                                     "(the field's protocols: mAP, top-k, detection AP and recall, in percent).")
    parser.add_argument("--format", required=True, choices=FORMATS, help="dataset format")
    parser.add_argument("--root", required=True, help="dataset root (generic: the gallery JSON file)")
    parser.add_argument("--results", required=True, help="results file (torch.save of the results dict)")
    parser.add_argument("--gallery-size", type=int, default=None,
                        help="CUHK-SYSU gallery size: 50, 100 (default), 500, 1000, 2000, 4000 or -1 (full set)")
    parser.add_argument("--det-thresh", type=float, default=0.5, help="detection score threshold")
    parser.add_argument("--cross-camera", action="store_true", help="PRW: cross-camera setting")
    parser.add_argument("--labeled-only", action="store_true", help="detection metrics on labelled people only")
    return parser


def main(argv=None):
    """Command line ``dcinet-eval``; returns the exit code (2 on bad input, with one "error: ..." line)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = None
    if not np.isfinite(args.det_thresh):
        problem = f"--det-thresh {args.det_thresh} is not a number"
    elif args.gallery_size is not None and args.format != "cuhk_sysu":
        problem = f"--gallery-size applies to --format cuhk_sysu only (got --format {args.format})"
    elif args.cross_camera and args.format != "prw":
        problem = f"--cross-camera applies to --format prw only (got --format {args.format})"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    gallery_size = 100 if args.gallery_size is None else args.gallery_size
    try:
        result = evaluate_search_results(args.results, args.format, args.root, gallery_size=gallery_size,
                                         det_thresh=args.det_thresh, cross_camera=args.cross_camera,
                                         labeled_only=args.labeled_only)
    except Exception as e:  # noqa: BLE001 - a command line reports bad input in one line, never a traceback
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(json.dumps(summarize(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

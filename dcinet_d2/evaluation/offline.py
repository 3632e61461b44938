"""Offline evaluation of a results file, and the ``dcinet-eval`` command.

    dcinet-eval --format cuhk_sysu|prw|generic --root DIR --results FILE [--gallery-size N]
                [--det-thresh T] [--cross-camera] [--labeled-only] [--cbgm [--cbgm-k1 N] [--cbgm-k2 N]]

prints a table and, as its last line, the summary as JSON (``--root`` is the JSON file for ``generic``).
With ``--cbgm`` the search is scored twice, plainly and with SeqNet's context bipartite graph matching
(:mod:`.cbgm`): a second table row and the keys ``mAP@cbgm``, ``top1@cbgm``, ... beside the plain ones.
Bad input (a missing, empty, truncated or foreign results file, NaN values, XYWH boxes, a wrong embedding
dimension, an unreadable dataset) ends in one ``error: ...`` line naming the file and exit code 2; embeddings
that are not L2-normalised are normalised with a warning.
"""
import argparse
import json
import logging
import os
import sys

import numpy as np

from ..cli import report_error
from . import cuhk_sysu, generic, prw
from .cbgm import ContextMatching, default_k
from .detection_metrics import evaluate_detection
from .search_metrics import evaluate_search
from .results import gallery_detections, load_results, validate_results

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "SUMMARY_KEYS", "SEARCH_KEYS", "evaluate_search_results", "summarize", "format_table", "main"]

FORMATS = ("cuhk_sysu", "prw", "generic")
SUMMARY_KEYS = ("mAP", "top1", "top5", "top10", "det_ap", "det_recall")
SEARCH_KEYS = SUMMARY_KEYS[:4]


def _check_root(dataset_format, root):
    """FileNotFoundError / NotADirectoryError / IsADirectoryError naming ``root`` if it is not what the format
    reads (a dataset folder; generic: the JSON file)."""
    if dataset_format not in FORMATS:
        return
    what = "the generic gallery JSON file" if dataset_format == "generic" else f"the {dataset_format} dataset folder"
    if not os.path.exists(root):
        raise FileNotFoundError(f"{root}: not found (expected {what})")
    if dataset_format == "generic" and os.path.isdir(root):
        raise IsADirectoryError(f"{root}: is a folder (expected {what})")
    if dataset_format != "generic" and not os.path.isdir(root):
        raise NotADirectoryError(f"{root}: is not a folder (expected {what})")


def _dataset(dataset_format, root, gallery_size, cross_camera):
    """(gallery image names, protocol factory, detection ground truth, query people factory) of a dataset."""
    _check_root(dataset_format, root)
    if dataset_format == "cuhk_sysu":
        cuhk_sysu.check_gallery_size(root, gallery_size)
        names = cuhk_sysu.gallery_images(root)
        return (names, lambda: cuhk_sysu.search_protocol(root, gallery_size, names), cuhk_sysu.detection_ground_truth,
                lambda: cuhk_sysu.query_people(root, gallery_size, names))
    if dataset_format == "prw":
        names = prw.gallery_images(root)
        return (names, lambda: prw.search_protocol(root, cross_camera, names), prw.detection_ground_truth,
                lambda: prw.query_people(root, names))
    if dataset_format == "generic":
        names = generic.gallery_images(root)
        return (names, lambda: generic.search_protocol(root, names), generic.detection_ground_truth,
                lambda: generic.query_people(root, names))
    raise ValueError(f"unknown dataset format {dataset_format!r}: expected one of {FORMATS}")


def evaluate_search_results(results, dataset_format, root, *, gallery_size=100, det_thresh=0.5,
                            cross_camera=False, labeled_only=False, cbgm=False, cbgm_k1=None, cbgm_k2=None):
    """The field's search and detection metrics of a results file on a dataset.

    Args:
        results (str or dict): a results file path, or the dict it holds (ARCHITECTURE.md "Results file").
        dataset_format (str): "cuhk_sysu", "prw" or "generic".
        root (str): dataset root (generic: the JSON file).
        gallery_size (int): CUHK-SYSU only: 50, 100, 500, 1000, 2000, 4000 or -1 (full set).
        det_thresh (float): detections with a lower score are ignored.
        cross_camera (bool): PRW only: the cross-camera setting instead of "all".
        labeled_only (bool): detection metrics over labelled people only (default: all people).
        cbgm (bool): also score the search with CBGM re-scoring (:mod:`.cbgm`).
        cbgm_k1, cbgm_k2 (int or None): CBGM's k1 and k2 (None or 0: SeqNet's for the dataset format,
            :data:`.cbgm.DEFAULT_K`).
    Results are checked as :func:`~dcinet_d2.evaluation.results.gallery_detections` does: ValueError (naming the
    file) for NaN, boxes with x2 < x1 or y2 < y1 (XYWH written) or a wrong embedding dimension; embeddings
    that are not L2-normalised are normalised, with a warning.

    Returns:
        dict: ``mAP``, ``top1``, ``top5``, ``top10``, ``det_ap``, ``det_recall`` (float, percent: the JSON-able
        summary, see :func:`summarize`), ``setting`` (dict), ``cmc`` (np.ndarray[100], percent), ``per_query``
        (dict of np.ndarray[Q]: ``ap`` in [0, 1], ``first_tp_rank`` (-1: none), ``count_tp``, ``count_gt``),
        ``detection`` (dict: ``count_tp``, ``count_gt``, ``num_detections``); with ``cbgm``, ``cbgm`` (dict:
        ``mAP``, ``top1``, ``top5``, ``top10`` (percent), ``k1``, ``k2``, ``queries_with_context``, ``cmc``,
        ``per_query``: the same quantities on the re-scored similarities).
    """
    if cbgm:
        cbgm_k1, cbgm_k2 = default_k(dataset_format, cbgm_k1, cbgm_k2)  # bad values fail before any work
    # NaN checks happen once, on the concatenated gallery (gallery_detections).
    if isinstance(results, (str, os.PathLike)):
        source = str(results)
        results = load_results(source, check_finite=False)
    else:
        source = "results"
        results = validate_results(results, source, check_finite=False)
    names, make_protocol, detection_gt, query_people = _dataset(dataset_format, root, gallery_size, cross_camera)
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
    out = {**search.summary(), **det.summary(), "setting": setting, **_search_arrays(search),
           "detection": {"count_tp": det.count_tp, "count_gt": det.count_gt, "num_detections": det.num_detections}}
    if cbgm:
        hook = ContextMatching.build(gallery, *query_people(), cbgm_k1, cbgm_k2, det_thresh=det_thresh)
        rescored = evaluate_search(gallery, queries, protocol, det_thresh=det_thresh, rescore=hook)
        out["cbgm"] = {**rescored.summary(), "k1": cbgm_k1, "k2": cbgm_k2,
                       "queries_with_context": hook.queries_with_context, **_search_arrays(rescored)}
    return out


def _search_arrays(search):
    """The CMC curve and per-query arrays of a SearchMetrics, as evaluate_search_results returns them."""
    return {"cmc": search.cmc, "per_query": {"ap": search.ap, "first_tp_rank": search.first_tp_rank,
                                             "count_tp": search.count_tp, "count_gt": search.count_gt}}


def summarize(result):
    """The JSON-able summary of :func:`evaluate_search_results`: the metrics (percent) and the setting; with
    CBGM also ``mAP@cbgm``, ``top1@cbgm``, ``top5@cbgm``, ``top10@cbgm``, ``cbgm_k1``, ``cbgm_k2``."""
    summary = {**{k: round(float(result[k]), 4) for k in SUMMARY_KEYS}, **result["setting"]}
    if "cbgm" in result:
        summary.update({f"{k}@cbgm": round(float(result["cbgm"][k]), 4) for k in SEARCH_KEYS})
        summary.update(cbgm_k1=int(result["cbgm"]["k1"]), cbgm_k2=int(result["cbgm"]["k2"]))
    return summary


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
    if "cbgm" in result:  # detection is not re-scored: same detection columns
        cbgm = result["cbgm"]
        rows.append([f"{name} + CBGM (k1 {cbgm['k1']}, k2 {cbgm['k2']})", setting["queries"],
                     *(f"{cbgm[k]:.2f}" for k in SEARCH_KEYS), *(f"{result[k]:.2f}" for k in SUMMARY_KEYS[4:])])
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
    parser.add_argument("--cbgm", action="store_true", help="also report the search re-scored with SeqNet's context "
                        "bipartite graph matching (a second row; JSON keys mAP@cbgm, top1@cbgm, ...)")
    parser.add_argument("--cbgm-k1", type=int, default=None, metavar="N",
                        help="CBGM: re-score the images of the N most similar detections (default: SeqNet's, "
                        "CUHK-SYSU 10, PRW and generic 30)")
    parser.add_argument("--cbgm-k2", type=int, default=None, metavar="N",
                        help="CBGM: people of the query image in each graph, the query included (default: "
                        "SeqNet's, CUHK-SYSU 3, PRW and generic 4)")
    return parser


def _cbgm_problem(args):
    """What is wrong with the --cbgm options (str), or None."""
    for flag, value in (("--cbgm-k1", args.cbgm_k1), ("--cbgm-k2", args.cbgm_k2)):
        if value is not None and not args.cbgm:
            return f"{flag} applies with --cbgm only"
        if value is not None and value < 1:
            return f"{flag} {value}: expected a whole number >= 1"
    return None


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
    else:
        problem = _cbgm_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    gallery_size = 100 if args.gallery_size is None else args.gallery_size
    try:
        result = evaluate_search_results(args.results, args.format, args.root, gallery_size=gallery_size,
                                         det_thresh=args.det_thresh, cross_camera=args.cross_camera,
                                         labeled_only=args.labeled_only, cbgm=args.cbgm, cbgm_k1=args.cbgm_k1,
                                         cbgm_k2=args.cbgm_k2)
    except Exception as e:  # noqa: BLE001 - a command line reports bad input in one line, never a traceback
        return report_error(e)
    print(format_table(result))
    print(json.dumps(summarize(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

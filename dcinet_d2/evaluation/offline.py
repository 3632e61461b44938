"""Offline evaluation of a results file on a dataset: the field's search and detection numbers, optionally
with CBGM re-scoring (:mod:`.cbgm`). Its command line, ``dcinet-eval``, is :mod:`.cli`.

Bad input (a missing, empty, truncated or foreign results file, NaN values, XYWH boxes, a wrong embedding
dimension, an unreadable dataset) raises an error naming the file; embeddings that are not L2-normalised are
normalised with a warning.
"""
import logging
import os

from ..data.mot import read_mot
from . import cuhk_sysu, generic, prw
from .cbgm import ContextMatching, default_k
from .detection_metrics import evaluate_detection
from .results import gallery_detections, load_results, validate_results
from .search_metrics import evaluate_search

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "SUMMARY_KEYS", "SEARCH_KEYS", "evaluate_search_results", "summarize"]

FORMATS = ("cuhk_sysu", "prw", "generic", "mot")
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


def _dataset(dataset_format, root, gallery_size, cross_camera, shared_ids=False):
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
    if dataset_format in ("generic", "mot"):
        source = read_mot(root, shared_ids) if dataset_format == "mot" else root  # MOT parses into generic's form
        names = generic.gallery_images(source)
        return (names, lambda: generic.search_protocol(source, names),
                lambda _, names, labeled: generic.detection_ground_truth(source, names, labeled),
                lambda: generic.query_people(source, names))
    raise ValueError(f"unknown dataset format {dataset_format!r}: expected one of {FORMATS}")


def evaluate_search_results(results, dataset_format, root, *, gallery_size=100, det_thresh=0.5,
                            cross_camera=False, labeled_only=False, cbgm=False, cbgm_k1=None, cbgm_k2=None,
                            shared_ids=False):
    """The field's search and detection metrics of a results file on a dataset.

    Args:
        results (str or dict): a results file path, or the dict it holds (ARCHITECTURE.md "Results file").
        dataset_format (str): "cuhk_sysu", "prw", "generic" or "mot".
        root (str): dataset root (generic: the JSON file; mot: the sequence or the folder of sequences).
        gallery_size (int): CUHK-SYSU only: 50, 100, 500, 1000, 2000, 4000 or -1 (full set).
        det_thresh (float): detections with a lower score are ignored.
        cross_camera (bool): PRW only: the cross-camera setting instead of "all".
        shared_ids (bool): MOT only: one id is one person in every sequence (:mod:`dcinet_d2.data.mot`).
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
    names, make_protocol, detection_gt, query_people = _dataset(dataset_format, root, gallery_size, cross_camera,
                                                                shared_ids)
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
    if dataset_format == "mot":
        setting["shared_ids"] = bool(shared_ids)
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

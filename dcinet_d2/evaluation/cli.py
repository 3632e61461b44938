"""The ``dcinet-eval`` command: evaluate a results file on a dataset (:mod:`.offline`).

    dcinet-eval --format cuhk_sysu|prw|generic|mot --root DIR --results FILE [--gallery-size N]
                [--det-thresh T] [--cross-camera] [--shared-ids] [--labeled-only] [--cbgm [--cbgm-k1 N] [--cbgm-k2 N]]

prints a table and, as its last line, the summary as JSON (``--root`` is the JSON file for ``generic``, the
sequence or folder of sequences for ``mot``).
With ``--cbgm`` the search is scored twice, plainly and with SeqNet's context bipartite graph matching
(:mod:`.cbgm`): a second table row and the keys ``mAP@cbgm``, ``top1@cbgm``, ... beside the plain ones.
Bad input ends in one ``error: ...`` line naming the file or value and exit code 2.
"""
import argparse
import json
import logging
import sys

import numpy as np

from ..cli import report_error
from .offline import FORMATS, SEARCH_KEYS, SUMMARY_KEYS, evaluate_search_results, summarize

__all__ = ["format_table", "main"]


def format_table(result):
    """A readable table (str) of one evaluation."""
    from tabulate import tabulate

    setting = result["setting"]
    name = {"cuhk_sysu": "CUHK-SYSU", "prw": "PRW", "generic": "generic", "mot": "MOT"}[setting["format"]]
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
    parser.add_argument("--root", required=True, help="dataset root (generic: the gallery JSON file; mot: the "
                        "sequence or the folder of sequences)")
    parser.add_argument("--results", required=True, help="results file (torch.save of the results dict)")
    parser.add_argument("--gallery-size", type=int, default=None,
                        help="CUHK-SYSU gallery size: 50, 100 (default), 500, 1000, 2000, 4000 or -1 (full set)")
    parser.add_argument("--det-thresh", type=float, default=0.5, help="detection score threshold, in [0, 1]")
    parser.add_argument("--cross-camera", action="store_true", help="PRW: cross-camera setting")
    parser.add_argument("--shared-ids", action="store_true",
                        help="MOT: one id is one person in every sequence (default: ids are per sequence)")
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
    elif not 0.0 <= args.det_thresh <= 1.0:  # detection scores are probabilities: 5 would keep nothing
        problem = f"--det-thresh {args.det_thresh}: expected a detection score threshold in [0, 1]"
    elif args.gallery_size is not None and args.format != "cuhk_sysu":
        problem = f"--gallery-size applies to --format cuhk_sysu only (got --format {args.format})"
    elif args.cross_camera and args.format != "prw":
        problem = f"--cross-camera applies to --format prw only (got --format {args.format})"
    elif args.shared_ids and args.format != "mot":
        problem = f"--shared-ids applies to --format mot only (got --format {args.format})"
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
                                         cbgm_k2=args.cbgm_k2, shared_ids=args.shared_ids)
    except Exception as e:  # noqa: BLE001 - a command line reports bad input in one line, never a traceback
        return report_error(e)
    print(format_table(result))
    print(json.dumps(summarize(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

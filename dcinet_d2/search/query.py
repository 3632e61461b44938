"""What answers a query, shared by ``dcinet-search query`` and ``dcinet-search serve``: the index's model,
loaded once and checked against the index, and the answer in the JSON contract of ``query --json``:

    index, predictor = open_search(index_dir)                 # config.yaml and weights named by the index
    answer = answer_query(index, predictor, image, box, "q.jpg", top_k=10)
    # {"query": {"image": "q.jpg", "box": [x1, y1, x2, y2]},
    #  "hits": [{"rank", "image", "frame", "box", "score", "similarity", "camera", "time"}, ...],
    #  "appearances": [{"camera", "image", "first_frame", "last_frame", "start", "end", "ranks", "best_rank",
    #                   "similarity"}, ...]}      (video hits merged into runs of nearby frames)
"""
import datetime
import math
import os
from typing import Optional, Sequence

from .index import GalleryIndex

__all__ = ["UsageError", "parse_box", "parse_time", "check_threshold", "model_config", "query_model", "open_search",
           "answer_query", "appearances", "APPEARANCE_MAX_SKIP"]

# Two hits in one video belong to one appearance when at most this many indexed frames of it lie between them.
APPEARANCE_MAX_SKIP = 2


class UsageError(ValueError):
    """Bad input from a user (a command line's exit code 2, one line; the server's 4xx)."""


def parse_box(text: str):
    """``"X1,Y1,X2,Y2"`` -> four floats; UsageError saying what is expected otherwise."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise UsageError(f"box {text!r}: expected X1,Y1,X2,Y2 (four numbers, original pixels)")
    return values


def parse_time(text: Optional[str], what: str = "time") -> Optional[float]:
    """An ISO 8601 date or date and time (``2026-01-02``, ``2026-01-02T03:04:05``, with ``Z`` or an offset;
    without one it is UTC, as the index's EXIF times) -> POSIX seconds; None for None or ""."""
    if text is None or str(text).strip() == "":
        return None
    try:
        moment = datetime.datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected an ISO 8601 date and time, e.g. 2026-01-02T03:04:05") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def check_threshold(value, what="--det-thresh"):
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"{what} {value}: expected a detection score threshold in [0, 1]")


def model_config(config_file, weights, device, opts=()):
    """The model's config (file + ``KEY VALUE`` overrides) with its weights and device (default: cuda when
    available); UsageError naming the file when it is not a dcinet-d2 config."""
    import torch

    from ..cli import load_config

    try:
        cfg = load_config(config_file, opts)
    except ValueError as e:
        raise UsageError(str(e)) from None
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return cfg


def query_model(index: GalleryIndex, index_dir: str, config_file: Optional[str] = None,
                weights: Optional[str] = None, device: Optional[str] = None):
    """The predictor of an index's model (its config.yaml and weights), or of the one given, checked against
    the index's fingerprint (the weights are read once: hashed as they are loaded)."""
    from .fingerprint import model_fingerprint, same_model
    from .predictor import PersonSearchPredictor

    model = index.model or {}
    config = config_file or os.path.join(index_dir, "config.yaml")
    weights = weights or model.get("weights")
    if not weights or not os.path.isfile(weights):
        raise UsageError(f"{weights}: the index's weights file is not found; give it with --weights")
    cfg = model_config(config, weights, device)
    if int(cfg.MODEL.REID.EMBED_DIM) != index.dim:
        raise UsageError(f"{index_dir}: index embeddings have dimension {index.dim}, the model "
                         f"({config}) makes {cfg.MODEL.REID.EMBED_DIM}")
    predictor = PersonSearchPredictor(cfg)
    if not same_model(model, model_fingerprint(cfg, predictor.weights_sha256)):
        raise UsageError(f"{index_dir}: the index was built by another model than {config} + {weights} (config "
                         "or weights differ): similarities between them mean nothing; index again with this model")
    return predictor


def open_search(index_dir: str, config_file: Optional[str] = None, weights: Optional[str] = None,
                device: Optional[str] = None):
    """(index, predictor): the index folder read (nothing in it is written) and its model loaded once.
    FileNotFoundError / ValueError naming the file for a missing or corrupt index."""
    index = GalleryIndex.load(index_dir)
    return index, query_model(index, index_dir, config_file, weights, device)


def answer_query(index: GalleryIndex, predictor, image, box: Sequence[float], image_name: str, top_k: int = 10,
                 det_thresh: Optional[float] = None, one_per_image: bool = False,
                 approximate: Optional[bool] = None, exclude_images: Sequence[str] = (),
                 cameras: Optional[Sequence[str]] = None, since: Optional[float] = None,
                 until: Optional[float] = None) -> dict:
    """The ranked hits of the person in ``box`` (XYXY, original pixels) of ``image`` (BGR uint8), in the JSON
    contract of ``dcinet-search query --json``; ``image_name`` is how the answer names the query image;
    ``cameras``, ``since`` and ``until`` (POSIX seconds) filter inside the search (GalleryIndex.search).
    UsageError for a bad top-k or threshold, ValueError (from the predictor) for a bad box."""
    check_threshold(det_thresh)
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: expected a positive number of hits")
    box = [float(v) for v in box]
    query = predictor.embed(image, [box]).numpy()
    hits = index.search(query, top_k, det_thresh=det_thresh, one_per_image=one_per_image,
                        approximate=approximate, exclude_images=exclude_images, cameras=cameras or None,
                        since=since, until=until)[0]
    return {"query": {"image": image_name, "box": box}, "hits": [h.to_dict() for h in hits],
            "appearances": appearances(index, hits)}


def appearances(index: GalleryIndex, hits, max_skip: int = APPEARANCE_MAX_SKIP) -> list:
    """The hits of video frames merged, per video, into appearances: runs of hits with at most ``max_skip``
    indexed frames of that video between neighbours (so the rule holds whatever rate it was indexed at).
    Best first (by the best rank in each); still images are left out.

    Returns:
        dicts with ``camera``, ``image`` (the video), ``first_frame``, ``last_frame``, ``start`` and ``end``
        (ISO 8601 times, None when unknown), ``ranks`` (the hits' ranks, in frame order), ``best_rank`` and
        its ``similarity``.
    """
    by_video = {}
    for hit in hits:
        if hit.frame is not None:
            by_video.setdefault(hit.image, []).append((index.image_id(hit.image, hit.frame), hit))
    runs = []
    for found in by_video.values():
        found.sort(key=lambda pair: pair[0])
        run = [found[0]]
        for pair in found[1:]:
            if pair[0] - run[-1][0] <= max_skip + 1:
                run.append(pair)
            else:
                runs.append(run)
                run = [pair]
        runs.append(run)
    out = []
    for run in runs:
        first, last = run[0][1], run[-1][1]
        best = min((hit for _, hit in run), key=lambda hit: hit.rank)
        out.append({"camera": first.camera, "image": first.image, "first_frame": first.frame,
                    "last_frame": last.frame, "start": first.time, "end": last.time,
                    "ranks": [hit.rank for _, hit in run], "best_rank": best.rank, "similarity": best.similarity})
    return sorted(out, key=lambda a: a["best_rank"])

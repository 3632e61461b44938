"""The results file of offline evaluation (ARCHITECTURE.md "Results file"): saving, loading, validation.

``torch.load(path, weights_only=True)`` gives::

    {"gallery": {image_base_name: {"boxes": FloatTensor[N, 4] (XYXY abs px), "scores": FloatTensor[N],
                                   "embeddings": FloatTensor[N, D]}},
     "queries": FloatTensor[Q, D]}

Other top-level keys are kept and ignored. Evaluation (:func:`gallery_detections`) refuses boxes with
x2 < x1 or y2 < y1 (XYWH boxes written as XYXY would otherwise score 0 everywhere) and L2-normalises
embeddings that are not of unit length, with one warning (the protocol's similarity is a dot product).
"""
import logging
import os
import warnings

import numpy as np
import torch

from ..fileio import atomic_open
from .protocol import GalleryDetections

logger = logging.getLogger(__name__)

__all__ = ["save_results", "load_results", "validate_results", "gallery_detections"]

_FIELDS = ("boxes", "scores", "embeddings")
_NORM_TOLERANCE = 1e-3  # as the gallery index's (dcinet_d2/search/index.py)


def _as_tensor(value, where, source, check_finite=True):
    """A CPU float32 tensor (numpy arrays and other float dtypes are converted; tensors already so are kept)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{source}: {where} is a {type(value).__name__}, expected a tensor")
    if value.dtype != torch.float32 or value.device.type != "cpu" or value.requires_grad:
        if not (value.is_floating_point() or value.numel() == 0):
            raise ValueError(f"{source}: {where} has dtype {value.dtype}, expected a float tensor")
        value = value.detach().to("cpu", torch.float32)
    if check_finite and not torch.isfinite(value).all():
        raise ValueError(f"{source}: {where} holds NaN or infinite values")
    return value


def _check_finite(gallery, source):
    """One pass per field over all images (per-image checks cost more than the data)."""
    for key in _FIELDS:
        values = [e[key] for e in gallery.values()]
        if values and not torch.isfinite(torch.cat(values)).all():
            name = next(n for n, e in gallery.items() if not torch.isfinite(e[key]).all())
            raise ValueError(f"{source}: gallery['{name}']['{key}'] holds NaN or infinite values")


def _check_image(name, entry, dim, source):
    if not isinstance(name, str):
        raise ValueError(f"{source}: gallery key {name!r} is not an image name (str)")
    if not isinstance(entry, dict) or any(k not in entry for k in _FIELDS):
        raise ValueError(f"{source}: gallery['{name}'] must be a dict with keys {list(_FIELDS)}")
    boxes, scores, emb = (_as_tensor(entry[k], f"gallery['{name}']['{k}']", source, check_finite=False)
                          for k in _FIELDS)
    n = scores.numel()
    if n == 0 and boxes.numel() == 0 and emb.numel() == 0:  # an image without detections: any empty shape
        return {"boxes": boxes.reshape(0, 4), "scores": scores.reshape(0), "embeddings": emb.reshape(0, dim)}
    if scores.shape != (n,) or boxes.shape != (n, 4) or emb.shape != (n, emb.shape[-1]):
        raise ValueError(f"{source}: gallery['{name}']: boxes {tuple(boxes.shape)}, scores {tuple(scores.shape)}, "
                         f"embeddings {tuple(emb.shape)}: expected [N, 4], [N], [N, D]")
    if emb.shape[1] != dim:
        raise ValueError(f"{source}: gallery['{name}']: embeddings of dimension {emb.shape[1]}, but the "
                         f"queries have dimension {dim}")
    return {"boxes": boxes, "scores": scores, "embeddings": emb}


def validate_results(results, source="results", check_finite=True):
    """Check a results dict and return it with CPU float32 tensors (numpy arrays are accepted).

    Args:
        results (dict): see the module docstring.
        source (str): names the data in error messages (the file path).
        check_finite (bool): also check the gallery values for NaN (:func:`gallery_detections` checks them
            too, faster, so evaluation skips it here).
    Raises:
        ValueError: naming ``source`` and the problem (missing keys, wrong shapes or dimensions, NaN).
    """
    if not isinstance(results, dict) or "gallery" not in results or "queries" not in results:
        keys = sorted(map(str, results)) if isinstance(results, dict) else type(results).__name__
        raise ValueError(f"{source}: not a results file: expected a dict with 'gallery' and 'queries' "
                         f"(got {keys})")
    queries = _as_tensor(results["queries"], "queries", source)
    if queries.dim() != 2:
        raise ValueError(f"{source}: queries has shape {tuple(queries.shape)}, expected [Q, D]")
    if not isinstance(results["gallery"], dict):
        raise ValueError(f"{source}: gallery is a {type(results['gallery']).__name__}, expected a dict "
                         "image name -> {boxes, scores, embeddings}")
    dim = queries.shape[1]
    gallery = {name: _check_image(name, entry, dim, source) for name, entry in results["gallery"].items()}
    if check_finite:
        _check_finite(gallery, source)
    return {**results, "gallery": gallery, "queries": queries}


def save_results(path, results):
    """Validate and write ``results`` to ``path`` atomically (a temporary file in the folder, then rename)."""
    results = validate_results(results, source=str(path))
    with atomic_open(path, "wb") as f:
        torch.save(results, f)
    logger.info("wrote search results of %d gallery images and %d queries to %s", len(results["gallery"]),
                len(results["queries"]), path)


def load_results(path, check_finite=True):
    """Read and validate a results file (``torch.load(..., weights_only=True)``; see :func:`validate_results`).

    Raises:
        FileNotFoundError: no such file. ValueError: not a results file (the message names the file).
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a folder, expected a results file (torch.save of the results dict)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: results file not found")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file (0 bytes), expected a results file")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before it refuses them
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types (pickle, zip, unpickling errors) for foreign files
        raise ValueError(f"{path}: not a results file readable with torch.load(weights_only=True): "
                         f"{type(e).__name__}: {_first_sentence(e)}{_pickle_hint(path)}") from None
    return validate_results(data, source=str(path), check_finite=check_finite)


def _first_sentence(error):
    """The first sentence of an exception's message (torch appends paragraphs of advice)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text.split(". ")[0].rstrip(".")


def _pickle_hint(path):
    """A hint when a file is a plain pickle (pickle.dump) rather than a torch.save file."""
    with open(path, "rb") as f:
        head = f.read(2)
    return " (a plain pickle file? write it with torch.save or save_results)" if head[:1] == b"\x80" else ""


def gallery_detections(results, image_names, source="results"):
    """The gallery of a validated results dict as :class:`GalleryDetections` over ``image_names``.

    Gallery images absent from the results have no detection (one warning with their count); results of
    images outside ``image_names`` are ignored (one warning). ValueError if none of the images is present,
    if a value is NaN or infinite (naming the image) or if a box has x2 < x1 or y2 < y1 (boxes must be XYXY:
    XYWH boxes would silently score 0). Gallery and query embeddings whose L2 norm differs from 1 by more
    than 1e-3 are normalised, with one warning each naming ``source`` (all-zero rows stay zero): the
    protocol ranks by dot product, which is the cosine only for unit vectors.

    Returns:
        (GalleryDetections, np.ndarray[Q, D] float32 query embeddings)
    """
    gallery = results["gallery"]
    queries = results["queries"].numpy()
    present = [n for n in image_names if n in gallery]
    if image_names and not present:
        raise ValueError(f"{source}: none of the {len(image_names)} gallery images has results (e.g. "
                         f"{image_names[0]!r}; results hold e.g. {next(iter(gallery), None)!r}): wrong dataset?")
    missing = len(image_names) - len(present)
    if missing:
        example = next(n for n in image_names if n not in gallery)
        logger.warning("%s: %d of %d gallery images have no results (e.g. %s): counted without detections",
                       source, missing, len(image_names), example)
    extra = len(set(gallery) - set(image_names))
    if extra:
        logger.warning("%s: %d images of the results are not gallery images of this dataset: ignored", source, extra)
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "embeddings": np.zeros((0, queries.shape[1]), np.float32)}
    entries = [gallery.get(n) for n in image_names]
    counts = np.fromiter((0 if e is None else len(e["scores"]) for e in entries), dtype=np.int64,
                         count=len(entries))
    cat = lambda key: np.concatenate([empty[key]] + [e[key].numpy() for e in entries if e is not None])  # noqa: E731
    boxes, scores, embeddings = cat("boxes"), cat("scores"), cat("embeddings")
    image_index = np.repeat(np.arange(len(image_names)), counts)
    for key, values in (("boxes", boxes), ("scores", scores), ("embeddings", embeddings)):
        # One row per detection (an explicit width: -1 cannot be inferred when there is no detection at all).
        bad = ~np.isfinite(values).reshape(len(values), int(np.prod(values.shape[1:]))).all(axis=1)
        if bad.any():
            name = image_names[image_index[np.argmax(bad)]]
            raise ValueError(f"{source}: gallery['{name}']['{key}'] holds NaN or infinite values")
    _check_xyxy(boxes, lambda row: image_names[image_index[row]], source)
    embeddings = _unit_rows(embeddings, "gallery embeddings", source)
    queries = _unit_rows(queries, "query embeddings", source)
    dets = GalleryDetections(boxes=boxes, scores=scores, embeddings=embeddings, image_index=image_index,
                             num_images=len(image_names))
    return dets, queries


def _check_xyxy(boxes, image_of_row, source):
    """ValueError naming the first image with a box of x2 < x1 or y2 < y1 (e.g. XYWH boxes)."""
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        row = int(np.argmax(bad))
        box = [round(float(v), 2) for v in boxes[row]]
        raise ValueError(f"{source}: {int(bad.sum())} of {len(boxes)} gallery boxes have x2 < x1 or y2 < y1 (e.g. "
                         f"gallery['{image_of_row(row)}']['boxes'] {box}): expected XYXY absolute pixels (were "
                         "XYWH boxes written?)")


def _unit_rows(values, what, source):
    """``values`` [N, D] with every non-zero row scaled to unit L2 norm; one warning if any was not."""
    norms = np.linalg.norm(values, axis=1)
    off = np.abs(norms - 1) > _NORM_TOLERANCE
    if not off.any():
        return values
    logger.warning("%s: %d of %d %s are not L2-normalised (norms %.3g to %.3g): normalised (the similarity is "
                   "a dot product)", source, int(off.sum()), len(values), what, float(norms[off].min()),
                   float(norms[off].max()))
    return (values / np.where(norms > 0, norms, 1)[:, None]).astype(np.float32)

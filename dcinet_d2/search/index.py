"""GalleryIndex: the detections of a gallery (image, frame, box, score, embedding) and search over them.

On disk an index is a folder (safe formats only, every file written atomically):

    manifest.json          format version, embedding dimension, counts, detection threshold, gallery root,
                           model fingerprint (config hash, weights checksum), search structure
    config.yaml            the model's config (``dcinet-search query`` rebuilds the model from it)
    parts/*.npz            rows, written as they are computed (numpy arrays, no pickle): ``images`` (U),
                           ``frames`` (int64, -1 = still image), ``cameras`` (U, "" = unknown) and ``times``
                           (float64 POSIX seconds, NaN = unknown) per image (parts written before them load
                           as unknown), ``entry_image`` (int64 row -> image),
                           ``boxes`` (float32 [N, 4], XYXY original pixels), ``scores`` (float32 [N]),
                           ``embeddings`` (float32 [N, D], L2-normalised)
    search.faiss           the faiss structure over all rows in canonical order (rebuilt when out of date)
    camera_graphs/*.faiss  with an HNSW structure: an HNSW graph per camera of more than 5,760 boxes and fewer
                           than all, over its rows, for camera filters (filtered.py; rebuilt on use when stale)
    time_graphs/*.faiss    likewise, an HNSW graph per slice of the time axis (the rows of known time in time
    shifted_time_graphs/   order, cut every filtered.TIME_SLICE_ROWS; and cut half a slice later), for time spans;
    wide_time_graphs/      the same with slices twice as long (filtered.TIME_PARTITIONS)
    shifted_wide_time_graphs/

Loading reads the per-image lists; the row arrays (boxes, scores, embeddings) of the parts are memory-mapped
(np.savez stores them uncompressed), so a compacted index of millions of boxes with a compressed (IVF-PQ)
structure searches without reading its embeddings (compressed.py).

A part lands whole or not at all (temporary file, then rename), so a build killed at any moment keeps every
finished part, and the next build skips their images. An image found in two parts (a kill between a
compaction's write and its deletes, or two shards given the same image) is kept once.
"""
import collections
import dataclasses
import datetime
import functools
import glob
import math
import hashlib
import json
import logging
import os
import struct
import uuid
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..fileio import atomic_open, write_json
from . import compressed, filtered
from .compressed import CompressedSearch
from .filtered import PartitionGraphs

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "APPROX_MIN_BOXES", "INDEX_TYPES", "Hit", "GalleryIndex", "image_label", "read_manifest",
           "iso_time"]

FORMAT_VERSION = 1
# At and above this many boxes the index searches an HNSW graph instead of exact flat search: flat search
# reads every embedding per query (13 ms at 100k boxes, 120 ms at 1M on 2 cores), HNSW stays near 1 ms
# (BENCHMARKS.md "Gallery search"; IVF was measured too and missed recall@10 0.95 on clustered data).
APPROX_MIN_BOXES = 100_000
# HNSW: links per node, construction and search breadth (recall@10 >= 0.95 against exact at 1M, BENCHMARKS.md).
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64
# Filtered queries: the strategy and its constants are in filtered.py. A reviewer issues many queries with one
# filter: the row mask and search of the last FILTER_CACHE_SIZE filters are kept (a filter's first query pays
# its mask: 0.1 to 0.3 ms at 100k boxes, more with camera graphs, BENCHMARKS.md "Filtered search").
FILTER_CACHE_SIZE = 4
# The partitions of the rows with a graph per part (filtered.PartitionGraphs): name -> folder (and manifest key).
def _time_words(name: str) -> List[str]:
    """The words that tell time partition ``name`` (filtered.TIME_PARTITIONS) from the plain slices."""
    size, shifted = filtered.TIME_PARTITIONS[name]
    return ["shifted"] * shifted + ["wide"] * (size > 1)


GRAPH_FOLDERS = {"cameras": "camera_graphs",  # time_graphs, shifted_time_graphs, wide_..., shifted_wide_...
                 **{name: "_".join(_time_words(name) + ["time_graphs"]) for name in filtered.TIME_PARTITIONS}}
_NORM_TOLERANCE = 1e-3
# Search structures: exact, graph (all embeddings in memory), compressed (codes in memory, embeddings on disk).
INDEX_TYPES = ("flat", "hnsw", "ivfpq")


def image_label(image: str, frame: Optional[int]) -> str:
    """How a gallery image is named to people: ``image``, or ``image#frame`` for a video frame. Index keys
    and GalleryItems hold a still image's frame as -1 (numpy int arrays on disk), a Hit as None (JSON null);
    both are taken here."""
    return image if frame is None or frame < 0 else f"{image}#{frame}"


def iso_time(seconds: Optional[float]) -> Optional[str]:
    """POSIX seconds as ISO 8601 UTC (``2026-01-02T03:04:05Z``, milliseconds when not whole); None for
    unknown (None or NaN)."""
    if seconds is None or not math.isfinite(seconds):
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


@dataclasses.dataclass
class Hit:
    rank: int  # 1-based
    image: str  # path relative to the gallery root
    frame: Optional[int]  # video frame number, None for a still image
    box: List[float]  # XYXY, original pixels
    score: float  # detection score
    similarity: float  # cosine similarity to the query
    camera: Optional[str] = None  # the image's camera (source), None when unknown
    time: Optional[str] = None  # when it was taken, ISO 8601 UTC, None when unknown

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        return image_label(self.image, self.frame)


@dataclasses.dataclass
class _Filter:
    """The rows one filter keeps, and what searching them takes (kept for the filter's next queries)."""
    keep: np.ndarray  # bool [N]
    num_rows: int  # rows kept
    runs: Dict[str, "filtered.Search"] = dataclasses.field(default_factory=dict)  # search kind -> search
    _num_images: Optional[int] = None

    def num_images(self, index) -> int:
        """Images with a kept row."""
        if self._num_images is None:
            self._num_images = len(np.unique(index.entry_image[self.keep]))
        return self._num_images


def _digest(keys: Sequence[Tuple[str, int]], num_boxes: int) -> str:
    h = hashlib.sha256(f"{num_boxes}\n".encode())
    for image, frame in keys:
        h.update(f"{image}\0{frame}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class GalleryIndex:
    """Rows of detections, grouped by image, and nearest-neighbour search by inner product.

    Args:
        dim (int): embedding dimension D.
        det_thresh (float): the detection threshold the rows were kept with (query-time thresholds below it
            have nothing more to find).
        gallery_root (str): folder the image paths are relative to.
        model (dict): fingerprint of the model that made the embeddings (``config_sha256``, ``weights_sha256``,
            ``weights``), compared before rows from another model are mixed in or queried.
    """

    def __init__(self, dim: int, det_thresh: float = 0.0, gallery_root: str = "", model: Optional[Dict] = None):
        self.dim, self.det_thresh, self.gallery_root, self.model = int(dim), float(det_thresh), gallery_root, model
        self.path = None  # folder this index was loaded from or saved to
        self.images: List[Tuple[str, int]] = []
        self.cameras: List[str] = []  # per image, "" = unknown
        self.times: List[float] = []  # per image, POSIX seconds, NaN = unknown
        self._image_ids: Dict[Tuple[str, int], int] = {}
        # Rows are kept as lists of per-image chunks, joined on first use (adding image by image stays linear).
        self._chunks = {"entry_image": [np.zeros(0, np.int64)], "boxes": [np.zeros((0, 4), np.float32)],
                        "scores": [np.zeros(0, np.float32)], "embeddings": [np.zeros((0, self.dim), np.float32)]}
        self._pending = []  # image ids added since the last save
        self._search, self.search_kind = None, None
        self.index_type = None  # one of INDEX_TYPES, or None: chosen by size (search_structure)
        self._search_file = {}  # kind and row digest of the structure in search.faiss under self.path ({}: none)
        self.rerank = compressed.IVFPQ_RERANK  # ivfpq: candidates a hit re-scored exactly (0: off)
        self._place_time = None  # (camera names U [C], camera codes [num_images], times, path -> image ids)
        self._filters = collections.OrderedDict()  # filter key -> _Filter, least recently used first
        self._graphs = {}  # partition name -> filtered.PartitionGraphs, made on first use
        self._graph_files = {}  # partition name -> digest and files of its folder under self.path (absent: none)

    # ------------------------------------------------------------------ rows
    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_boxes(self) -> int:
        return sum(len(c) for c in self._chunks["scores"])

    def __contains__(self, key) -> bool:
        return tuple(key) in self._image_ids

    def image_id(self, image: str, frame: Optional[int]) -> int:
        """The id (position in ``images``) of an image or video frame (None or -1: a still image); KeyError
        when the index does not hold it. After :meth:`sort` or :meth:`load` a video's frames have consecutive
        ids in frame order."""
        return self._image_ids[(image, -1 if frame is None else int(frame))]

    def add(self, image: str, frame: int, boxes, scores, embeddings, camera: Optional[str] = None,
            time: Optional[float] = None):
        """Add one image's detections (possibly none): boxes [n, 4] XYXY, scores [n], embeddings [n, D]
        L2-normalised; ``camera`` (source name) and ``time`` (POSIX seconds) when known. An image already in
        the index raises ValueError (an index never holds one twice)."""
        key = (str(image), int(frame))
        if key in self._image_ids:
            raise ValueError(f"{image} (frame {frame}) is already in the index")
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        embeddings = np.asarray(embeddings, np.float32).reshape(-1, self.dim) if len(scores) else \
            np.zeros((0, self.dim), np.float32)
        if not (len(boxes) == len(scores) == len(embeddings)):
            raise ValueError(f"{image}: {len(boxes)} boxes, {len(scores)} scores, {len(embeddings)} embeddings")
        for name, array in (("boxes", boxes), ("scores", scores), ("embeddings", embeddings)):
            if not np.isfinite(array).all():
                raise ValueError(f"{image}: {name} hold NaN or infinite values")
        if len(embeddings) and np.abs(np.linalg.norm(embeddings, axis=1) - 1).max() > _NORM_TOLERANCE:
            raise ValueError(f"{image}: embeddings are not L2-normalised (inner products would not be cosines)")
        self._append(key, boxes, scores, embeddings, camera or "", math.nan if time is None else float(time))
        self._pending.append(self._image_ids[key])

    def _append(self, key, boxes, scores, embeddings, camera="", time=math.nan):
        self._image_ids[key] = len(self.images)
        self.images.append(key)
        self.cameras.append(str(camera))
        self.times.append(float(time))
        self._rows_changed()
        for name, value in (("entry_image", np.full(len(scores), self._image_ids[key])), ("boxes", boxes),
                            ("scores", scores), ("embeddings", embeddings)):
            self._chunks[name].append(value)
        self._search = None

    @classmethod
    def from_rows(cls, dim: int, images: Sequence[Tuple[str, int]], entry_image, boxes, scores, embeddings,
                  cameras: Optional[Sequence[str]] = None, times: Optional[Sequence[float]] = None,
                  **kwargs) -> "GalleryIndex":
        """An index of many images at once, its row arrays kept as given (memory-mapped ones stay on disk).

        Args:
            images: (image, frame) keys in canonical order (sorted, each once).
            entry_image: int [N] row -> position in ``images``, non-decreasing; boxes [N, 4], scores [N],
                embeddings [N, D] float32 L2-normalised (not checked: rows come from a saved index or a
                benchmark).
            cameras, times: per image (default unknown); kwargs: as the constructor.
        """
        index = cls(dim, **kwargs)
        index.images = [(str(image), int(frame)) for image, frame in images]
        index._image_ids = {key: i for i, key in enumerate(index.images)}
        index.cameras = [str(c) for c in cameras] if cameras is not None else [""] * len(index.images)
        index.times = [float(t) for t in times] if times is not None else [math.nan] * len(index.images)
        index._chunks = {"entry_image": [entry_image], "boxes": [boxes], "scores": [scores],
                         "embeddings": [embeddings]}
        return index

    def _rows(self, name):
        chunks = self._chunks[name]
        if len(chunks) > 1:
            chunks[:] = [np.concatenate(chunks)]
        return chunks[0]

    entry_image = property(lambda self: self._rows("entry_image"), doc="int64 [N]: row -> image id")
    boxes = property(lambda self: self._rows("boxes"), doc="float32 [N, 4]: XYXY, original pixels")
    scores = property(lambda self: self._rows("scores"), doc="float32 [N]: detection scores")
    embeddings = property(lambda self: self._rows("embeddings"), doc="float32 [N, D]: L2-normalised")

    def sort(self) -> "GalleryIndex":
        """Put the images, and their rows, in canonical order (by path, then frame; each image's rows in
        detection order), the order :meth:`load` gives: a compacted part and ``search.faiss`` are written in
        it. Returns ``self``."""
        order = sorted(range(self.num_images), key=self.images.__getitem__)
        if order == list(range(self.num_images)):
            return self
        new_id = np.empty(self.num_images, np.int64)
        new_id[order] = np.arange(self.num_images)
        entry = new_id[self.entry_image]
        rows = np.argsort(entry, kind="stable")
        chunks = {"entry_image": [entry[rows]], "boxes": [self.boxes[rows]], "scores": [self.scores[rows]],
                  "embeddings": [self.embeddings[rows]]}
        self.images = [self.images[i] for i in order]
        self.cameras = [self.cameras[i] for i in order]
        self.times = [self.times[i] for i in order]
        self._image_ids = {key: i for i, key in enumerate(self.images)}
        self._chunks = chunks
        self._pending = [int(new_id[i]) for i in self._pending]
        self._search, self.search_kind = None, None
        self._rows_changed()
        return self

    def _rows_changed(self):
        """Forget what was derived from the rows (filters, partition graphs; the search structure is reset by
        the callers)."""
        self._place_time, self._graphs = None, {}
        self._filters.clear()

    # ------------------------------------------------------------------ search
    def default_index_type(self) -> str:
        """``index_type`` when set, otherwise by size: flat below APPROX_MIN_BOXES rows, HNSW below
        compressed.COMPRESSED_MIN_BOXES, IVF-PQ from there."""
        if self.index_type is not None:
            return self.index_type
        n = self.num_boxes
        return "ivfpq" if n >= compressed.COMPRESSED_MIN_BOXES else "hnsw" if n >= APPROX_MIN_BOXES else "flat"

    def search_structure(self, approximate: Optional[bool] = None):
        """The faiss structure searched (built on first use): the default index type when ``approximate`` is
        None, exact flat search when False, the default's approximate kind (HNSW for a flat one) when True."""
        default = self.default_index_type()
        want = default if approximate is None else ("flat" if not approximate else
                                                    "hnsw" if default == "flat" else default)
        want = want if self.num_boxes > 0 else "flat"
        if self._search is None or self.search_kind != want:
            self._search, self.search_kind = build_faiss(self.embeddings, want), want
        if isinstance(self._search, CompressedSearch):
            self._search.rerank = self.rerank
        return self._search

    def search(self, queries, top_k: int = 10, det_thresh: Optional[float] = None, one_per_image: bool = False,
               approximate: Optional[bool] = None, exclude_images: Sequence[str] = (),
               cameras: Optional[Sequence[str]] = None, since: Optional[float] = None,
               until: Optional[float] = None) -> List[List[Hit]]:
        """The ``top_k`` rows most similar to each query, in decreasing similarity.

        Args:
            queries: [q, D] or [D] L2-normalised embeddings.
            det_thresh: only rows with a detection score >= this (default: all rows of the index).
            one_per_image: keep only the most similar row of each image (and frame).
            approximate: None = HNSW at and above APPROX_MIN_BOXES rows, exact flat search below; or forced.
            exclude_images: gallery image paths (relative to the root) whose rows are left out, e.g. the
                query's own image.
            cameras: only images of these cameras (None: any camera, unknown included).
            since, until: only images taken at or after / at or before these POSIX seconds (images of unknown
                time are left out when either is given).
        Returns:
            one list of :class:`Hit` per query (shorter than ``top_k`` when fewer rows qualify).
        """
        queries = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        if top_k < 1:
            raise ValueError(f"top-k {top_k}: expected a positive number of hits")
        if not np.isfinite(queries).all():
            raise ValueError("query embeddings hold NaN or infinite values")
        # The filters' rows (None: no filters; at 10M boxes making and counting an all-true mask costs 8 ms a
        # query), kept for the next queries with the same filters.
        chosen = self._filter(det_thresh, exclude_images, cameras, since, until)
        keep = None if chosen is None else chosen.keep
        if one_per_image:
            wanted = min(top_k, len(np.unique(self.entry_image)) if chosen is None else chosen.num_images(self))
        else:
            wanted = min(top_k, self.num_boxes if chosen is None else chosen.num_rows)
        if wanted == 0:
            return [[] for _ in queries]
        structure = self.search_structure(approximate)
        # The filters act inside the search, so k rows that pass come back at once.
        if chosen is None or chosen.num_rows == self.num_boxes:
            run = structure.search
        else:
            if self.search_kind not in chosen.runs:
                chosen.runs[self.search_kind] = self._filtered_search(structure, chosen.keep, chosen.num_rows)
            run = chosen.runs[self.search_kind]
        # One hit per image drops rows after the search: widen k until enough images come (or all rows).
        k = min(self.num_boxes, max(wanted * 4, 32) if one_per_image else wanted)
        while True:
            sims, ids = run(queries, k)
            hits = [self._hits(s, i, keep, one_per_image, wanted) for s, i in zip(sims, ids)]
            if all(len(h) >= wanted for h in hits) or k >= self.num_boxes:
                return hits
            k = min(self.num_boxes, max(k * 4, 32))

    def _filter(self, det_thresh, exclude_images, cameras, since, until) -> Optional["_Filter"]:
        """The rows passing the filters (None when there are none), from the FILTER_CACHE_SIZE last used."""
        key = (None if det_thresh is None else float(det_thresh), tuple(sorted(set(map(str, exclude_images)))),
               None if cameras is None else tuple(sorted(set(map(str, cameras)))),
               None if since is None else float(since), None if until is None else float(until))
        if key in self._filters:
            self._filters.move_to_end(key)
            return self._filters[key]
        keep = None if det_thresh is None else self.scores >= det_thresh
        images = self._image_filter(exclude_images, cameras, since, until)
        if images is not None:
            keep = images[self.entry_image] if keep is None else keep & images[self.entry_image]
        if keep is None:
            return None
        self._filters[key] = _Filter(keep, int(np.count_nonzero(keep)))
        while len(self._filters) > FILTER_CACHE_SIZE:
            self._filters.popitem(last=False)
        return self._filters[key]

    def _filtered_search(self, structure, keep: np.ndarray, num_rows: int) -> filtered.Search:
        """A search over the ``num_rows`` rows ``keep`` (bool [N]) selects (filtered.filtered_search)."""
        partitions = {name: functools.partial(self.partition_graphs, name) for name in GRAPH_FOLDERS}
        return filtered.filtered_search(structure, self.embeddings, keep, num_rows, HNSW_EF_SEARCH, partitions)

    def partition_graphs(self, name: str) -> PartitionGraphs:
        """The HNSW graphs of partition ``name`` (GRAPH_FOLDERS: "cameras", one a camera; the time partitions
        of filtered.TIME_PARTITIONS, one a time slice, filtered.time_slices): read from this index's folder when
        saved for these rows, else built on first use (in memory; :meth:`save` with ``search_file`` writes
        them)."""
        if name not in self._graphs:
            names, codes, times, _ = self._places()
            build = lambda embeddings: build_faiss(embeddings, "hnsw")  # noqa: E731
            if name == "cameras":
                graphs = PartitionGraphs(self.embeddings, codes[self.entry_image], list(names), build)
            else:
                size, shifted = filtered.TIME_PARTITIONS[name]
                parts = filtered.time_slices(times[self.entry_image], shifted, size * filtered.TIME_SLICE_ROWS)
                graphs = PartitionGraphs(self.embeddings, parts, [str(j) for j in range(parts.max(initial=-1) + 1)],
                                         build, " ".join(_time_words(name) + ["time slice"]))
            saved = self._graph_files.get(name)
            if saved and self.path is not None and saved.get("digest") == self._partition_digest(name):
                graphs.use_files(os.path.join(self.path, GRAPH_FOLDERS[name]), saved["files"])
            elif saved:
                logger.info("%s: the %s are older than the rows; rebuilt when needed", self.path,
                            GRAPH_FOLDERS[name].replace("_", " "))
            self._graphs[name] = graphs
        return self._graphs[name]

    def _partition_digest(self, name: str) -> str:
        """Digest of the rows and what partition ``name``'s graphs are built from: the cameras of the images,
        or their times and the slice size."""
        h = hashlib.sha256(_digest(self.images, self.num_boxes).encode())
        if name == "cameras":
            h.update("\0".join(self.cameras).encode("utf-8", "surrogateescape"))
        else:
            h.update(f"{filtered.TIME_SLICE_ROWS}\n".encode())
            h.update(np.asarray(self.times, np.float64).tobytes())
        return h.hexdigest()

    def _places(self):
        """(camera names U [C], camera code per image int [num_images], times float64 [num_images],
        image path -> image ids), built once: per query, string compares over every image cost ~0.5 ms."""
        if self._place_time is None:
            names, codes = np.unique(np.array(self.cameras, dtype=np.str_).reshape(-1), return_inverse=True)
            by_path = {}
            for i, (image, _) in enumerate(self.images):
                by_path.setdefault(image, []).append(i)
            self._place_time = (names, codes.reshape(-1), np.array(self.times, np.float64).reshape(-1), by_path)
        return self._place_time

    def _image_filter(self, exclude_images, cameras, since, until) -> Optional[np.ndarray]:
        """bool [num_images + 1] (the last for padding) of images passing the filters; None when all pass."""
        if not len(exclude_images) and cameras is None and since is None and until is None:
            return None
        names, codes, times, by_path = self._places()
        ok = np.ones(self.num_images + 1, bool)
        for image in exclude_images:
            ok[by_path.get(image, [])] = False
        if cameras is not None:
            ok[:-1] &= np.isin(names, np.array(list(cameras), dtype=np.str_))[codes]
        if since is not None or until is not None:
            with np.errstate(invalid="ignore"):
                ok[:-1] &= np.isfinite(times) & (times >= (-np.inf if since is None else since)) & \
                    (times <= (np.inf if until is None else until))
        return ok

    def _hits(self, sims, ids, keep, one_per_image, wanted) -> List[Hit]:
        """The hits of one query's search result (sims float32 [k], rows int64 [k]); rows gathered at once (a
        memmapped row read one at a time costs more than the search)."""
        ok = ids >= 0
        if keep is not None:
            ok &= keep[np.where(ok, ids, 0)]
        rows = ids[ok]
        hits, seen = [], set()
        for sim, img, box, score in zip(sims[ok].tolist(), self.entry_image[rows].tolist(),
                                        self.boxes[rows].tolist(), self.scores[rows].tolist()):
            if one_per_image and img in seen:
                continue
            seen.add(img)
            image, frame = self.images[img]
            hits.append(Hit(len(hits) + 1, image, None if frame < 0 else frame, [round(v, 2) for v in box],
                            score, sim, self.cameras[img] or None, iso_time(self.times[img])))
            if len(hits) == wanted:
                break
        return hits

    # ------------------------------------------------------------------ files
    def manifest(self) -> Dict:
        return {"format_version": FORMAT_VERSION, "embedding_dim": self.dim, "num_images": self.num_images,
                "num_boxes": self.num_boxes, "det_thresh": self.det_thresh, "gallery_root": self.gallery_root,
                "model": self.model, "index_type": self.index_type, "search": dict(self._search_file),
                **{folder: dict(self._graph_files.get(name, {})) for name, folder in GRAPH_FOLDERS.items()}}

    def save(self, path: str, compact: bool = False, search_file: bool = False):
        """Write the rows added since the last save as one new part, then the manifest.

        Args:
            compact: rewrite all rows as one part and delete the others (after a build).
            search_file: also write the faiss structure (``search.faiss``) for fast loading, and with an HNSW
                structure the per-camera and per-time-slice graphs that filters search (GRAPH_FOLDERS).
        """
        os.makedirs(os.path.join(path, "parts"), exist_ok=True)
        if self.path is not None and os.path.abspath(path) != os.path.abspath(self.path):
            compact = True  # a copy elsewhere: everything goes into that folder
            self._search_file, self._graph_files = {}, {}
        old_parts = _part_files(path)
        if compact:
            self._write_part(path, range(self.num_images), "all")
            self._pending = []
            for part in old_parts:
                os.remove(part)
        elif self._pending:
            self._write_part(path, self._pending, "p")
            self._pending = []
        if search_file and self.num_boxes:
            import faiss

            structure = self.search_structure(None)
            with atomic_open(os.path.join(path, "search.faiss"), "wb") as f:
                f.write(faiss.serialize_index(getattr(structure, "ivf", structure)).tobytes())
            # The manifest describes the structure in the file (not rows added after it was written).
            self._search_file = {"kind": self.search_kind, "digest": _digest(self.images, self.num_boxes)}
            for name in GRAPH_FOLDERS:
                self._save_partition_graphs(path, name)
        write_json(os.path.join(path, "manifest.json"), self.manifest())
        self.path = path

    def _save_partition_graphs(self, path, name):
        """Write the graphs of partition ``name`` of an HNSW index (built now where missing) unless ``path``
        holds them for these rows already."""
        graphs = self.partition_graphs(name) if self.search_kind == "hnsw" else None
        if graphs is None or not graphs.wanted():
            self._graph_files.pop(name, None)
            return
        digest = self._partition_digest(name)  # hashes every image key: only where graphs are kept
        if self._graph_files.get(name, {}).get("digest") != digest:  # (reset when saving a copy elsewhere)
            files = graphs.write(os.path.join(path, GRAPH_FOLDERS[name]))
            self._graph_files[name] = {"digest": digest, "files": files}

    def _write_part(self, path, image_ids, tag):
        image_ids = np.asarray(list(image_ids), np.int64)
        rows = np.flatnonzero(np.isin(self.entry_image, image_ids))
        # Every row: the arrays as they are (a memmap is streamed to the file, never read whole).
        take = (lambda a: a) if len(rows) == self.num_boxes else (lambda a: a[rows])
        remap = np.full(max(self.num_images, 1), -1, np.int64)
        remap[image_ids] = np.arange(len(image_ids))
        name = os.path.join(path, "parts", f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:12]}.npz")
        with atomic_open(name, "wb") as f:
            np.savez(f, images=np.array([self.images[i][0] for i in image_ids], dtype=np.str_),
                     frames=np.array([self.images[i][1] for i in image_ids], np.int64),
                     cameras=np.array([self.cameras[i] for i in image_ids], dtype=np.str_),
                     times=np.array([self.times[i] for i in image_ids], np.float64),
                     entry_image=remap[take(self.entry_image)], boxes=take(self.boxes),
                     scores=take(self.scores), embeddings=take(self.embeddings))

    @classmethod
    def load(cls, path: str) -> "GalleryIndex":
        """Read an index folder. FileNotFoundError / ValueError (naming the file) when it is missing or
        corrupt. Rows are put in canonical order (by image path, frame, then detection order). The row arrays
        of one compacted part (after a build) stay memory-mapped; several parts are joined in memory."""
        manifest = read_manifest(path)
        kwargs = {"det_thresh": manifest["det_thresh"], "gallery_root": manifest["gallery_root"],
                  "model": manifest["model"]}
        parts = [_read_part(p, manifest["embedding_dim"]) for p in _part_files(path)]
        if len(parts) == 1 and _canonical(parts[0]):
            part = parts[0]
            index = cls.from_rows(manifest["embedding_dim"], part["keys"], part["entry_image"], part["boxes"],
                                  part["scores"], part["embeddings"], part["cameras"], part["times"], **kwargs)
        else:
            index = cls(manifest["embedding_dim"], **kwargs)
            where = [_rows_by_image(part) for part in parts]
            for key in sorted({k for part in parts for k in part["keys"]}):
                # First part holding an image wins; parts hold the same rows for it anyway.
                part, (at, rows) = next((p, w[key]) for p, w in zip(parts, where) if key in w)
                index._append(key, part["boxes"][rows], part["scores"][rows], part["embeddings"][rows],
                              part["cameras"][at], part["times"][at])
        index.index_type = manifest.get("index_type")
        index.path = path
        index._load_search_file(path, manifest)
        for name, folder in GRAPH_FOLDERS.items():
            graphs = manifest.get(folder)
            if isinstance(graphs, dict) and isinstance(graphs.get("files"), dict):
                index._graph_files[name] = graphs  # read when a filter first needs them (partition_graphs())
        return index

    def _load_search_file(self, path, manifest):
        search = manifest.get("search") or {}
        file = os.path.join(path, "search.faiss")
        if search.get("kind") and os.path.isfile(file) and search.get("digest") == _digest(self.images,
                                                                                             self.num_boxes):
            import faiss

            try:
                structure = faiss.read_index(file)
            except RuntimeError:
                logger.warning("%s: unreadable faiss file; the search structure is rebuilt", file)
                return
            self._search = CompressedSearch(structure, self.embeddings, rerank=self.rerank) \
                if search["kind"] == "ivfpq" else structure
            self.search_kind = search["kind"]
            self._search_file = {"kind": search["kind"], "digest": search["digest"]}


def build_faiss(embeddings: np.ndarray, kind: str):
    """A faiss inner-product structure over ``embeddings`` [N, D]: "flat" (exact), "hnsw" (HNSW graph,
    HNSW_M links per node, searched with efSearch = HNSW_EF_SEARCH) or "ivfpq" (compressed.CompressedSearch:
    IVF-PQ codes, re-ranked from ``embeddings``, which it keeps and reads in chunks)."""
    import faiss

    dim = embeddings.shape[1]
    if kind == "ivfpq":
        return CompressedSearch(compressed.build_ivfpq(embeddings), embeddings)
    if kind == "flat":
        structure = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        structure = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        structure.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        structure.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"search structure {kind!r}: expected one of {', '.join(INDEX_TYPES)}")
    structure.add(np.ascontiguousarray(embeddings))
    return structure


def _part_files(path):
    return sorted(glob.glob(os.path.join(glob.escape(path), "parts", "*.npz")))


def read_manifest(path: str) -> Dict:
    """The manifest of an index folder, checked; FileNotFoundError / ValueError naming the file."""
    file = os.path.join(path, "manifest.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such index folder")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: not found: {path} is not a gallery index (dcinet-search index makes one)")
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ValueError(f"{file}: index format version {version!r}, this dcinet-d2 reads {FORMAT_VERSION}")
    for key, kind in (("embedding_dim", int), ("det_thresh", (int, float)), ("gallery_root", str)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{file}: missing or invalid {key!r}")
    if manifest.get("index_type") not in (None,) + INDEX_TYPES:
        raise ValueError(f"{file}: index_type {manifest['index_type']!r}, expected one of {', '.join(INDEX_TYPES)}")
    return manifest


_ROW_ARRAYS = ("entry_image", "boxes", "scores", "embeddings")


def _read_part(file, dim):
    """One part: its per-image arrays read, its row arrays memory-mapped (_npz_rows), its image ``keys``."""
    try:
        with np.load(file, allow_pickle=False) as z:
            part = {k: z[k] for k in ("images", "frames")}
            # Parts written before cameras and times were recorded: unknown.
            part["cameras"] = z["cameras"] if "cameras" in z.files else np.full(len(part["images"]), "")
            part["times"] = z["times"] if "times" in z.files else np.full(len(part["images"]), np.nan)
        part.update(_npz_rows(file, _ROW_ARRAYS))
    except Exception as e:  # noqa: BLE001 - numpy / zipfile raise many types for a damaged file
        raise ValueError(f"{file}: corrupt index part ({type(e).__name__}: {e}); delete it and index again "
                         "to recompute its images") from None
    n = len(part["scores"])
    if part["embeddings"].shape != (n, dim) or part["boxes"].shape != (n, 4) or len(part["entry_image"]) != n \
            or not len(part["images"]) == len(part["frames"]) == len(part["cameras"]) == len(part["times"]):
        raise ValueError(f"{file}: index part does not match the manifest (embedding dimension {dim}); delete it "
                         "and index again")
    part["keys"] = [(str(i), int(f)) for i, f in zip(part["images"], part["frames"])]
    return part


def _npz_rows(file, names) -> Dict[str, np.ndarray]:
    """Arrays of an .npz file as read-only memmaps: np.savez stores each uncompressed, after a zip local
    header and a .npy header. An array stored compressed, empty or in another .npy version is read whole."""
    out = {}
    with zipfile.ZipFile(file) as archive, open(file, "rb") as f:
        for name in names:
            info = archive.getinfo(name + ".npy")
            header = None
            if info.compress_type == zipfile.ZIP_STORED:
                f.seek(info.header_offset)
                local = f.read(30)  # zip local file header; name and extra-field lengths at bytes 26-29
                if local[:4] != b"PK\x03\x04":
                    raise ValueError(f"{name}: bad zip local header")
                f.seek(info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30])))
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
                header = read_header(f) if read_header else None
            if header is None or 0 in header[0] or header[2].hasobject:
                with archive.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
            else:
                shape, fortran, dtype = header
                out[name] = np.memmap(file, dtype, "r", f.tell(), shape, "F" if fortran else "C")
    return out


def _canonical(part) -> bool:
    """Whether a part's images are in canonical order, each once, and its rows grouped by image in that order
    (as a compacted part is): its arrays are then the index's rows as they are."""
    keys, entry = part["keys"], part["entry_image"]
    return all(a < b for a, b in zip(keys, keys[1:])) and (
        len(entry) == 0 or (entry[0] >= 0 and entry[-1] < len(keys) and bool(np.all(entry[1:] >= entry[:-1]))))


def _rows_by_image(part) -> Dict[Tuple[str, int], Tuple[int, np.ndarray]]:
    """key -> (the image's position in the part, its rows in detection order)."""
    order = np.argsort(part["entry_image"], kind="stable")
    bounds = np.searchsorted(part["entry_image"][order], np.arange(len(part["keys"]) + 1))
    return {key: (i, order[bounds[i]:bounds[i + 1]]) for i, key in enumerate(part["keys"])}

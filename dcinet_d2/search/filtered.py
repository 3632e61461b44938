"""Filtered search: the rows a query's filters keep (cameras, a time span, excluded images, a score threshold)
searched inside faiss, never over-fetched and dropped.

Three ways, the cheapest for the rows kept (BENCHMARKS.md "Filtered search", where the numbers behind each
constant are):

- exact over the kept rows alone (``faiss.knn_inner_products_by_idx``), when they are few: cost in proportion
  to the rows kept;
- per-camera HNSW graphs (:class:`CameraGraphs`), when the kept rows lie in few cameras of an HNSW index:
  each selected camera's own graph is searched (with an ID selector over its rows when other filters narrow
  it further) and the per-camera top k merged by similarity;
- the index's own structure with an ID selector, HNSW's efSearch widened as the share kept falls (its walk
  passes rows the selector rejects, and efSearch bounds the walk, not the hits found).

Every search here is ``(queries [q, D] float32, k) -> (similarities float32 [q, k], rows int64 [q, k])``,
best first, row -1 (similarity -inf) past the last match.
"""
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..fileio import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["FILTER_EXACT_MAX_ROWS", "FILTER_MAX_EF_SEARCH", "FILTER_EF_EXPONENT", "CAMERA_GRAPHS_MAX_SHARE",
           "CAMERA_EXACT_MAX_ROWS", "CAMERA_EF_SEARCH", "CameraGraphs", "exact_search", "selector_search",
           "widened_ef", "merge"]

Search = Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]

# At most this many kept rows: exact search over them (1.1 ms at 10,000 rows, D = 256, about an HNSW query).
FILTER_EXACT_MAX_ROWS = 10_000
# HNSW with a selector: efSearch = HNSW_EF_SEARCH / share kept ** FILTER_EF_EXPONENT, at most FILTER_MAX_EF_SEARCH.
FILTER_MAX_EF_SEARCH = 256
FILTER_EF_EXPONENT = 1.0
# Per-camera graphs are searched when the cameras holding kept rows hold at most this share of all rows
# (above it the graph searches add up to more than one walk of the whole graph with the selector).
CAMERA_GRAPHS_MAX_SHARE = 0.25
# A camera graph's efSearch (widened like the whole graph's when a selector narrows the camera): a filter's
# top k lies among rows far from the query (its own identity is often elsewhere), where a walk at the whole
# graph's efSearch 64 finds fewer of them (recall@10 0.93 at 100k boxes, 8 cameras).
CAMERA_EF_SEARCH = 128
# A selected camera keeping at most this many rows is searched exactly with the cameras that have no graph
# (an exact scan of 2,500 rows costs about one graph search).
CAMERA_EXACT_MAX_ROWS = 2_500


def widened_ef(ef_search: int, share: float) -> int:
    """HNSW efSearch for a walk whose selector keeps ``share`` (0, 1] of the graph's rows."""
    return int(min(FILTER_MAX_EF_SEARCH, max(ef_search, math.ceil(ef_search / share ** FILTER_EF_EXPONENT))))


def exact_search(embeddings: np.ndarray, rows: np.ndarray) -> Search:
    """Exact inner-product search over ``rows`` (int64 [n]) of ``embeddings`` [N, D] float32."""
    import faiss

    embeddings = np.ascontiguousarray(embeddings, np.float32)  # faiss reads the raw buffer
    rows = np.ascontiguousarray(rows, np.int64)
    dim = embeddings.shape[1]

    def run(queries, k):
        sims, ids = np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
        faiss.knn_inner_products_by_idx(  # every query against the same rows (their stride 0)
            faiss.swig_ptr(queries), faiss.swig_ptr(embeddings), faiss.swig_ptr(rows), dim,
            len(queries), len(embeddings), len(rows), k, faiss.swig_ptr(sims), faiss.swig_ptr(ids), 0)
        return sims, ids
    return run


def selector_search(structure, keep: np.ndarray, ef_search: int) -> Search:
    """``structure`` searched with a faiss ID selector over ``keep`` (bool [ntotal]); an HNSW graph with
    efSearch widened by the share kept (:func:`widened_ef`)."""
    import faiss

    bitmap = np.packbits(keep, bitorder="little")  # must outlive the search: the closure holds it
    selector = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bitmap))
    if isinstance(structure, faiss.IndexHNSW):
        ef = widened_ef(ef_search, max(int(np.count_nonzero(keep)), 1) / len(keep))
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
    else:
        params = faiss.SearchParameters(sel=selector)
    return lambda queries, k, bitmap=bitmap, selector=selector: structure.search(queries, k, params=params)


def merge(results: Sequence[Tuple[np.ndarray, np.ndarray]], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several searches' (sims [q, k_i], rows [q, k_i]) per query, best first."""
    sims = np.concatenate([s for s, _ in results], axis=1)
    ids = np.concatenate([i for _, i in results], axis=1)
    sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
    if sims.shape[1] < k:
        pad = k - sims.shape[1]
        sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, top, 1), np.take_along_axis(ids, top, 1)


class CameraGraphs:
    """One HNSW graph per camera holding more than FILTER_EXACT_MAX_ROWS rows, over that camera's rows.

    Args:
        embeddings: float32 [N, D], the index's rows.
        row_cameras: int [N], each row's camera code (position in ``names``).
        names: camera names [C] ("" = unknown).
        build: ``embeddings [n, D] -> faiss HNSW index`` (the index's own parameters).

    A graph holds its own copy of its camera's vectors (faiss HNSWFlat), so the graphs of every camera double
    the memory of the index's HNSW structure (BENCHMARKS.md gives the bytes a box).
    """

    def __init__(self, embeddings, row_cameras, names, build):
        self.embeddings, self.names, self._build = embeddings, [str(n) for n in names], build
        self.row_cameras = np.asarray(row_cameras, np.int64)
        order = np.argsort(self.row_cameras, kind="stable")
        bounds = np.searchsorted(self.row_cameras[order], np.arange(len(self.names) + 1))
        # rows[c]: int64 rows of camera c, ascending (a graph's ids are positions in it).
        self.rows = [order[bounds[c]:bounds[c + 1]].astype(np.int64) for c in range(len(self.names))]
        self.graphs: Dict[int, object] = {}
        self.files: Dict[int, str] = {}  # camera -> graph file to read on first use
        self.built = 0  # graphs built by this object (not read from a file)

    def wanted(self) -> List[int]:
        """Cameras that get a graph: those with more than FILTER_EXACT_MAX_ROWS rows, when there are >= 2."""
        if len(self.names) < 2:
            return []
        return [c for c, rows in enumerate(self.rows) if len(rows) > FILTER_EXACT_MAX_ROWS]

    def graph(self, camera: int):
        """Camera ``camera``'s graph, built on first use when not read from a file."""
        if camera not in self.graphs and camera in self.files:
            graph = self._read(camera)
            if graph is not None:
                self.graphs[camera] = graph
        if camera not in self.graphs:
            logger.info("building the search graph of camera %r (%d boxes)", self.names[camera],
                        len(self.rows[camera]))
            self.graphs[camera] = self._build(np.ascontiguousarray(self.embeddings[self.rows[camera]], np.float32))
            self.built += 1
        return self.graphs[camera]

    def plan(self, keep: np.ndarray) -> Optional[Search]:
        """A search over the rows ``keep`` (bool [N]) through the graphs of the cameras holding them, or None
        when those cameras hold more than CAMERA_GRAPHS_MAX_SHARE of the rows or none of them has a graph.
        Cameras without a graph, or keeping at most CAMERA_EXACT_MAX_ROWS rows, are searched exactly together."""
        kept = np.bincount(self.row_cameras[keep], minlength=len(self.names))
        touched = [c for c, n in enumerate(kept) if n]
        if sum(len(self.rows[c]) for c in touched) > CAMERA_GRAPHS_MAX_SHARE * len(keep):
            return None
        with_graph = set(self.wanted())
        graphed = [c for c in touched if c in with_graph and kept[c] > CAMERA_EXACT_MAX_ROWS]
        if not graphed:
            return None
        searches = []
        exact_rows = [self.rows[c][keep[self.rows[c]]] for c in touched if c not in graphed]
        if exact_rows:
            searches.append(exact_search(self.embeddings, np.concatenate(exact_rows)))
        for c in graphed:
            searches.append(_camera_search(self.graph(c), self.rows[c], keep[self.rows[c]], CAMERA_EF_SEARCH))

        def run(queries, k):
            return merge([search(queries, k) for search in searches], k)
        return run

    # ------------------------------------------------------------------ files
    def write(self, folder: str) -> Dict[str, str]:
        """Write every wanted graph (built now when missing) as ``folder/<camera code>.faiss``, atomically,
        and delete the folder's other graphs. Returns camera name -> file name (for the manifest)."""
        import faiss

        files = {self.names[c]: f"{c}.faiss" for c in self.wanted()}
        os.makedirs(folder, exist_ok=True)
        for c in self.wanted():
            with atomic_open(os.path.join(folder, f"{c}.faiss"), "wb") as f:
                f.write(faiss.serialize_index(self.graph(c)).tobytes())
        for name in os.listdir(folder):
            if name.endswith(".faiss") and name not in files.values():
                os.remove(os.path.join(folder, name))
        return files

    def use_files(self, folder: str, files: Dict[str, str]):
        """Read graphs from ``folder`` (camera name -> file name, as :meth:`write` returned) when first used,
        instead of building them."""
        for name, file in files.items():
            if name in self.names:
                self.files[self.names.index(name)] = os.path.join(folder, file)

    def _read(self, camera: int):
        """The graph of ``camera`` from its file; None (with a warning) when unreadable or not matching."""
        import faiss

        file = self.files.pop(camera)
        try:
            graph = faiss.read_index(file)
        except RuntimeError as e:
            logger.warning("%s: unreadable camera graph (%s); it is rebuilt", file, str(e).splitlines()[0])
            return None
        if graph.ntotal != len(self.rows[camera]) or graph.d != self.embeddings.shape[1]:
            logger.warning("%s: camera graph of %d rows, the camera has %d; it is rebuilt", file, graph.ntotal,
                           len(self.rows[camera]))
            return None
        return graph


def _camera_search(graph, rows: np.ndarray, keep: np.ndarray, ef_search: int) -> Search:
    """One camera's graph (ids = positions in ``rows``) searched for its kept rows (bool ``keep`` [len(rows)]),
    answering index rows."""
    import faiss

    if keep.all():
        params = faiss.SearchParametersHNSW(efSearch=ef_search)
        local = lambda queries, k: graph.search(queries, k, params=params)  # noqa: E731
    else:
        local = selector_search(graph, keep, ef_search)

    def run(queries, k):
        sims, ids = local(queries, k)
        return sims, np.where(ids >= 0, rows[np.maximum(ids, 0)], -1)
    return run

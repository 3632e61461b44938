"""Filtered search: the rows a query's filters keep (cameras, a time span, excluded images, a score threshold)
searched inside faiss, never over-fetched and dropped.

Three ways (:func:`filtered_search` picks one; BENCHMARKS.md "Filtered search" has the numbers behind each
constant):

- exact over the kept rows alone (``faiss.knn_inner_products_by_idx``): cost in proportion to the rows kept;
- per-camera HNSW graphs (:class:`CameraGraphs`), when the kept rows lie in a few cameras of an HNSW index:
  each selected camera's own graph is searched (with an ID selector over its rows when other filters narrow
  it further) and the per-camera top k merged by similarity;
- the index's own structure with an ID selector, HNSW's efSearch widened as the share kept falls (its walk
  passes rows the selector rejects, and efSearch bounds the walk, not the hits found).

Over HNSW the cheapest is taken by a cost model in one unit, rows of an exact scan: exact costs the rows
kept, a graph search GRAPH_ROWS_PER_EF rows per unit of its efSearch. Over flat or compressed structures:
exact up to FILTER_EXACT_MAX_ROWS kept rows, else the selector.

Every search here is ``(queries [q, D] float32, k) -> (similarities float32 [q, k], rows int64 [q, k])``,
best first, row -1 (similarity -inf) past the last match.
"""
import logging
import math
import os
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..fileio import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["FILTER_EXACT_MAX_ROWS", "FILTER_MAX_EF_SEARCH", "FILTER_EF_PER_SHARE", "GRAPH_ROWS_PER_EF",
           "CAMERA_EF_SEARCH", "FILTER_STRATEGY", "CameraGraphs", "filtered_search", "exact_search",
           "selector_search", "widened_ef", "merge"]

Search = Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]

# Flat and compressed structures: exact over the kept rows up to this many, else the structure with a selector.
FILTER_EXACT_MAX_ROWS = 10_000
# HNSW with a selector: efSearch = FILTER_EF_PER_SHARE / share kept, at least the unfiltered efSearch, at most
# FILTER_MAX_EF_SEARCH (recall@10 >= 0.95 against exact filtered search at 100k boxes needs about 64 at 50%
# kept, 128 at 25%, 256 at 12.5%).
FILTER_MAX_EF_SEARCH = 256
FILTER_EF_PER_SHARE = 40
# The cost of an HNSW search per unit of efSearch, in rows of an exact scan (both nearly linear: at D = 256,
# 100k boxes, an exact scan takes about 0.075 ms a 1,000 rows, a graph walk about 0.0065 ms a unit of efSearch).
GRAPH_ROWS_PER_EF = 90
# A camera graph's efSearch (widened like the whole graph's when a selector narrows the camera).
CAMERA_EF_SEARCH = 64
# None: the cheapest way; "exact", "cameras" or "selector" force one (tests, benchmarks; "cameras" falls back
# to the selector where no camera graph applies).
FILTER_STRATEGY = None


def filtered_search(structure, embeddings: np.ndarray, keep: np.ndarray, num_rows: int, ef_search: int,
                    camera_graphs: Callable[[], "CameraGraphs"]) -> Search:
    """The search over the ``num_rows`` rows ``keep`` (bool [N]) selects, the cheapest way (module docstring).

    Args:
        structure: the index's faiss structure (HNSW, flat or compressed) over ``embeddings`` [N, D].
        ef_search: HNSW's efSearch unfiltered.
        camera_graphs: returns the index's :class:`CameraGraphs` (made only when an HNSW filter needs them).
    """
    import faiss

    hnsw = isinstance(structure, faiss.IndexHNSW)
    if FILTER_STRATEGY is not None:
        choice = FILTER_STRATEGY
    elif not hnsw:
        choice = "exact" if num_rows <= FILTER_EXACT_MAX_ROWS else "selector"
    else:
        costs = {"exact": num_rows, "selector": GRAPH_ROWS_PER_EF * widened_ef(ef_search, num_rows / len(keep))}
        if num_rows > GRAPH_ROWS_PER_EF * CAMERA_EF_SEARCH:  # else no camera plan can cost less than exact
            costs["cameras"] = camera_graphs().cost(keep)
        choice = min(costs, key=costs.get)
    if choice == "exact":
        return exact_search(embeddings, np.flatnonzero(keep))
    if choice == "cameras" and hnsw and camera_graphs().cost(keep) < math.inf:
        return camera_graphs().search(keep)
    return selector_search(structure, keep, ef_search)


def widened_ef(ef_search: int, share: float) -> int:
    """HNSW efSearch for a walk whose selector keeps ``share`` (0, 1] of the graph's rows (``ef_search``
    unfiltered)."""
    return int(min(FILTER_MAX_EF_SEARCH, max(ef_search, math.ceil(FILTER_EF_PER_SHARE / share))))


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
    """One HNSW graph per camera holding more than GRAPH_ROWS_PER_EF x CAMERA_EF_SEARCH rows, over its rows.

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
        """Cameras that get a graph, when there are >= 2: those of more than GRAPH_ROWS_PER_EF x CAMERA_EF_SEARCH
        rows (5,760: a smaller camera is scanned exactly for less than one walk of its graph)."""
        if len(self.names) < 2:
            return []
        return [c for c, rows in enumerate(self.rows) if len(rows) > GRAPH_ROWS_PER_EF * CAMERA_EF_SEARCH]

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

    def _split(self, keep: np.ndarray):
        """(cameras searched through their graph, rows searched exactly, cost in rows of an exact scan) for
        the rows ``keep`` (bool [N]): a camera holding kept rows walks its graph (efSearch widened by the share
        of the camera kept) when that costs less than scanning its kept rows."""
        kept = np.bincount(self.row_cameras[keep], minlength=len(self.names))
        with_graph = set(self.wanted())
        graphed, exact, cost = [], [], 0.0
        for c in np.flatnonzero(kept):
            walk = GRAPH_ROWS_PER_EF * widened_ef(CAMERA_EF_SEARCH, kept[c] / len(self.rows[c]))
            if c in with_graph and walk < kept[c]:
                graphed.append(int(c))
                cost += walk
            else:
                exact.append(int(c))
                cost += kept[c]
        return graphed, exact, cost

    def cost(self, keep: np.ndarray) -> float:
        """What :meth:`search` costs for ``keep``, in rows of an exact scan; inf when no camera graph helps."""
        graphed, _, cost = self._split(keep)
        return cost if graphed else math.inf

    def search(self, keep: np.ndarray) -> Search:
        """A search over the rows ``keep`` (bool [N]) through the graphs of the cameras holding them (built or
        read on first use); the other cameras' kept rows are searched exactly, together."""
        graphed, exact, _ = self._split(keep)
        searches = []
        if exact:
            searches.append(exact_search(self.embeddings, np.concatenate([self.rows[c][keep[self.rows[c]]]
                                                                          for c in exact])))
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

        wanted = self.wanted()
        files = {self.names[c]: f"{c}.faiss" for c in wanted}
        os.makedirs(folder, exist_ok=True)
        for c in wanted:
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

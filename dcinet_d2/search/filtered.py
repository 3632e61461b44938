"""Filtered search: the rows a query's filters keep (cameras, a time span, excluded images, a score threshold)
searched inside faiss, never over-fetched and dropped.

Three kinds of search (:func:`filtered_search` picks one; BENCHMARKS.md "Filtered search" has the numbers
behind each constant):

- exact over the kept rows alone (``faiss.knn_inner_products_by_idx``): cost in proportion to the rows kept;
- partition graphs (:class:`PartitionGraphs`), over an HNSW index: an HNSW graph per part of a partition of
  the rows, for five partitions: the cameras, and slices of the time axis (TIME_SLICE_ROWS rows each, and
  twice as many) each in two cuts half a slice apart (:func:`time_slices`, TIME_PARTITIONS). Each part holding
  kept rows has its own graph searched (with an ID selector over its rows when the filters keep only some of
  them), or its kept rows scanned exactly when fewer than a walk costs; the per-part top k merged by
  similarity. A camera filter walks a few cameras' graphs, a time span one or a few slices' graphs. Of P walks
  each runs at efSearch / sqrt(P) (it has to find only its part's share of the k best), and the walks and the
  scan run side by side on the threads faiss may use (:func:`together`);
- the index's own structure with an ID selector, HNSW's efSearch widened as the share kept falls (its walk
  passes rows the selector rejects, and efSearch bounds the walk, not the hits found).

Over HNSW the cheapest is taken by a cost model in one unit, rows of an exact scan: exact costs the rows
kept, a graph walk GRAPH_ROWS_PER_EF rows per unit of its efSearch (measured: as much in a graph of 25,000 rows
as in one of 100,000, their vectors no longer in the cache when several graphs are walked), the work of a
plan whatever runs side by side. Over flat or compressed structures: exact up to FILTER_EXACT_MAX_ROWS kept
rows, else the selector.

Every search here is ``(queries [q, D] float32, k) -> (similarities float32 [q, k], rows int64 [q, k])``,
best first, row -1 (similarity -inf) past the last match.
"""
import collections
import concurrent.futures
import logging
import math
import os
import threading
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..fileio import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["FILTER_EXACT_MAX_ROWS", "FILTER_MAX_EF_SEARCH", "FILTER_EF_PER_SHARE", "FILTER_MIN_EF_SEARCH",
           "GRAPH_ROWS_PER_EF", "CAMERA_EF_SEARCH", "TIME_SLICE_ROWS", "TIME_PARTITIONS", "SEARCH_THREADS",
           "FILTER_STRATEGY", "PartitionGraphs", "filtered_search", "exact_search", "selector_search", "widened_ef",
           "time_slices", "merge", "search_threads", "together"]

Search = Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]

# Flat and compressed structures: exact over the kept rows up to this many, else the structure with a selector.
FILTER_EXACT_MAX_ROWS = 10_000
# HNSW with a selector: efSearch = FILTER_EF_PER_SHARE / share kept, at least the unfiltered efSearch, at most
# FILTER_MAX_EF_SEARCH (recall@10 >= 0.95 against exact filtered search at 100k boxes needs about 64 at 50%
# kept, 128 at 25%, 256 at 12.5%).
FILTER_MAX_EF_SEARCH = 256
FILTER_EF_PER_SHARE = 40
# ... and at least this when the selector rejects any row (a 25,000-row time slice 80% kept, walked at 64: 0.942;
# a 50,000-row slice half kept, at 80: 0.942, at 88: 0.955).
FILTER_MIN_EF_SEARCH = 88
# The cost of an HNSW search per unit of efSearch, in rows of an exact scan (both nearly linear: at D = 256,
# 100k boxes, an exact scan takes about 0.075 ms a 1,000 rows, a graph walk about 0.0065 ms a unit of efSearch).
GRAPH_ROWS_PER_EF = 90
# A partition graph's efSearch (widened like the whole graph's when the filters keep part of its rows).
CAMERA_EF_SEARCH = 64
# Rows of a time slice (the rows of known time, in time order, cut into slices of about this many, and again
# half a slice later: a span of up to half as many rows lies inside one slice of one cut).
TIME_SLICE_ROWS = 25_000
# The time partitions: name -> (slices of this many TIME_SLICE_ROWS, the cut half a slice later). The wide
# slices hold a span of up to a slice (25,000 rows) that the narrow ones cut in two: one walk instead of a
# walk and a scan (at 100k boxes, a span of 20% off the borders: 1.5x the unfiltered query -> 1.2x).
TIME_PARTITIONS = {"times": (1, False), "times shifted": (1, True),
                   "times wide": (2, False), "times wide shifted": (2, True)}
# Threads one query's sub-searches run on (the walks of several parts' graphs, and the exact scan of the other
# kept rows): at most this many, and no more than faiss's OpenMP threads (None: that; 1: one after another).
# faiss spreads a batch over its queries, but one query's walk of one graph runs on one thread. The plans are
# costed by their work, not their time side by side: a server answering many queries at once has no thread to
# spare. (An exact scan is not cut to share threads: it reads memory about as fast as one thread can.)
SEARCH_THREADS = None
MAX_SEARCH_THREADS = 4
# None: the cheapest way; "exact", "cameras", "times" or "selector" force one (tests, benchmarks; "cameras" and
# "times": the partitions whose name starts so, the cheaper plan of them, exact where no part's graph helps).
FILTER_STRATEGY = None


def filtered_search(structure, embeddings: np.ndarray, keep: np.ndarray, num_rows: int, ef_search: int,
                    partitions: Dict[str, Callable[[], "PartitionGraphs"]]) -> Search:
    """The search over the ``num_rows`` rows ``keep`` (bool [N]) selects, the cheapest way (module docstring).

    Args:
        structure: the index's faiss structure (HNSW, flat or compressed) over ``embeddings`` [N, D].
        ef_search: HNSW's efSearch unfiltered.
        partitions: name ("cameras", "times", ...) -> a function returning the index's :class:`PartitionGraphs` of
            that partition (made only when an HNSW filter needs them).
    """
    import faiss

    hnsw = isinstance(structure, faiss.IndexHNSW)
    if not hnsw:
        planned = []
    elif FILTER_STRATEGY is not None:
        planned = [name for name in partitions if name.startswith(FILTER_STRATEGY)]
    else:  # (with fewer rows kept than the cheapest walk, scanning them is cheaper than any part's plan)
        planned = list(partitions) if num_rows > GRAPH_ROWS_PER_EF * CAMERA_EF_SEARCH else []
    plans = {name: partitions[name]().plan(keep) for name in planned}
    selector_ef = widened_ef(ef_search, max(num_rows, 1) / len(keep))
    if FILTER_STRATEGY is not None:
        choice = min(plans, key=lambda name: plans[name][2]) if plans else FILTER_STRATEGY
    elif not hnsw:
        choice = "exact" if num_rows <= FILTER_EXACT_MAX_ROWS else "selector"
    else:
        costs = {"exact": num_rows,
                 "selector": GRAPH_ROWS_PER_EF * selector_ef,
                 **{name: plan[2] for name, plan in plans.items()}}
        choice = min(costs, key=costs.get)
    if choice == "exact":
        return exact_search(embeddings, np.flatnonzero(keep))
    if choice in plans:
        return partitions[choice]().search(keep, plans[choice])
    return selector_search(structure, keep, selector_ef)


def widened_ef(ef_search: int, share: float, floor: bool = True) -> int:
    """HNSW efSearch for a walk whose selector keeps ``share`` (0, 1] of the graph's rows (``ef_search``
    unfiltered): FILTER_EF_PER_SHARE / share, at least ``ef_search`` (and FILTER_MIN_EF_SEARCH when ``floor``
    and the selector rejects any row), at most FILTER_MAX_EF_SEARCH."""
    least = ef_search if share >= 1 or not floor else max(ef_search, FILTER_MIN_EF_SEARCH)
    return int(min(FILTER_MAX_EF_SEARCH, max(least, math.ceil(FILTER_EF_PER_SHARE / share))))


def search_threads() -> int:
    """Threads for one query's sub-searches (SEARCH_THREADS, else faiss's OpenMP threads, at most
    MAX_SEARCH_THREADS)."""
    import faiss

    return max(1, SEARCH_THREADS or min(MAX_SEARCH_THREADS, faiss.omp_get_max_threads()))


def together(searches: Sequence[Search]) -> Search:
    """One search of the rows of all ``searches`` (their results merged), run side by side on up to
    :func:`search_threads` threads (the caller's one of them) when there are fewer queries than threads
    (more queries: faiss spreads each search over them)."""
    if len(searches) == 1:
        return searches[0]

    def run(queries, k):
        threads = min(search_threads(), len(searches))
        if threads == 1 or len(queries) >= threads:
            return merge([search(queries, k) for search in searches], k)
        pending, results = collections.deque(enumerate(searches)), [None] * len(searches)

        def work():  # take searches until none is left (deque.popleft is atomic)
            while True:
                try:
                    i, search = pending.popleft()
                except IndexError:
                    return
                results[i] = search(queries, k)
        helpers = [_pool().submit(work) for _ in range(threads - 1)]
        work()
        for helper in helpers:  # one still queued (the pool busy with other queries) has nothing left to do
            if not helper.cancel():
                helper.result()
        return merge(results, k)
    return run


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    """The threads that help run a query's sub-searches (MAX_SEARCH_THREADS - 1, made on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(MAX_SEARCH_THREADS - 1, "dcinet-search")
        return _POOL


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
    efSearch ``ef_search``."""
    import faiss

    bitmap = np.packbits(keep, bitorder="little")  # must outlive the search: the closure holds it
    selector = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bitmap))
    if isinstance(structure, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef_search)
    else:
        params = faiss.SearchParameters(sel=selector)
    return lambda queries, k, bitmap=bitmap, selector=selector: structure.search(queries, k, params=params)


def merge(results: Sequence[Tuple[np.ndarray, np.ndarray]], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several searches' (sims [q, k_i], rows [q, k_i]) per query, best first."""
    sims = np.concatenate([s for s, _ in results], axis=1).astype(np.float32, copy=False)  # new: written below
    ids = np.concatenate([i for _, i in results], axis=1)
    sims[ids < 0] = -np.inf
    if sims.shape[1] < k:
        pad = k - sims.shape[1]
        sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    query = np.arange(len(sims))[:, None]
    return sims[query, top], ids[query, top]


class PartitionGraphs:
    """One HNSW graph per part of a partition of the rows (the cameras, or slices of the time axis) holding
    more than GRAPH_ROWS_PER_EF x CAMERA_EF_SEARCH rows, over its rows.

    Args:
        embeddings: float32 [N, D], the index's rows.
        row_parts: int [N], each row's part (position in ``names``; -1: in no part, e.g. a row of unknown time).
        names: part names [P] (camera names, "" = unknown; time slices "0", "1", ... in time order).
        build: ``embeddings [n, D] -> faiss HNSW index`` (the index's own parameters).
        what: what a part is, for the log ("camera", "time slice").

    A graph holds its own copy of its part's vectors (faiss HNSWFlat), so the graphs of a whole partition double
    the memory of the index's HNSW structure (BENCHMARKS.md gives the bytes a box).
    """

    def __init__(self, embeddings, row_parts, names, build, what="camera"):
        self.embeddings, self.names, self._build, self.what = embeddings, [str(n) for n in names], build, what
        self.row_parts = np.asarray(row_parts, np.int64)
        order = np.argsort(self.row_parts, kind="stable")
        bounds = np.searchsorted(self.row_parts[order], np.arange(-1, len(self.names) + 1))
        # rows[p]: int64 rows of part p, ascending (a graph's ids are positions in it); loose: rows in no part.
        self.rows = [order[bounds[p + 1]:bounds[p + 2]].astype(np.int64) for p in range(len(self.names))]
        self.loose = order[:bounds[1]].astype(np.int64)
        self.graphs: Dict[int, object] = {}
        self.files: Dict[int, str] = {}  # part -> graph file to read on first use
        self.built = 0  # graphs built by this object (not read from a file)

    def wanted(self) -> List[int]:
        """Parts that get a graph: those of more than GRAPH_ROWS_PER_EF x CAMERA_EF_SEARCH rows (5,760: a smaller
        part is scanned exactly for about the cost of one walk of its graph) and not of every row (the index's
        own graph)."""
        return [p for p, rows in enumerate(self.rows)
                if GRAPH_ROWS_PER_EF * CAMERA_EF_SEARCH < len(rows) < len(self.row_parts)]

    def graph(self, part: int):
        """Part ``part``'s graph, built on first use when not read from a file."""
        if part not in self.graphs and part in self.files:
            graph = self._read(part)
            if graph is not None:
                self.graphs[part] = graph
        if part not in self.graphs:
            logger.info("building the search graph of %s %r (%d boxes)", self.what, self.names[part],
                        len(self.rows[part]))
            self.graphs[part] = self._build(np.ascontiguousarray(self.embeddings[self.rows[part]], np.float32))
            self.built += 1
        return self.graphs[part]

    def plan(self, keep: np.ndarray) -> Tuple[List[int], List[int], float]:
        """(parts searched through their graph, parts whose kept rows are searched exactly, cost in rows of an
        exact scan) for the rows ``keep`` (bool [N]): a part holding kept rows walks its graph (efSearch widened
        by the share of the part kept) when that costs less than scanning its kept rows; kept rows in no part
        are scanned (their cost included)."""
        kept = np.bincount(self.row_parts[keep] + 1, minlength=len(self.names) + 1)
        with_graph = set(self.wanted())
        held = np.flatnonzero(kept[1:])
        walkable = sum(p in with_graph for p in held)
        graphed, exact, scanned = [], [], int(kept[0])
        for p in held:
            if p in with_graph and GRAPH_ROWS_PER_EF * self._walk_ef(kept[p + 1], p, walkable) < kept[p + 1]:
                graphed.append(int(p))
            else:
                exact.append(int(p))
                scanned += int(kept[p + 1])
        return graphed, exact, scanned + sum(GRAPH_ROWS_PER_EF * self._walk_ef(kept[p + 1], p, len(graphed))
                                             for p in graphed)

    def _walk_ef(self, kept: int, part: int, walked: int) -> int:
        """efSearch of part ``part``'s walk for ``kept`` of its rows, one of ``walked`` walks: CAMERA_EF_SEARCH
        widened by the share kept (:func:`widened_ef`), over the square root of ``walked`` (each walk has to find
        only those of the k best in its part: at 100k boxes, 2 camera graphs walked at 46 find 0.97-0.98 of the
        filtered top 10, at 64 0.99; BENCHMARKS.md "Filtered search"). FILTER_MIN_EF_SEARCH holds for a lone
        walk only (2 camera graphs half kept, walked at 57 each: 0.967, at 63: 0.972, 1.1x the time)."""
        share = kept / len(self.rows[part])
        return math.ceil(widened_ef(CAMERA_EF_SEARCH, share, floor=walked == 1) / math.sqrt(walked))

    def search(self, keep: np.ndarray, plan=None) -> Search:
        """A search over the rows ``keep`` (bool [N]) through the graphs of the parts holding them (built or
        read on first use), by ``plan`` (default :meth:`plan`); the other kept rows are searched exactly,
        together."""
        graphed, exact, _ = plan or self.plan(keep)
        searches = []
        for p in graphed:  # the walks first: the longest sub-searches start first when they run side by side
            kept = keep[self.rows[p]]
            searches.append(_part_search(self.graph(p), self.rows[p], kept,
                                         self._walk_ef(np.count_nonzero(kept), p, len(graphed))))
        scanned = [self.rows[p][keep[self.rows[p]]] for p in exact] + [self.loose[keep[self.loose]]]
        if sum(map(len, scanned)):
            searches.append(exact_search(self.embeddings, np.sort(np.concatenate(scanned))))
        return together(searches)

    # ------------------------------------------------------------------ files
    def write(self, folder: str) -> Dict[str, str]:
        """Write every wanted graph (built now when missing) as ``folder/<part code>.faiss``, atomically,
        and delete the folder's other graphs. Returns part name -> file name (for the manifest)."""
        import faiss

        wanted = self.wanted()
        files = {self.names[p]: f"{p}.faiss" for p in wanted}
        os.makedirs(folder, exist_ok=True)
        for p in wanted:
            with atomic_open(os.path.join(folder, f"{p}.faiss"), "wb") as f:
                f.write(faiss.serialize_index(self.graph(p)).tobytes())
        for name in os.listdir(folder):
            if name.endswith(".faiss") and name not in files.values():
                os.remove(os.path.join(folder, name))
        return files

    def use_files(self, folder: str, files: Dict[str, str]):
        """Read graphs from ``folder`` (part name -> file name, as :meth:`write` returned) when first used,
        instead of building them."""
        for name, file in files.items():
            if name in self.names:
                self.files[self.names.index(name)] = os.path.join(folder, file)

    def _read(self, part: int):
        """The graph of ``part`` from its file; None (with a warning) when unreadable or not matching."""
        import faiss

        file = self.files.pop(part)
        try:
            graph = faiss.read_index(file)
        except RuntimeError as e:
            logger.warning("%s: unreadable %s graph (%s); it is rebuilt", file, self.what, str(e).splitlines()[0])
            return None
        if graph.ntotal != len(self.rows[part]) or graph.d != self.embeddings.shape[1]:
            logger.warning("%s: %s graph of %d rows, the %s has %d; it is rebuilt", file, self.what, graph.ntotal,
                           self.what, len(self.rows[part]))
            return None
        return graph


def time_slices(row_times: np.ndarray, shifted: bool = False, slice_rows: int = None) -> np.ndarray:
    """Each row's time slice (int64 [N], numbered in time order; -1: in none): the n rows of known time (not
    NaN), in time order, cut into s = round(n / ``slice_rows``) slices of equal rows (default TIME_SLICE_ROWS);
    ``shifted``: the s - 1 slices as long that start half a slice later (the first and last half slices in
    none), so that any span of up to half a slice lies inside one slice of the two cuts."""
    slice_rows = slice_rows or TIME_SLICE_ROWS
    timed = np.flatnonzero(np.isfinite(row_times))
    order = timed[np.argsort(row_times[timed], kind="stable")]
    n, count = max(len(order), 1), max(1, round(len(order) / slice_rows))
    ranks = np.arange(len(order))
    cut = (2 * ranks * count + n) // (2 * n) - 1 if shifted else ranks * count // n
    parts = np.full(len(row_times), -1, np.int64)
    parts[order] = np.where(cut < count - shifted, cut, -1)
    return parts


def _part_search(graph, rows: np.ndarray, keep: np.ndarray, ef_search: int) -> Search:
    """One part's graph (ids = positions in ``rows``) searched for its kept rows (bool ``keep`` [len(rows)]) at
    efSearch ``ef_search``, answering index rows."""
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

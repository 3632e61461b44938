"""Compressed search for galleries of millions of boxes: faiss IVF-PQ codes in memory, embeddings on disk.

An IVF-PQ structure holds ``m`` bytes of product-quantized code and an 8-byte row id a box (40 bytes at
D = 256, against HNSW's 1,296), so 10M boxes search in about 0.4 GB. The raw embeddings stay in the index's
part file, memory-mapped by ``GalleryIndex.load``: a query reads only the rows of its top ``rerank`` x k
candidates, re-scores them exactly and returns exact cosines (BENCHMARKS.md "Gallery search", compressed).
"""
import math

import numpy as np

__all__ = ["COMPRESSED_MIN_BOXES", "IVFPQ_NPROBE", "IVFPQ_RERANK", "CompressedSearch", "build_ivfpq", "ivf_lists",
           "pq_bytes"]

# From this many boxes the index searches IVF-PQ: HNSW would hold 1,296 bytes a box (2.6 GB at 2M boxes).
COMPRESSED_MIN_BOXES = 2_000_000
IVFPQ_BYTES = 32  # PQ code bytes a box (8-bit sub-quantizers); 256 / 32 = 8 dimensions each at D = 256
IVFPQ_MAX_LISTS = 4096  # k-means on 2 cores: 4096 centroids train in about 3 minutes on TRAIN_ROWS vectors
IVFPQ_NPROBE = 32  # lists scanned a query (recall@10 0.98 with re-ranking at 1M, BENCHMARKS.md)
IVFPQ_RERANK = 4  # candidates a hit re-scored exactly from the on-disk embeddings (0: PQ similarities)
IVFPQ_MIN_BOXES = 10_000  # below this there is too little to train 256 centroids per sub-quantizer
TRAIN_ROWS = 262_144  # sample the coarse quantizer and the PQ are trained on
ADD_ROWS = 262_144  # rows read from the embeddings and encoded at a time (256 MB at D = 256)


def ivf_lists(num_boxes: int) -> int:
    """Number of inverted lists: about 4 sqrt(N), a power of two in [16, IVFPQ_MAX_LISTS]."""
    return int(min(IVFPQ_MAX_LISTS, max(16, 2 ** round(math.log2(4 * math.sqrt(max(num_boxes, 1)))))))


def pq_bytes(dim: int) -> int:
    """PQ code bytes a box: the largest divisor of ``dim`` up to IVFPQ_BYTES that leaves each sub-quantizer at
    least 8 dimensions (faiss trains narrower ones very slowly: 38 s for 16 of 4 dimensions on 20k vectors,
    against 1.3 s for 8 of 8); 32 at D = 256."""
    return max(m for m in range(1, IVFPQ_BYTES + 1) if dim % m == 0 and (dim // m >= 8 or m == 1))


def build_ivfpq(embeddings: np.ndarray, seed: int = 0):
    """A faiss IndexIVFPQ (inner product) over ``embeddings`` [N, D] float32, read in ADD_ROWS chunks (a
    memmap is never read whole): trained on TRAIN_ROWS rows drawn at random, then every row added in order
    (faiss ids = row numbers). ValueError below IVFPQ_MIN_BOXES rows."""
    import faiss

    n, dim = embeddings.shape
    if n < IVFPQ_MIN_BOXES:
        raise ValueError(f"a compressed (IVF-PQ) index needs at least {IVFPQ_MIN_BOXES:,} boxes to train, this "
                         f"index has {n:,}; use --index-type flat or hnsw")
    # "np": no polysemous training (a code reordering for Hamming filtering, unused here, and slow).
    ivf = faiss.index_factory(dim, f"IVF{ivf_lists(n)},PQ{pq_bytes(dim)}np", faiss.METRIC_INNER_PRODUCT)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, TRAIN_ROWS), replace=False))
    ivf.train(np.ascontiguousarray(embeddings[rows], np.float32))
    for start in range(0, n, ADD_ROWS):
        ivf.add(np.ascontiguousarray(embeddings[start:start + ADD_ROWS], np.float32))
    ivf.nprobe = IVFPQ_NPROBE
    return ivf


class CompressedSearch:
    """IVF-PQ search with exact re-ranking, searched like a faiss index (``search(queries, k, params)``).

    Args:
        ivf: a faiss IndexIVF over the rows (ids = row numbers).
        embeddings: float32 [N, D], usually a memmap of the index's part file: only candidates' rows are read.
        nprobe: inverted lists scanned a query.
        rerank: the top ``rerank * k`` IVF-PQ candidates are re-scored exactly and the best k returned, with
            exact similarities; 0 returns IVF-PQ's approximate similarities.
    """

    def __init__(self, ivf, embeddings: np.ndarray, nprobe: int = IVFPQ_NPROBE, rerank: int = IVFPQ_RERANK):
        self.ivf, self.embeddings, self.nprobe, self.rerank = ivf, embeddings, int(nprobe), int(rerank)

    @property
    def ntotal(self) -> int:
        return self.ivf.ntotal

    def search(self, queries: np.ndarray, k: int, params=None):
        """(similarities float32 [q, k], row ids int64 [q, k]), best first, -1 ids padding. ``params``: None or
        faiss SearchParameters whose ID selector (``sel``) filters rows inside the search."""
        import faiss

        options = {"nprobe": self.nprobe}
        if params is not None and params.sel is not None:
            options["sel"] = params.sel
        candidates = min(k * self.rerank, self.ntotal) if self.rerank else k
        sims, ids = self.ivf.search(queries, max(candidates, k), params=faiss.SearchParametersIVF(**options))
        if not self.rerank:
            return sims, ids
        out_sims = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        for i, (query, found) in enumerate(zip(queries, ids)):
            rows = np.sort(found[found >= 0])  # ascending: the memmap is read in file order
            exact = self.embeddings[rows] @ query
            best = np.argsort(-exact, kind="stable")[:k]
            out_sims[i, :len(best)], out_ids[i, :len(best)] = exact[best], rows[best]
        return out_sims, out_ids

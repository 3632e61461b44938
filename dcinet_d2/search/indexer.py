"""Building a gallery index: detect and embed every image of a source not yet in the index.

Rows are saved as a part every ``checkpoint_every`` images, so a killed build loses at most that much work
and the next build (same command) continues where it stopped. With ``shard=(i, n)`` a process takes the
images whose key hashes to ``i`` modulo ``n``; n processes (Detectron2's ``launch``, or n separate commands)
share one index folder, each writing its own parts, and a last plain run merges them (``finalize``).
"""
import collections
import errno
import itertools
import logging
import os
import shutil
import sys
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, Iterator, Optional, Tuple

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..fileio import atomic_open
from .fingerprint import model_fingerprint, same_model
from .index import GalleryIndex, image_label
from .sources import GalleryItem, UnreadableImage

logger = logging.getLogger(__name__)

__all__ = ["open_index", "index_items", "predicted_batches", "default_workers", "finalize", "few_detections_warning"]

# Above this share of indexed images without a detection, the model likely does not know the imagery.
EMPTY_IMAGES_WARN = 0.5

def open_index(path: str, cfg, det_thresh: float, gallery_root: str,
               weights_sha256: Optional[str] = None) -> GalleryIndex:
    """The index at ``path`` to extend, or a new empty one (its manifest and config written at once).

    ``weights_sha256``: the hash of the model's weights as loaded (``PersonSearchPredictor.weights_sha256``),
    so that the file is not read again. Raises ValueError when the existing index was built by another model,
    with another detection threshold or from another gallery root: mixing them would make its rows
    incomparable.
    """
    fingerprint = model_fingerprint(cfg, weights_sha256)
    gallery_root = os.path.abspath(gallery_root)
    manifest = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest):
        # Checked again after the listing: another shard may have renamed a whole index into place between.
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not os.path.isfile(manifest):
            raise ValueError(f"{path}: exists and is not a gallery index; choose a new or empty --out folder")
        index = GalleryIndex(fingerprint["embedding_dim"], det_thresh, gallery_root, fingerprint)
        if _create_index(path, cfg, index):
            index.path = path
            return index
    index = GalleryIndex.load(path)
    problems = []
    if not same_model(index.model or {}, fingerprint):
        problems.append("it was built by another model (config or weights differ)")
    if abs(index.det_thresh - det_thresh) > 1e-9:
        problems.append(f"it was built with --det-thresh {index.det_thresh}, not {det_thresh}")
    if index.gallery_root != gallery_root:
        problems.append(f"its gallery root is {index.gallery_root}, not {gallery_root}")
    if problems:
        raise ValueError(f"{path}: cannot extend this index: {'; '.join(problems)}; choose another --out")
    return index


def _create_index(path: str, cfg, index: GalleryIndex) -> bool:
    """Write an empty index (manifest and config) in a temporary folder beside ``path``, then rename it to
    ``path`` in one step: shards started together race to create the index, and a loser must find either
    nothing or a whole index there, never a half-written folder. Losing the race is not an error: returns
    whether this process made the index."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    os.mkdir(tmp)
    try:
        with atomic_open(os.path.join(tmp, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        index.save(tmp)
        try:
            os.rename(tmp, path)  # replaces an empty folder; fails if another process made the index first
            return True
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return False
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def shard_of(key: Tuple[str, int], num_shards: int) -> int:
    """Stable shard of an image key (the same in every process and run, whatever is already indexed)."""
    return zlib.crc32(f"{key[0]}\0{key[1]}".encode("utf-8", "surrogateescape")) % num_shards


def index_items(predictor, items: Iterable[GalleryItem], index: GalleryIndex, *, batch_size: int = 1,
                checkpoint_every: int = 64, shard: Tuple[int, int] = (0, 1), total: Optional[int] = None,
                progress: bool = True, workers: int = 1) -> Dict:
    """Detect and embed every item not yet in ``index``, saving a part every ``checkpoint_every`` images.

    Args:
        predictor: a PersonSearchPredictor (its score threshold at or below ``index.det_thresh``).
        items: GalleryItems; those already indexed, or of another shard, are skipped unread.
        workers: forward passes run at once (:func:`predicted_batches`).
    Returns:
        dict: ``indexed`` (images added), ``detections`` (rows added), ``empty`` (images added without a
        detection at or above the threshold), ``already`` (images skipped as indexed), ``skipped`` (list of
        (image, reason) for unreadable images), ``seconds``.
    """
    summary = {"indexed": 0, "detections": 0, "empty": 0, "already": 0, "skipped": [], "seconds": 0.0}
    start = time.perf_counter()
    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)

    def todo():
        for item in items:
            if item.key in index:
                summary["already"] += 1
                bar.update(1)
            elif shard[1] == 1 or shard_of(item.key, shard[1]) == shard[0]:
                yield item

    with logging_redirect_tqdm():
        _run(predictor, todo(), index, batch_size, checkpoint_every, summary, bar, workers)
    bar.close()
    index.save(index.path)
    summary["seconds"] = time.perf_counter() - start
    return summary


def _run(predictor, pending, index, batch_size, checkpoint_every, summary, bar, workers):
    since_save = 0
    for batch, loaded, outputs in predicted_batches(predictor, pending, batch_size, workers, summary["skipped"]):
        for (item, _), out in zip(loaded, outputs):
            keep = out.scores >= index.det_thresh
            index.add(item.image, item.frame, out.pred_boxes.tensor[keep].numpy(), out.scores[keep].numpy(),
                      out.reid_embeddings[keep].numpy(), camera=item.camera, time=item.read_time())
            summary["indexed"] += 1
            summary["detections"] += int(keep.sum())
            summary["empty"] += int(not keep.any())
        since_save += len(loaded)
        bar.update(len(batch))
        if since_save >= checkpoint_every:
            index.save(index.path)
            since_save = 0


def predicted_batches(predictor, items: Iterable[GalleryItem], batch_size: int = 1, workers: int = 1,
                      skipped: Optional[list] = None) -> Iterator[Tuple[list, list, list]]:
    """The model's outputs on ``items``, in their order: (batch of items, [(item, BGR image)] of those read,
    [Instances] of those read). Unreadable images are logged and appended to ``skipped`` as (image, reason).

    Images are read here, in order (a video's frames must be); with ``workers`` > 1 the forward passes of
    that many batches run at once in threads, each op on 1 / ``workers`` of torch's intra-op threads: on a
    CPU, small images keep several threads of one op waiting on each other (BENCHMARKS.md, "Indexing
    throughput"), while separate batches do not. Outputs are those of a run with that many threads.
    """
    batches = _read_batches(items, batch_size, skipped if skipped is not None else [])
    if workers <= 1:
        for batch, loaded in batches:
            yield batch, loaded, _predict(predictor, loaded)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="index") as pool:
            running = collections.deque()

            def oldest():  # the first batch still running, with its outputs once ready
                batch, loaded, outputs = running.popleft()
                return batch, loaded, outputs.result()
            for batch, loaded in batches:
                running.append((batch, loaded, pool.submit(_predict, predictor, loaded)))
                if len(running) > workers:  # read one batch ahead of the workers, no more
                    yield oldest()
            while running:
                yield oldest()
    finally:
        torch.set_num_threads(threads)


def _predict(predictor, loaded):
    return predictor.predict_batch([image for _, image in loaded]) if loaded else []


def _read_batches(items, batch_size, skipped):
    """(batch of items, [(item, BGR image)] of those readable), ``batch_size`` items at a time."""
    items = iter(items)
    while True:
        batch = list(itertools.islice(items, batch_size))
        if not batch:
            return
        loaded = []
        for item in batch:
            try:
                loaded.append((item, item.load()))
            except UnreadableImage as e:
                logger.warning("skipped %s", e)
                skipped.append((image_label(item.image, item.frame), e.reason))
        yield batch, loaded


def default_workers(device: str) -> int:
    """Forward passes run at once when indexing: 1 on a GPU; on the CPU one per intra-op thread, at most 4
    (each holds a batch's activations)."""
    return 1 if str(device).startswith("cuda") else max(1, min(4, torch.get_num_threads()))


def few_detections_warning(indexed: int, empty: int, det_thresh: float) -> Optional[str]:
    """The warning to give when more than half of ``indexed`` images had no detection scoring at least
    ``det_thresh`` (``empty`` of them); None otherwise."""
    if indexed == 0 or empty <= EMPTY_IMAGES_WARN * indexed:
        return None
    return (f"{empty} of {indexed} images gave no detection with a score >= {det_thresh:g}: the model likely "
            "was trained on other imagery (the demo model knows only the synthetic world, not real footage); "
            "train it on your own images (a few labelled sequences suffice: docs/USING.md, \"Training on your "
            "own footage\") or try a lower --det-thresh")


def finalize(path: str, index: Optional[GalleryIndex] = None, index_type: Optional[str] = None) -> GalleryIndex:
    """Merge the parts of an index folder into one, and write its faiss structure (after every shard ends).

    ``index``: the index as this process holds it, when it holds every row (one process, no shards);
    otherwise the folder is read (other processes wrote parts of it). ``index_type``: "flat", "hnsw", "ivfpq",
    "auto" (by size) or None (the index's earlier choice), kept in its manifest for later loads.
    """
    index = GalleryIndex.load(path) if index is None else index.sort()
    if index_type is not None:
        index.index_type = None if index_type == "auto" else index_type
    index.save(path, compact=True, search_file=True)
    return index

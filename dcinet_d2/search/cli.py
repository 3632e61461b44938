"""The ``dcinet-search`` command: index a gallery, query it, describe an index.

    dcinet-search index --config-file CFG --weights W (--images DIR | --video FILE [--every N | --fps R] |
                        --dataset NAME) --out INDEX_DIR [--det-thresh T] [--batch-size B] [--workers W] [--shard I/N]
                        [--index-type auto|flat|hnsw|ivfpq]
    dcinet-search query --index INDEX_DIR --image Q.jpg --box X1,Y1,X2,Y2 [--top-k 10] [--json] [--vis OUT.png]
                        [--camera NAME ...] [--since ISO] [--until ISO] [--rerank K]
    dcinet-search info --index INDEX_DIR
    dcinet-search serve --index INDEX_DIR [--host 127.0.0.1] [--port 8000]   (the review page, server.py)

Bad input ends in one ``error: ...`` line and exit code 2; unreadable gallery images are skipped and named.
"""
import argparse
import json
import logging
import math
import os
import sys
import warnings

from ..cli import report_error
from .compressed import IVFPQ_RERANK
from .index import INDEX_TYPES
from .query import UsageError, check_threshold, model_config, parse_box, parse_time

__all__ = ["main"]

logger = logging.getLogger("dcinet_d2.search")


def _box(text):
    try:
        return parse_box(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _shard(text):
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N, e.g. 0/2") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 <= I < N")
    return i, n


def _parser():
    parser = argparse.ArgumentParser(prog="dcinet-search", description="Index a gallery of scene images (or a "
                                     "video) with a trained I-Net / DC-I-Net model, and search it for a person.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="detect and embed every gallery image not yet in the index")
    p.add_argument("--config-file", required=True, help="the model's config (as used for training)")
    p.add_argument("--weights", required=True, help="trained checkpoint (model_final.pth)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (recursive; jpg, jpeg, png, bmp, webp)")
    src.add_argument("--video", help="video file (OpenCV)")
    src.add_argument("--dataset", help="a registered Detectron2 dataset name, e.g. cuhk_sysu_gallery")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--every", type=int, default=None, help="video: index one frame every N frames")
    rate.add_argument("--fps", type=float, default=None, help="video: index about this many frames a second")
    p.add_argument("--camera", help="camera (source) name of every image indexed now (default: the first folder "
                   "under --images, the video's file name)")
    p.add_argument("--video-start", help="video: when its first frame was taken (ISO 8601, UTC unless an offset "
                   "is given); frame times follow from the frame rate")
    p.add_argument("--out", required=True, help="index folder (created, or extended if it exists)")
    p.add_argument("--det-thresh", type=float, default=None,
                   help="keep detections with at least this score (default: the config's TEST.PERSON_SEARCH."
                        "DET_THRESH)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--workers", type=int, default=None,
                   help="forward passes run at once, each on its share of the CPU threads (default: 1 on a GPU; "
                        "on the CPU one per thread, at most 4)")
    p.add_argument("--checkpoint-every", type=int, default=64,
                   help="save the rows every N images (a killed build loses at most N images of work)")
    p.add_argument("--shard", type=_shard, default=(0, 1),
                   help="I/N: index only shard I of N (N commands share one --out; then run once without "
                        "--shard to merge)")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="processes under Detectron2's launch, one shard each (one per GPU; CPU processes "
                        "when there is no GPU)")
    p.add_argument("--index-type", choices=("auto",) + INDEX_TYPES, default=None,
                   help="search structure written at the end: flat (exact), hnsw (graph, all embeddings in memory) "
                        "or ivfpq (compressed codes in memory, embeddings read from disk to re-rank); auto: flat "
                        "below 100,000 boxes, hnsw below 2,000,000, ivfpq from there (default: the index's "
                        "earlier choice, auto for a new one)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")

    q = sub.add_parser("query", help="search an index for the person in a query box")
    q.add_argument("--index", required=True, help="index folder")
    q.add_argument("--image", required=True, help="query image")
    q.add_argument("--box", required=True, type=_box, help="X1,Y1,X2,Y2: the person, in the query image's pixels")
    q.add_argument("--top-k", type=int, default=10, help="number of hits")
    q.add_argument("--det-thresh", type=float, default=None, help="only gallery detections with this score or more")
    q.add_argument("--one-per-image", action="store_true", help="at most one hit per gallery image (frame)")
    q.add_argument("--exclude-image", action="append", default=[],
                   help="leave out hits in this gallery image (path relative to the gallery root), e.g. the "
                        "query's own; repeatable")
    exact = q.add_mutually_exclusive_group()
    exact.add_argument("--exact", action="store_true", help="exact search (faiss flat), whatever the index size")
    exact.add_argument("--approximate", action="store_true",
                       help="approximate search (the index's HNSW or IVF-PQ; HNSW for an index searched exactly)")
    q.add_argument("--rerank", type=int, default=None,
                   help="compressed (ivfpq) index: re-score the best K x top-k candidates exactly from the "
                        f"embeddings on disk (default {IVFPQ_RERANK}; 0: the compressed similarities as they are)")
    q.add_argument("--camera", action="append", default=None,
                   help="only gallery images of this camera (source); repeatable")
    q.add_argument("--since", help="only gallery images taken at or after this ISO 8601 time (UTC unless an "
                   "offset is given); images of unknown time are left out")
    q.add_argument("--until", help="only gallery images taken at or before this ISO 8601 time")
    q.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    q.add_argument("--vis", help="write a PNG: the query crop beside the top-k gallery images with their hits")
    q.add_argument("--config-file", help="the model's config (default: the index's config.yaml)")
    q.add_argument("--weights", help="the model's weights (default: the file named in the index manifest)")
    q.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")

    i = sub.add_parser("info", help="describe an index")
    i.add_argument("--index", required=True, help="index folder")

    s = sub.add_parser("serve", help="a web page over an index: browse its frames, click or draw a person, see "
                       "where else they appear (and the same as a JSON API)")
    s.add_argument("--index", required=True, help="index folder (read only, never written)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the gallery "
                        "to the network, without any login)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--max-upload-mb", type=float, default=20, help="largest uploaded query image, in MB")
    s.add_argument("--config-file", help="the model's config (default: the index's config.yaml)")
    s.add_argument("--weights", help="the model's weights (default: the file named in the index manifest)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def _items(args):
    from .sources import dataset_items, folder_items, open_video

    if args.images:
        return os.path.abspath(args.images), list(folder_items(args.images, camera=args.camera))
    if args.dataset:
        root, items = dataset_items(args.dataset)
        return root, list(items)
    open_video(args.video).release()  # fail before anything is written
    return os.path.dirname(os.path.abspath(args.video)), None  # frames are read as they are indexed


def _index_worker(args):
    from detectron2.utils import comm

    from .indexer import default_workers, finalize, index_items, open_index
    from .predictor import PersonSearchPredictor
    from .sources import video_items

    rank, world = comm.get_rank(), comm.get_world_size()
    shard = (rank, world) if world > 1 else args.shard
    cfg = model_config(args.config_file, args.weights, args.device, args.opts)
    det_thresh = cfg.TEST.PERSON_SEARCH.DET_THRESH if args.det_thresh is None else args.det_thresh
    root, items = _items(args)
    # The model detects, and embeds, exactly what the index keeps.
    predictor = PersonSearchPredictor(cfg, det_thresh=det_thresh)
    if rank == 0:
        index = open_index(args.out, cfg, det_thresh, root, predictor.weights_sha256)
    comm.synchronize()
    if rank != 0:
        index = open_index(args.out, cfg, det_thresh, root, predictor.weights_sha256)
    if items is None:
        items = video_items(args.video, args.every or 1, args.fps, done=set(index.images), camera=args.camera,
                            start=parse_time(args.video_start, "--video-start"))
    summary = index_items(predictor, items, index, batch_size=args.batch_size,
                          checkpoint_every=args.checkpoint_every, shard=shard,
                          total=len(items) if isinstance(items, list) else None,
                          progress=not args.quiet and rank == 0,
                          workers=args.workers or default_workers(cfg.MODEL.DEVICE))
    summaries = comm.gather(summary)
    comm.synchronize()
    if rank != 0:
        return None
    # One process holds every row; under launch the other processes wrote parts this one has not read.
    final = finalize(args.out, index if world == 1 else None, args.index_type) \
        if shard[1] == 1 or world > 1 else None
    _print_index_summary(args, summaries, final, shard if world == 1 else (0, 1), det_thresh)
    return 0


def _print_index_summary(args, summaries, final, shard, det_thresh):
    from .indexer import few_detections_warning

    indexed = sum(s["indexed"] for s in summaries)
    detections = sum(s["detections"] for s in summaries)
    seconds = max(s["seconds"] for s in summaries)
    skipped = [x for s in summaries for x in s["skipped"]]
    rate = indexed / seconds if seconds > 0 else 0.0
    part = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(f"indexed {indexed} images{part}, {detections} detections, in {seconds:.1f} s ({rate:.2f} images/s); "
          f"already in the index: {summaries[0]['already']}")
    print(f"skipped {len(skipped)} images" + (":" if skipped else ""))
    for image, reason in skipped:
        print(f"  {image}: {reason}")
    warning = few_detections_warning(indexed, sum(s["empty"] for s in summaries), det_thresh)
    if warning:
        logger.warning(warning)
        print(f"warning: {warning}")
    if final is not None:
        print(f"index {args.out}: {final.num_images} images, {final.num_boxes} boxes, "
              f"{final.search_kind or 'flat'} search")
    else:
        print(f"index {args.out}: shard written; run the same command without --shard to merge the shards")


def _cmd_index(args):
    import torch
    from ..distributed import launch

    check_threshold(args.det_thresh)
    if args.batch_size < 1 or args.checkpoint_every < 1 or (args.workers is not None and args.workers < 1):
        raise UsageError("--batch-size, --workers and --checkpoint-every must be at least 1")
    if (args.every is not None or args.fps is not None or args.video_start) and not args.video:
        raise UsageError("--every, --fps and --video-start apply to --video only")
    if args.camera is not None and args.dataset:
        raise UsageError("--camera applies to --images and --video")
    parse_time(args.video_start, "--video-start")
    if args.every is not None and args.every < 1:
        raise UsageError(f"--every {args.every}: expected a positive number of frames")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise UsageError(f"--fps {args.fps}: expected a positive frame rate")
    if args.weights and not os.path.isfile(args.weights):
        raise UsageError(f"{args.weights}: weights file not found")
    if args.num_gpus > 1:
        if args.shard != (0, 1):
            raise UsageError("--shard and --num-gpus > 1 exclude each other")
        if 0 < torch.cuda.device_count() < args.num_gpus:
            raise UsageError(f"--num-gpus {args.num_gpus}: only {torch.cuda.device_count()} GPUs here")
        # Without GPUs the processes run on the CPU (gloo backend).
        launch(_index_worker, args.num_gpus, dist_url="auto", args=(args,))
        return 0
    return _index_worker(args)


def _hit_image_loader(root):
    from .sources import read_frame, read_image_bgr

    def load(hit):
        path = os.path.join(root, hit.image)
        return read_image_bgr(path) if hit.frame is None else read_frame(path, hit.frame)
    return load


def _cmd_query(args):
    from .index import GalleryIndex, Hit
    from .query import answer_query, query_model
    from .sources import read_image_bgr
    from .vis import draw_search

    check_threshold(args.det_thresh)
    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: expected a positive number of hits")
    if args.rerank is not None and args.rerank < 0:
        raise UsageError(f"--rerank {args.rerank}: expected 0 (off) or a positive number of candidates a hit")
    if not os.path.isfile(args.image):
        raise UsageError(f"{args.image}: query image not found")
    index = GalleryIndex.load(args.index)
    if args.rerank is not None:
        index.rerank = args.rerank
    if args.det_thresh is not None and args.det_thresh < index.det_thresh - 1e-9:
        logger.warning("--det-thresh %s is below the index's %s: detections under %s were not kept",
                       args.det_thresh, index.det_thresh, index.det_thresh)
    since, until = parse_time(args.since, "--since"), parse_time(args.until, "--until")
    if since is not None and until is not None and until < since:
        raise UsageError(f"--until {args.until} is before --since {args.since}")
    image = read_image_bgr(args.image)
    predictor = query_model(index, args.index, args.config_file, args.weights, args.device)
    approximate = True if args.approximate else (False if args.exact else None)
    answer = answer_query(index, predictor, image, args.box, args.image, args.top_k, det_thresh=args.det_thresh,
                          one_per_image=args.one_per_image, approximate=approximate,
                          exclude_images=args.exclude_image, cameras=args.camera, since=since, until=until)
    hits = [Hit(**h) for h in answer["hits"]]
    if args.json:
        print(json.dumps(answer))
    else:
        _print_hits(hits)
    if args.vis:
        draw_search(image, args.box, hits, _hit_image_loader(index.gallery_root), args.vis)
        if not args.json:
            print(f"picture: {args.vis}")
    return 0


def _print_hits(hits):
    from tabulate import tabulate

    rows = [[h.rank, h.label, ",".join(f"{v:.0f}" for v in h.box),
             f"{h.similarity:.3f}", f"{h.score:.3f}"] for h in hits]
    headers = ["rank", "image", "box", "similarity", "det score"]
    if any(h.camera or h.time for h in hits):
        rows = [row + [h.camera or "", h.time or ""] for row, h in zip(rows, hits)]
        headers += ["camera", "time"]
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    if not hits:
        print("(no gallery detection passes the filters)")


def _cmd_info(args):
    from .index import GalleryIndex

    index = GalleryIndex.load(args.index)
    manifest = index.manifest()
    model = index.model or {}
    parts = len(os.listdir(os.path.join(args.index, "parts")))
    print(f"index {os.path.abspath(args.index)} (format version {manifest['format_version']})\n"
          f"  {index.num_images} images, {index.num_boxes} boxes of dimension {index.dim}, in {parts} part file(s)\n"
          f"  detections kept with score >= {index.det_thresh}\n"
          f"  gallery root: {index.gallery_root}\n"
          f"  model: config sha256 {str(model.get('config_sha256'))[:16]}.., weights {model.get('weights')} "
          f"(sha256 {str(model.get('weights_sha256'))[:16]}..)\n"
          f"  search: {index.search_kind or 'not built yet'}"
          + (" (exact, faiss flat)" if index.search_kind == "flat" else
             " (approximate, faiss HNSW)" if index.search_kind == "hnsw" else
             " (approximate, compressed: faiss IVF-PQ in memory, embeddings on disk)" if index.search_kind == "ivfpq"
             else ""))
    return 0


def _is_loopback(host):
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _cmd_serve(args):
    import socket

    import uvicorn

    from .query import open_search
    from .server import create_app

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 0..65535")
    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb > 0):
        raise UsageError(f"--max-upload-mb {args.max_upload_mb}: expected a positive size")
    try:  # a taken port is one line here, not uvicorn's log after the model has loaded
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    index, predictor = open_search(args.index, args.config_file, args.weights, args.device)
    local = _is_loopback(args.host)
    # On loopback, Host names other than the machine's own are refused (web pages elsewhere cannot reach the
    # server through DNS rebinding); Starlette's check cannot parse IPv6 Host headers, so not for those.
    allowed = sorted({"127.0.0.1", "localhost", args.host}) if local and ":" not in args.host else None
    app = create_app(index, predictor, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                     allowed_hosts=allowed)
    if not local:
        print(f"WARNING: listening on {args.host}, not 127.0.0.1: anyone who can reach this machine on port "
              f"{args.port} can browse the gallery's images and run queries (there is no login)", file=sys.stderr)
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"serving {args.index} ({index.num_images} images, {index.num_boxes} boxes) at "
          f"http://{url_host}:{args.port}/  (API docs: /docs; Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv=None):
    """Command line ``dcinet-search``; returns the exit code (2 on bad input, with one "error: ..." line)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=r"torch.meshgrid", category=UserWarning)
    try:
        return {"index": _cmd_index, "query": _cmd_query, "info": _cmd_info, "serve": _cmd_serve}[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; what was saved is kept (run the same command again to continue)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a command line reports bad input in one line, never a traceback
        return report_error(e)


if __name__ == "__main__":
    sys.exit(main())

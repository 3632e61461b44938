"""The review page of a gallery index (``dcinet-search serve``): an ASGI app (FastAPI) over one index and its
model, loaded once.

    app = create_app(index, predictor)           # from query.open_search(index_dir)
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (OpenAPI docs at /docs, Swagger UI served from here too); the page (static/) is one client of the JSON
API:

    GET  /                      the page
    GET  /api/info              counts, thresholds and limits of the index
    GET  /api/frames            the gallery's frames, a page at a time (offset, limit)
    GET  /api/frame             one frame's detections (image, frame)
    GET  /api/frame/image       the frame as JPEG (max_side: a thumbnail)
    GET  /api/frame/crop        a box of the frame as JPEG
    POST /api/query             query a box of a gallery frame  -> the contract of ``dcinet-search query --json``
    POST /api/query/upload      query a box of an uploaded image (multipart) -> the same

Only frames recorded in the index are served, and only when their file lies inside the gallery root once
symbolic links are resolved: anything else (``../``, absolute paths, links out of the root) is a 404. Request
bodies are bounded (413), inference and search are serialised by one lock (the model and the faiss structure
are shared), and nothing is written to the index folder.
"""
import io
import os
import threading
from typing import Annotated, List, Optional

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..errors import error_line
from .index import GalleryIndex, image_label, iso_time
from .query import UsageError, answer_query, parse_box, parse_time
from .sources import UnreadableImage, read_frame, read_image_bgr

__all__ = ["create_app", "DEFAULT_MAX_UPLOAD_BYTES", "MAX_TOP_K", "STATIC_DIR"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_TOP_K = 500
# Room for the form fields beside the uploaded file in one multipart body.
_FORM_SLACK_BYTES = 64 * 1024
_JPEG_QUALITY = 90


class QueryRequest(BaseModel):
    image: str = Field(description="gallery image holding the query person, path relative to the gallery root")
    frame: Optional[int] = Field(None, description="video frame number; null for a still image")
    box: List[float] = Field(min_length=4, max_length=4, description="X1,Y1,X2,Y2 in the image's pixels")
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="number of hits")
    det_thresh: Optional[float] = Field(None, ge=0, le=1, description="only gallery detections scoring this or more")
    one_per_image: bool = Field(False, description="at most one hit per gallery image (frame)")
    exclude_images: List[str] = Field([], description="gallery images whose detections are left out")
    cameras: List[str] = Field([], description="only gallery images of these cameras (empty: any)")
    since: Optional[str] = Field(None, description="only gallery images taken at or after this ISO 8601 time")
    until: Optional[str] = Field(None, description="only gallery images taken at or before this ISO 8601 time")


class _BodyLimit:
    """ASGI middleware: a request body announced larger than ``limit`` bytes is refused with 413 before it is
    read, and one that does not announce its length (chunked) with 411, so no body above the limit is read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            status, message = None, None
            if length is None:
                if b"transfer-encoding" in headers:
                    status, message = 411, "send the request with a Content-Length header (chunked bodies are refused)"
            elif not length.isdigit():
                status, message = 400, "invalid Content-Length header"
            elif int(length) > self.limit:
                status, message = 413, (f"upload too large: {int(length)} bytes; this server takes at most "
                                        f"{self.limit - _FORM_SLACK_BYTES} bytes per image (--max-upload-mb)")
            if status is not None:
                await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _within(seconds: float, since: Optional[float], until: Optional[float]) -> bool:
    """Whether a frame's time (NaN = unknown) passes a span; with no span every frame does."""
    if since is None and until is None:
        return True
    return np.isfinite(seconds) and (since is None or seconds >= since) and (until is None or seconds <= until)


def _jpeg(image: np.ndarray) -> Response:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise HTTPException(500, "could not encode the image as JPEG")
    return Response(data.tobytes(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _add_docs(app: FastAPI):
    """OpenAPI docs at /docs with Swagger UI's files from the swagger-ui-py wheel, served here."""
    import importlib.util

    from fastapi.openapi.docs import get_swagger_ui_html

    spec = importlib.util.find_spec("swagger_ui")
    if spec is None:
        raise ImportError("swagger-ui-py is not installed: bash scripts/setup_env.sh installs requirements-serve.txt")
    assets = os.path.join(list(spec.submodule_search_locations)[0], "static")
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="dcinet-search API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


def create_app(index: GalleryIndex, predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               allowed_hosts: Optional[List[str]] = None) -> FastAPI:
    """The app serving ``index`` (a loaded :class:`GalleryIndex`, never written) and querying it with
    ``predictor`` (its checked model, :func:`query.open_search`).

    Args:
        max_upload_bytes: largest uploaded query image; bigger request bodies get 413.
        allowed_hosts: accepted ``Host`` headers (e.g. 127.0.0.1 and localhost when bound there, which keeps
            other web sites from reaching the server through DNS rebinding); None accepts any.
    """
    app = FastAPI(title="dcinet-search", description="Search a gallery index for a person: click or draw a box.",
                  docs_url=None, redoc_url=None)
    root = os.path.realpath(index.gallery_root)
    lock = threading.Lock()
    ids = {key: i for i, key in enumerate(index.images)}
    boxes_per_image = np.bincount(index.entry_image, minlength=index.num_images)
    starts = np.concatenate([[0], np.cumsum(boxes_per_image)])
    if len(index.entry_image) and np.any(np.diff(index.entry_image) < 0):
        raise ValueError("index rows are not grouped by image (load it with GalleryIndex.load)")

    def frame_id(image: str, frame: Optional[int]) -> int:
        """The index's id of a frame it holds whose file lies inside the gallery root; 404 otherwise."""
        key = (image, -1 if frame is None else int(frame))
        label = image_label(image, frame)
        parts = image.replace("\\", "/").split("/")
        if key not in ids or os.path.isabs(image) or ".." in parts or "\0" in image:
            raise HTTPException(404, f"{label}: no such frame in this gallery")
        path = os.path.realpath(os.path.join(root, image))
        if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
            raise HTTPException(404, f"{label}: no such frame in this gallery")
        return ids[key]

    def read(image: str, frame: Optional[int]) -> np.ndarray:
        frame_id(image, frame)
        path = os.path.join(root, image)
        try:
            return read_image_bgr(path) if frame is None or frame < 0 else read_frame(path, frame)
        except (UnreadableImage, OSError, ValueError) as e:
            raise HTTPException(404, f"{image_label(image, frame)}: cannot be read ({error_line(e)})") from None

    def when(since, until):
        try:
            return {"since": parse_time(since, "since"), "until": parse_time(until, "until")}
        except UsageError as e:
            raise HTTPException(422, str(e)) from None

    def answer(image, box, name, **options):
        try:
            with lock:
                return answer_query(index, predictor, image, box, name, **options)
        except ValueError as e:  # UsageError, or the predictor refusing the box
            raise HTTPException(422, error_line(e)) from None

    def frame_entry(i: int) -> dict:
        image, frame = index.images[i]
        frame = None if frame < 0 else frame
        return {"image": image, "frame": frame, "label": image_label(image, frame),
                "camera": index.cameras[i] or None, "time": iso_time(index.times[i]),
                "detections": int(boxes_per_image[i])}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    @app.get("/api/info")
    def info():
        """What the index holds and the limits of this server."""
        times = np.asarray(index.times, np.float64)
        known = times[np.isfinite(times)]
        return {"num_images": index.num_images, "num_boxes": index.num_boxes, "embedding_dim": index.dim,
                "det_thresh": index.det_thresh, "search": index.search_kind or "flat",
                "cameras": sorted({c for c in index.cameras if c}),
                "first_time": iso_time(known.min()) if len(known) else None,
                "last_time": iso_time(known.max()) if len(known) else None,
                "max_upload_bytes": max_upload_bytes, "max_top_k": MAX_TOP_K}

    @app.get("/api/frames")
    def frames(offset: int = Query(0, ge=0), limit: int = Query(48, ge=1, le=500),
               camera: Optional[str] = None, since: Optional[str] = None, until: Optional[str] = None):
        """The gallery's frames in the index's order (by path, then frame), ``limit`` from ``offset``, of one
        camera and within a time span when asked."""
        span = when(since, until)
        chosen = [i for i in range(index.num_images) if (camera is None or index.cameras[i] == camera)
                  and _within(index.times[i], **span)]
        return {"total": len(chosen), "offset": offset,
                "frames": [frame_entry(i) for i in chosen[offset:offset + limit]]}

    @app.get("/api/frame")
    def frame_detections(image: str, frame: Optional[int] = None):
        """One frame's detections as indexed: boxes (XYXY, original pixels) and scores, best first."""
        i = frame_id(image, frame)
        rows = np.arange(starts[i], starts[i + 1])
        rows = rows[np.argsort(-index.scores[rows], kind="stable")]
        return {**frame_entry(i), "boxes": [{"box": [round(float(v), 2) for v in index.boxes[r]],
                                             "score": float(index.scores[r])} for r in rows]}

    @app.get("/api/frame/image", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def frame_image(image: str, frame: Optional[int] = None, max_side: Optional[int] = Query(None, ge=16, le=4096)):
        """The frame as JPEG, EXIF orientation applied (the detections' coordinates); ``max_side``: scaled
        down so that its longer side is at most this."""
        import cv2

        pixels = read(image, frame)
        scale = max_side / max(pixels.shape[:2]) if max_side else 1.0
        if scale < 1:
            size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        return _jpeg(pixels)

    @app.get("/api/frame/crop", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def frame_crop(image: str, box: str, frame: Optional[int] = None):
        """The part of a frame inside ``box`` (X1,Y1,X2,Y2, original pixels; clipped to the frame) as JPEG."""
        try:
            x1, y1, x2, y2 = parse_box(box)
        except UsageError as e:
            raise HTTPException(422, str(e)) from None
        pixels = read(image, frame)
        h, w = pixels.shape[:2]
        if not all(np.isfinite([x1, y1, x2, y2])):
            raise HTTPException(422, f"box {box!r}: not finite")
        x1, x2 = (int(np.clip(v, 0, w)) for v in (np.floor(x1), np.ceil(x2)))
        y1, y2 = (int(np.clip(v, 0, h)) for v in (np.floor(y1), np.ceil(y2)))
        if x2 <= x1 or y2 <= y1:
            raise HTTPException(422, f"box {box!r}: empty inside the {w}x{h} frame")
        return _jpeg(np.ascontiguousarray(pixels[y1:y2, x1:x2]))

    @app.post("/api/query")
    def query(request: QueryRequest):
        """Ranked hits for the person in ``box`` of a gallery frame (the contract of ``dcinet-search query
        --json``: ``{"query": {"image", "box"}, "hits": [{"rank", "image", "frame", "box", "score",
        "similarity"}]}``)."""
        pixels = read(request.image, request.frame)
        return answer(pixels, request.box, image_label(request.image, request.frame), top_k=request.top_k,
                      det_thresh=request.det_thresh, one_per_image=request.one_per_image,
                      exclude_images=request.exclude_images, cameras=request.cameras,
                      **when(request.since, request.until))

    @app.post("/api/query/upload")
    def query_upload(file: Annotated[UploadFile, File(description="the query image (JPEG, PNG, BMP, WebP)")],
                     box: Annotated[str, Form(description="X1,Y1,X2,Y2 in the uploaded image's pixels")],
                     top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 10,
                     det_thresh: Annotated[Optional[float], Form(ge=0, le=1)] = None,
                     one_per_image: Annotated[bool, Form()] = False,
                     cameras: Annotated[List[str], Form()] = (),
                     since: Annotated[Optional[str], Form()] = None, until: Annotated[Optional[str], Form()] = None):
        """As /api/query, the person in ``box`` of an uploaded image."""
        name = file.filename or "upload"
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"upload {name!r} too large: this server takes at most {max_upload_bytes} bytes "
                                     "per image (--max-upload-mb)")
        try:
            box_values = parse_box(box)
        except UsageError as e:
            raise HTTPException(422, str(e)) from None
        try:
            pixels = read_image_bgr(io.BytesIO(data))
        except UnreadableImage as e:
            raise HTTPException(415, f"upload {name!r}: {e.reason}") from None
        return answer(pixels, box_values, name, top_k=top_k, det_thresh=det_thresh, one_per_image=one_per_image,
                      cameras=list(cameras), **when(since, until))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_docs(app)
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _FORM_SLACK_BYTES)
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return app

"""Where gallery images come from: a folder, a video, a registered Detectron2 dataset.

Every source yields :class:`GalleryItem` s in a fixed order. An item's ``key`` = (path relative to the gallery
root, video frame number or -1) names it in the index, so a second build can skip what is already there. An
item's image is read only when ``load()`` is called, and a file that cannot be read raises
:class:`UnreadableImage` with the reason (the indexer logs it and skips the item). Where and when: an item's
``camera`` is the first folder under a folder source's root (or the name given), a video's file name; its
``read_time()`` gives POSIX seconds from the image's EXIF date (taken as UTC: EXIF has no time zone) or, for a
video whose start is given, from the frame rate; None when unknown.
"""
import dataclasses
import datetime
import os
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from ..errors import error_line

__all__ = ["IMAGE_EXTENSIONS", "GalleryItem", "UnreadableImage", "read_image_bgr", "exif_time", "folder_items",
           "video_items", "open_video", "read_frame", "dataset_items"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class UnreadableImage(Exception):
    """An image file (or video frame) that cannot be decoded; ``str()`` says which and why, ``reason`` why."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclasses.dataclass
class GalleryItem:
    image: str  # path relative to the gallery root ("/"-separated)
    frame: int  # video frame number, -1 for a still image
    load: Callable[[], np.ndarray]  # -> BGR uint8 [H, W, 3]
    camera: Optional[str] = None  # the source's camera name, None when unknown
    read_time: Callable[[], Optional[float]] = lambda: None  # -> POSIX seconds, None when unknown

    @property
    def key(self) -> Tuple[str, int]:
        return (self.image, self.frame)


def to_bgr_uint8(array: np.ndarray, mode: str = "RGB") -> np.ndarray:
    """An 8-bit BGR [H, W, 3] copy of a decoded image array.

    Args:
        array: [H, W] (grey, 8 or 16 bit), [H, W, 3] (``mode`` order) or [H, W, 4] (alpha dropped).
        mode: channel order of a 3 or 4 channel ``array``, "RGB" (PIL) or "BGR" (OpenCV).
    """
    if array.dtype == np.uint16 or array.dtype == np.int32 or array.dtype == np.uint32:
        # 16-bit images hold 0..65535 (PIL's "I" mode too); keep the top 8 bits, as a viewer shows them.
        array = (np.clip(array, 0, 65535) // 257).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"unsupported image shape {array.shape}")
    array = array[:, :, :3]
    return np.ascontiguousarray(array[:, :, ::-1] if mode == "RGB" else array)


def read_image_bgr(path: str) -> np.ndarray:
    """Decode an image file as BGR uint8 [H, W, 3], EXIF orientation applied (as Detectron2's read_image).

    Grey, RGBA, palette and 16-bit images are converted; anything else raises :class:`UnreadableImage`.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img)
            else:
                array = np.asarray(img.convert("RGBA" if "A" in img.getbands() else "RGB"))
        return to_bgr_uint8(array, "RGB")
    except Image.DecompressionBombError as e:
        raise UnreadableImage(path, f"too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL: unidentified, truncated, broken files
        if isinstance(e, FileNotFoundError):
            raise UnreadableImage(path, "no such file") from None
        raise UnreadableImage(path, f"not a readable image ({error_line(e)})") from None


# EXIF tags: DateTimeOriginal (in the Exif IFD, 0x8769), then the file's DateTime (IFD0).
_EXIF_IFD, _DATE_TIME_ORIGINAL, _DATE_TIME = 0x8769, 36867, 306


def exif_time(path: str) -> Optional[float]:
    """POSIX seconds of an image's EXIF DateTimeOriginal (else DateTime), read as UTC; None when the file has
    none or it cannot be parsed (only the header is read)."""
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            text = exif.get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL) or exif.get(_DATE_TIME)
        moment = datetime.datetime.strptime(str(text).strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
    except (OSError, ValueError, SyntaxError, TypeError):
        return None
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def folder_items(root: str, camera: Optional[str] = None) -> Iterator[GalleryItem]:
    """Every image under ``root`` (recursive; extensions in IMAGE_EXTENSIONS, any case), sorted by path; the
    camera is ``camera``, else the first folder under ``root`` (None for images directly in it).

    Raises:
        FileNotFoundError: ``root`` is not a folder. ValueError: it holds no image file.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: not a folder")
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        paths += [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below")
    for path in sorted(paths):
        name = _relative(path, root)
        yield GalleryItem(name, -1, lambda path=path: read_image_bgr(path),
                          camera or (name.split("/")[0] if "/" in name else None), lambda path=path: exif_time(path))


def video_items(path: str, every: int = 1, fps: Optional[float] = None, done=frozenset(),
                camera: Optional[str] = None, start: Optional[float] = None) -> Iterator[GalleryItem]:
    """Frames of a video (OpenCV): one every ``every`` frames, or about ``fps`` frames a second; frames whose
    key is in ``done`` (already indexed) are grabbed but neither decoded nor yielded. The camera is ``camera``
    or the file name; with ``start`` (POSIX seconds of the first frame) a frame's time is start + frame / rate.

    The items must be consumed in order (each ``load`` decodes its frame from the running capture); the
    frames between are grabbed, not decoded. Raises FileNotFoundError / ValueError for a video that does not
    exist or cannot be opened.
    """
    import cv2

    capture = open_video(path)
    rate = capture.get(cv2.CAP_PROP_FPS)
    if start is not None and not (rate and rate > 0):
        raise ValueError(f"{path}: the video does not state its frame rate, so frame times cannot be known")
    if fps is not None:
        if not rate or rate <= 0:
            raise ValueError(f"{path}: the video does not state its frame rate; use --every N instead of --fps")
        every = max(1, int(round(rate / fps)))
    if every < 1:
        raise ValueError(f"one frame every {every} frames: expected a positive number")
    name = os.path.basename(path)
    camera = camera or name
    try:
        frame = 0
        while capture.grab():
            if frame % every == 0 and (name, frame) not in done:
                ok, image = capture.retrieve()
                seconds = None if start is None else start + frame / rate
                if not ok or image is None:
                    def fail(frame=frame):
                        raise UnreadableImage(f"{path}#{frame}", "frame cannot be decoded")
                    yield GalleryItem(name, frame, fail, camera, lambda seconds=seconds: seconds)
                else:
                    yield GalleryItem(name, frame, lambda image=image: to_bgr_uint8(image, "BGR"), camera,
                                      lambda seconds=seconds: seconds)
            frame += 1
    finally:
        capture.release()


def open_video(path: str):
    """An opened ``cv2.VideoCapture``; FileNotFoundError / ValueError naming the file otherwise."""
    import cv2

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such video file")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f"{path}: OpenCV cannot open this file as a video")
    return capture


def read_frame(path: str, frame: int) -> np.ndarray:
    """Frame number ``frame`` of a video, as BGR uint8 [H, W, 3]; :class:`UnreadableImage` when it cannot be
    decoded, FileNotFoundError / ValueError as :func:`open_video`."""
    import cv2

    capture = open_video(path)
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, image = capture.read()
    finally:
        capture.release()
    if not ok or image is None:
        raise UnreadableImage(f"{path}#{frame}", "frame cannot be decoded")
    return to_bgr_uint8(image, "BGR")


def dataset_items(name: str) -> Tuple[str, Iterator[GalleryItem]]:
    """(gallery root, items) of a registered Detectron2 dataset: its distinct image files, in its order.

    The root is the deepest folder holding every image, so an item's path is relative to it; an item's camera
    is its dict's ``camera`` (MOT sequences have one), else unknown.
    """
    from detectron2.data import DatasetCatalog

    if name not in DatasetCatalog.list():
        raise KeyError(f"dataset {name!r} is not registered (registered: {', '.join(sorted(DatasetCatalog.list()))})")
    cameras = {os.path.abspath(d["file_name"]): d.get("camera") for d in DatasetCatalog.get(name)}
    files = list(cameras)
    if not files:
        raise ValueError(f"dataset {name!r} has no images")
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    return root, (GalleryItem(_relative(f, root), -1, lambda f=f: read_image_bgr(f), cameras[f]) for f in files)

"""A randomly initialised tiny model saved as training leaves it, and a small gallery of scene images."""
import os

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from dcinet_d2.testing import save_tiny_model

    return save_tiny_model(str(tmp_path_factory.mktemp("tiny_model")))


def scene(seed, h=120, w=160):
    """A BGR uint8 scene: textured background and a few person-sized blocks."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (9, 9), 0)
    for _ in range(3):
        x, y = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 60))
        img[y:y + 60, x:x + 25] = rng.integers(0, 256, 3)
    return img


@pytest.fixture(scope="session")
def gallery(tmp_path_factory):
    """8 good images (among them grey, RGBA and 16-bit ones, a sub-folder with a space) and 3 broken files."""
    root = tmp_path_factory.mktemp("gallery")
    os.makedirs(root / "cam 2")
    for i in range(5):
        cv2.imwrite(str(root / (f"s{i}.jpg" if i < 3 else f"cam 2/s{i}.PNG")), scene(i))
    cv2.imwrite(str(root / "grey.png"), cv2.cvtColor(scene(5), cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "rgba.png"), cv2.cvtColor(scene(6), cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(root / "deep.png"), scene(7).astype(np.uint16) * 257)
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    good = (root / "s0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    return root


@pytest.fixture(scope="session")
def served_index(tiny_model, tmp_path_factory):
    """(index folder, gallery root) for the review server: 6 scenes (two in "cam 2/"; f0..f2 with EXIF
    DateTime 2026-01-02 10:00, 10:05, 10:10) and ``link.jpg``, a symbolic link to an image outside the gallery
    root (indexed, never to be served)."""
    from PIL import Image

    from dcinet_d2.search.cli import main

    base = tmp_path_factory.mktemp("served")
    root, outside = base / "gallery", base / "outside"
    os.makedirs(root / "cam 2")
    os.makedirs(outside)
    for i in range(6):
        cv2.imwrite(str(root / (f"f{i}.jpg" if i < 4 else f"cam 2/f{i}.jpg")), scene(10 + i, 240, 320))
    for i in range(3):
        with Image.open(root / f"f{i}.jpg") as img:
            exif = Image.Exif()
            exif[306] = f"2026:01:02 10:{5 * i:02d}:00"  # DateTime
            img.save(root / f"f{i}.jpg", exif=exif, quality=95)
    cv2.imwrite(str(outside / "secret.jpg"), scene(99))
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    out = base / "index"
    code = main(["index", "--config-file", tiny_model[0], "--weights", tiny_model[1], "--images", str(root),
                 "--out", str(out), "--det-thresh", "0.3", "--quiet", "--device", "cpu"])
    assert code == 0
    return out, root


@pytest.fixture(scope="session")
def served_video_index(tiny_model, tmp_path_factory):
    """(index folder, gallery root) of ``gate.avi``: 16 frames at 4 frames a second, started 2026-01-02
    10:00:00 UTC, every frame indexed."""
    from dcinet_d2.search.cli import main

    base = tmp_path_factory.mktemp("served_video")
    root = base / "videos"
    os.makedirs(root)
    writer = cv2.VideoWriter(str(root / "gate.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (320, 240))
    for i in range(16):
        frame = scene(50, 240, 320)
        frame[100:180, 10 + 15 * i:40 + 15 * i] = (40, 40, 200)  # someone walking through
        writer.write(frame)
    writer.release()
    out = base / "index"
    code = main(["index", "--config-file", tiny_model[0], "--weights", tiny_model[1], "--video",
                 str(root / "gate.avi"), "--video-start", "2026-01-02T10:00:00Z", "--out", str(out),
                 "--det-thresh", "0.3", "--quiet", "--device", "cpu"])
    assert code == 0
    return out, root

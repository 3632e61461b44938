"""Gallery sources: image decoding of every pixel format, broken files, folders, videos."""
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from dcinet_d2.search.sources import UnreadableImage, folder_items, read_image_bgr, video_items


def _rgb(h=20, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_comes_back_bgr(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image_bgr(str(tmp_path / "a.png")), rgb[:, :, ::-1])


def test_grey_rgba_palette_and_16bit(tmp_path):
    grey = _rgb()[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image_bgr(str(tmp_path / "g.png"))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and (out == grey[:, :, None]).all()
    rgba = np.dstack([_rgb(), np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image_bgr(str(tmp_path / "a.png")), rgba[:, :, 2::-1])
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    assert read_image_bgr(str(tmp_path / "p.png")).shape == (20, 30, 3)
    deep = (grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "d.png"), deep)  # 16-bit grey
    np.testing.assert_array_equal(read_image_bgr(str(tmp_path / "d.png"))[:, :, 0], grey)
    cv2.imwrite(str(tmp_path / "d3.png"), np.dstack([deep] * 3))  # 16-bit colour
    np.testing.assert_array_equal(read_image_bgr(str(tmp_path / "d3.png"))[:, :, 1], grey)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image_bgr(str(tmp_path / "r.jpg")).shape == (30, 20, 3)


@pytest.mark.parametrize("content,why", [(b"", "not a readable image"), (b"hello", "not a readable image")])
def test_broken_files_raise_unreadable(tmp_path, content, why):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(UnreadableImage, match=why) as e:
        read_image_bgr(str(tmp_path / "x.jpg"))
    assert "x.jpg" in str(e.value)


def test_truncated_jpeg_raises_unreadable(tmp_path):
    Image.fromarray(_rgb(200, 200)).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="t.jpg"):
        read_image_bgr(str(tmp_path / "t.jpg"))


def test_folder_items_recursive_any_case_sorted(tmp_path):
    for rel in ["b/one.JPG", "a.png", "b/c/two.WebP", "notes.txt", "b/three.bmp", "x.jpeg"]:
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        Image.fromarray(_rgb()).save(tmp_path / rel, format="PNG") if not rel.endswith(".txt") else \
            (tmp_path / rel).write_text("x")
    names = [item.image for item in folder_items(str(tmp_path))]
    assert names == ["a.png", "b/c/two.WebP", "b/one.JPG", "b/three.bmp", "x.jpeg"]
    assert all(item.frame == -1 for item in folder_items(str(tmp_path)))


def test_folder_without_images_and_missing_folder(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        list(folder_items(str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list(folder_items(str(tmp_path / "missing")))


def _video(path, frames=10, fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 24))
    for i in range(frames):
        writer.write(np.full((24, 32, 3), i * 20, np.uint8))
    writer.release()


def test_video_every_n_frames_and_fps_and_done(tmp_path):
    _video(tmp_path / "v.avi")
    items = list(video_items(str(tmp_path / "v.avi"), every=3))
    assert [i.frame for i in items] == [0, 3, 6, 9] and {i.image for i in items} == {"v.avi"}
    assert abs(int(items[1].load().mean()) - 60) <= 3
    assert [i.frame for i in video_items(str(tmp_path / "v.avi"), fps=5.0)] == [0, 2, 4, 6, 8]
    assert [i.frame for i in video_items(str(tmp_path / "v.avi"), every=3, done={("v.avi", 3)})] == [0, 6, 9]


def test_video_that_cannot_be_opened(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open"):
        list(video_items(str(tmp_path / "bad.mp4")))
    with pytest.raises(FileNotFoundError, match="no such video"):
        list(video_items(str(tmp_path / "missing.mp4")))


def test_cameras_from_folders_or_given_and_exif_times(tmp_path):
    os.makedirs(tmp_path / "door" / "day1")
    Image.new("RGB", (8, 8)).save(tmp_path / "top.jpg")
    exif = Image.Exif()
    exif[306] = "2026:01:02 10:00:00"
    Image.new("RGB", (8, 8)).save(tmp_path / "door" / "day1" / "a.jpg", exif=exif)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2026:01:02 11:30:15"  # DateTimeOriginal wins over DateTime
    exif[306] = "2030:01:01 00:00:00"
    Image.new("RGB", (8, 8)).save(tmp_path / "door" / "b.jpg", exif=exif)
    exif = Image.Exif()
    exif[306] = "not a date"
    Image.new("RGB", (8, 8)).save(tmp_path / "door" / "c.jpg", exif=exif)
    items = {i.image: i for i in folder_items(str(tmp_path))}
    assert {k: i.camera for k, i in items.items()} == {"door/b.jpg": "door", "door/c.jpg": "door",
                                                        "door/day1/a.jpg": "door", "top.jpg": None}
    assert items["door/day1/a.jpg"].read_time() == 1_767_348_000.0
    assert items["door/b.jpg"].read_time() == 1_767_348_000.0 + 90 * 60 + 15
    assert items["door/c.jpg"].read_time() is None and items["top.jpg"].read_time() is None
    assert {i.camera for i in folder_items(str(tmp_path), camera="lobby")} == {"lobby"}


def test_video_camera_and_frame_times_from_the_start(tmp_path):
    _video(tmp_path / "v.avi")
    items = list(video_items(str(tmp_path / "v.avi"), every=3, start=1_767_348_000.0))
    assert {i.camera for i in items} == {"v.avi"}
    assert [i.read_time() for i in items] == pytest.approx([1_767_348_000.0 + f / 10 for f in (0, 3, 6, 9)])
    assert all(i.read_time() is None for i in video_items(str(tmp_path / "v.avi"), every=5, camera="gate"))
    assert {i.camera for i in video_items(str(tmp_path / "v.avi"), every=5, camera="gate")} == {"gate"}

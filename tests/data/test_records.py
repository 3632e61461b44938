"""The dataset-dict building every format shares: image sizes from headers, and what an unreadable header does."""
import numpy as np
import pytest
from PIL import Image

from dcinet_d2.data.records import build_dataset_dicts, image_sizes


def test_sizes_come_from_headers_and_missing_images_are_absent(tmp_path):
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.jpg")
    assert image_sizes(str(tmp_path), ["a.jpg", "gone.jpg"]) == {"a.jpg": (30, 40)}


def test_truncated_image_header_is_named(tmp_path):
    """A file cut inside its header: PIL says "Truncated File Read", naming no file; the error names it."""
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:40])
    records = [{"image_id": "cut.jpg", "boxes": np.zeros((0, 4)), "person_ids": []}]
    with pytest.raises(ValueError, match=r"cut\.jpg: not a readable image \(Truncated File Read\)"):
        build_dataset_dicts("toy", str(tmp_path), records)

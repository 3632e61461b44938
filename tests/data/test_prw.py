"""PRW parsers and dataset dicts on a small tree in the exact format (tests/data/fixtures.py)."""
import logging
import os

import numpy as np
import pytest
import scipy.io as sio
from detectron2.data import DatasetCatalog, MetadataCatalog

import toy_datasets as fx
from dcinet_d2.data import builtin
from dcinet_d2.data.prw import (
    camera_id,
    load_prw,
    read_annotation,
    read_frame_names,
    read_queries,
    read_split_annotations,
    register_prw,
)
from dcinet_d2.data.writers import write_prw


TRAIN = ["c1s1_000100.jpg", "c2s1_000200.jpg", "c3s1_000300.jpg"]
TEST = ["c1s2_000400.jpg", "c2s2_000500.jpg", "c3s2_000600.jpg", "c1s3_000700.jpg"]


@pytest.fixture()
def root(tmp_path):
    return fx.write_toy_prw(tmp_path)


def _annotation_path(root, name):
    return os.path.join(root, "annotations", name + ".mat")


def _pids(d):
    return [a["person_id"] for a in d["annotations"]]


def _warnings(caplog, text):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# ----------------------------------------------------------------------------- parsers
def test_camera_id():
    assert camera_id("c3s2_012437.jpg") == 3
    assert camera_id("/x/frames/c6s1_000001.jpg") == 6
    with pytest.raises(ValueError, match="c<camera digit>"):
        camera_id("s1_000001.jpg")


def test_frame_names(root):
    assert read_frame_names(root, "train") == TRAIN
    assert read_frame_names(root, "test") == TEST
    with pytest.raises(ValueError):
        read_frame_names(root, "gallery")


def test_annotation_key_fallbacks_and_ids(root):
    boxes, ids = read_annotation(_annotation_path(root, "c2s1_000200.jpg"))  # key anno_file
    assert ids.tolist() == [42, 17]
    np.testing.assert_array_equal(boxes, [[10, 5, 30, 45], [30, 0, 50, 40]])  # y = -2 clipped before adding h
    boxes, ids = read_annotation(_annotation_path(root, "c2s2_000500.jpg"))  # key anno_previous
    assert ids.tolist() == [301, 733] and boxes.tolist() == [[12, 6, 32, 46], [45, 5, 65, 45]]
    boxes, ids = read_annotation(_annotation_path(root, "c1s1_000100.jpg"))  # box_new, id -2 kept raw
    assert ids.tolist() == [17, -2, 5]
    assert boxes[2].tolist() == [0, 3, 20, 43]  # x = -4 clipped to 0, then x2 = 0 + w as the field's loaders


def test_box_new_takes_priority(root):
    path = _annotation_path(root, "c3s2_000600.jpg")
    sio.savemat(path, {"anno_previous": np.array([[1.0, 0, 0, 5, 5]]), "box_new": np.array([[9.0, 1, 1, 5, 5]])})
    assert read_annotation(path)[1].tolist() == [9]


def test_annotation_errors(root):
    path = _annotation_path(root, "c3s2_000600.jpg")
    sio.savemat(path, {"boxes": np.zeros((1, 5))})
    with pytest.raises(ValueError, match=r"c3s2_000600\.jpg\.mat: none of the keys .*box_new.* \(found \['boxes'\]\)"):
        read_annotation(path)
    sio.savemat(path, {"box_new": np.zeros((2, 4))})
    with pytest.raises(ValueError, match=r"c3s2_000600\.jpg\.mat: 'box_new' has shape \(2, 4\)"):
        read_annotation(path)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=r"c3s2_000600\.jpg\.mat: not found"):
        load_prw(root, "gallery")


def test_empty_annotation(root):
    path = _annotation_path(root, "c3s2_000600.jpg")
    sio.savemat(path, {"box_new": np.zeros((0, 0))})
    boxes, ids = read_annotation(path)
    assert boxes.shape == (0, 4) and ids.shape == (0,)


def test_split_annotations(root):
    annotations = read_split_annotations(root, "test")
    assert list(annotations) == TEST
    assert sum(len(ids) for _, ids in annotations.values()) == 7


def test_read_queries_crlf(root):
    queries = read_queries(root)
    assert [(q["pid"], q["query_image"]) for q in queries] == [(p, n) for p, n in fx.PRW_QUERIES]
    assert queries[0]["query_box"].tolist() == [10, 5, 30, 45]
    assert queries[2]["query_box"].tolist() == [0, 2, 15, 32]  # x = -5: x1 clipped, x2 = x + w kept


def test_read_queries_lf_and_malformed(tmp_path):
    (tmp_path / "query_info.txt").write_bytes(b"5 1 2 3 4 c1s1_000001\n\n7 0.5 1 2 3 c2s1_000002")
    assert [(q["pid"], q["query_image"], q["query_box"].tolist()) for q in read_queries(str(tmp_path))] == [
        (5, "c1s1_000001.jpg", [1, 2, 4, 6]), (7, "c2s1_000002.jpg", [0.5, 1, 2.5, 4])]
    (tmp_path / "query_info.txt").write_bytes(b"5 1 2 3 4 c1s1_000001\r\n5 1 2 x 4 c1s1_000001\r\n")
    with pytest.raises(ValueError, match=r"query_info\.txt: line 2: .* is not 'id x y w h frame'"):
        read_queries(str(tmp_path))


def test_missing_files(root):
    os.remove(os.path.join(root, "frame_test.mat"))
    with pytest.raises(FileNotFoundError, match=r"frame_test\.mat: not found \(expected the PRW test frame list\)"):
        load_prw(root, "gallery")
    os.remove(os.path.join(root, "query_info.txt"))
    with pytest.raises(FileNotFoundError, match=r"query_info\.txt: not found"):
        load_prw(root, "query")
    sio.savemat(os.path.join(root, "frame_train.mat"), {"img_index": np.zeros((1, 1))})
    with pytest.raises(ValueError, match=r"frame_train\.mat: no variable 'img_index_train'"):
        load_prw(root, "train")


# ----------------------------------------------------------------------------- dataset dicts
def test_train_split(root, caplog):
    with caplog.at_level(logging.WARNING):
        dicts = load_prw(root, "train")
    assert [d["image_id"] for d in dicts] == TRAIN
    assert [d["camera_id"] for d in dicts] == [1, 2, 3]
    assert sum(len(d["annotations"]) for d in dicts) == 6  # 7 boxes, one of zero width
    # raw ids 5, 17, 42 -> 0, 1, 2; -2 -> -1
    assert [_pids(d) for d in dicts] == [[1, -1, 0], [2, 1], [0]]
    assert dicts[0]["annotations"][2]["bbox"] == [0.0, 3.0, 20.0, 43.0]
    assert len(_warnings(caplog, "2 boxes partly outside their image were clipped")) == 1
    assert len(_warnings(caplog, "1 boxes of zero area (after clipping) were dropped")) == 1


def test_gallery_split(root, caplog):
    with caplog.at_level(logging.WARNING):
        dicts = load_prw(root, "gallery")
    assert [d["image_id"] for d in dicts] == TEST
    assert [d["camera_id"] for d in dicts] == [1, 2, 3, 1]
    assert [_pids(d) for d in dicts] == [[301, -1], [301, 733], [733], [-1, 301]]
    assert sum(p >= 0 for d in dicts for p in _pids(d)) == 5
    assert len(_warnings(caplog, "1 boxes partly outside their image were clipped")) == 1
    assert (dicts[0]["height"], dicts[0]["width"]) == (60, 90)


def test_query_split(root):
    queries = load_prw(root, "query")
    assert [(q["image_id"], q["query_index"], q["camera_id"], _pids(q)) for q in queries] == [
        ("c1s2_000400.jpg", 0, 1, [301]), ("c3s2_000600.jpg", 1, 3, [733]), ("c1s3_000700.jpg", 2, 1, [301])]
    assert queries[2]["annotations"][0]["bbox"] == [0.0, 2.0, 15.0, 32.0]


def test_missing_frame_dropped_and_counted_once(root, caplog):
    os.remove(os.path.join(root, "frames", "c2s2_000500.jpg"))
    with caplog.at_level(logging.WARNING):
        dicts = load_prw(root, "gallery")
    assert [d["image_id"] for d in dicts] == [TEST[0], TEST[2], TEST[3]]
    assert len(_warnings(caplog, "1 images missing")) == 1


def test_register(root):
    register_prw("test_prw_toy", root)
    meta = MetadataCatalog.get("test_prw_toy_gallery")
    assert (meta.thing_classes, meta.evaluator_type, meta.dataset_format, meta.root, meta.split, meta.query_set) == (
        ["person"], "person_search", "prw", root, "gallery", "test_prw_toy_query")
    assert len(DatasetCatalog.get("test_prw_toy_train")) == 3
    assert MetadataCatalog.get("test_prw_toy_train").num_identities == 3
    assert len(DatasetCatalog.get("test_prw_toy_query")) == 3


def test_builtin_names():
    for prefix, folder in [("prw", "prw"), ("synth_prw", "synthetic_prw")]:
        for split in ("train", "gallery", "query"):
            meta = MetadataCatalog.get(f"{prefix}_{split}")
            assert f"{prefix}_{split}" in DatasetCatalog.list()
            assert meta.root == os.path.join(builtin.datasets_root(), folder) and meta.dataset_format == "prw"


# ----------------------------------------------------------------------------- round trip
def test_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    raw_ids = [3, 8, 21, 22, 90, 400, 401, 987]
    scenes = []
    for i in range(16):
        n = int(rng.integers(1, 4))
        boxes = np.concatenate([rng.integers(0, 40, (n, 2)), rng.integers(1, 20, (n, 2))], 1).astype(float)
        pids = [int(p) if rng.random() < 0.7 else -2 for p in rng.choice(raw_ids, n, replace=False)]
        scenes.append(fx.scene(f"c{i % 6 + 1}s1_{i:06d}.jpg", boxes, pids, camera=i % 6 + 1))
    train = {s["name"] for s in scenes[:8]}
    queries = [(p, s["name"]) for s in scenes[8:] for p in s["pids"] if p >= 0]
    write_prw(str(tmp_path), scenes, train_names=train, queries=queries)
    train_ids = sorted({p for s in scenes[:8] for p in s["pids"] if p >= 0})
    for split, part in (("train", scenes[:8]), ("gallery", scenes[8:])):
        dicts = load_prw(str(tmp_path), split)
        assert [d["image_id"] for d in dicts] == [s["name"] for s in part]
        for d, s in zip(dicts, part):
            boxes = s["boxes"].copy()
            boxes[:, 2:] += boxes[:, :2]
            np.testing.assert_array_equal([a["bbox"] for a in d["annotations"]], boxes)
            expected = [-1 if p < 0 else train_ids.index(p) if split == "train" else p for p in s["pids"]]
            assert _pids(d) == expected and d["camera_id"] == s["camera"]
    back = load_prw(str(tmp_path), "query")
    assert [(q["annotations"][0]["person_id"], q["image_id"]) for q in back] == queries

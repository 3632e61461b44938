"""CUHK-SYSU parsers and dataset dicts on a small tree in the exact format (tests/data/fixtures.py)."""
import logging
import os

import numpy as np
import pytest
import scipy.io as sio
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import toy_datasets as fx
from dcinet_d2.data import builtin
from dcinet_d2.data.cuhk_sysu import (
    check_same_queries,
    identity_number,
    load_cuhk_sysu,
    parse_images_mat,
    parse_pool_mat,
    parse_test_protocol_mat,
    protocol_gallery_sizes,
    read_images,
    read_pool,
    read_test_protocol,
    read_train_identities,
    register_cuhk_sysu,
)
from dcinet_d2.data.writers import matlab_struct, write_cuhk_sysu


@pytest.fixture()
def root(tmp_path):
    return fx.write_toy_cuhk(tmp_path)


def _by_name(dicts):
    return {d["image_id"]: d for d in dicts}


def _pids(d):
    return [a["person_id"] for a in d["annotations"]]


def _warnings(caplog, text):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# ----------------------------------------------------------------------------- parsers
def test_read_images_drops_zero_size_boxes(root, caplog):
    with caplog.at_level(logging.WARNING):
        images = read_images(root)
    assert list(images) == [n for n, _, _ in fx.CUHK_SCENES]
    assert sum(len(b) for b in images.values()) == 18  # 19 boxes, one of zero width
    np.testing.assert_array_equal(images["s2.jpg"], [[10, 5, 30, 45], [50, 10, 70, 50]])
    np.testing.assert_array_equal(images["s4.jpg"], [[5, 5, 25, 45], [-3, 10, 17, 40]])  # not clipped here
    assert _warnings(caplog, "1 boxes with zero or negative width/height dropped")
    assert not images["s1.jpg"].flags.writeable


def test_read_pool_and_train(root):
    assert read_pool(root) == [f"s{i}.jpg" for i in range(5, 11)]
    train = read_train_identities(root)
    assert [t[0] for t in train] == ["p100", "p101", "p102"]
    assert [[(n, b.tolist()) for n, b in apps] for _, apps in train][1] == [
        ("s1.jpg", [40, 5, 60, 45]), ("s3.jpg", [5, 5, 25, 45])]


def test_read_test_protocol(root):
    assert protocol_gallery_sizes(root) == [3, 5]
    queries = read_test_protocol(root, 5)
    assert [(q["query_image"], q["pid"]) for q in queries] == [("s5.jpg", "p200"), ("s6.jpg", "p201")]
    assert queries[0]["query_box"].dtype == np.int32
    assert queries[1]["query_box"].tolist() == [45, 5, 65, 45]
    gallery = queries[0]["gallery"]
    assert [(n, None if b is None else b.tolist()) for n, b in gallery[:2]] == [
        ("s6.jpg", [12, 6, 32, 46]), ("s9.jpg", [5, 5, 25, 45])]
    assert sorted(n for n, b in gallery[2:]) == ["s10.jpg", "s7.jpg", "s8.jpg"]
    assert all(b is None for _, b in gallery[2:])
    assert [n for n, _ in read_test_protocol(root, 3)[0]["gallery"]] == [n for n, _ in gallery[:3]]


def test_uint16_idlocate_is_added_in_a_signed_type(tmp_path):
    fx.write_protocol(tmp_path, 50, [(("s1.jpg", [65000, 10, 1000, 20], "p7"),
                                      [("s2.jpg", [60000, 0, 6000, 65535]), ("s3.jpg", np.zeros((1, 0)))])])
    (query,) = read_test_protocol(str(tmp_path), 50)
    assert query["query_box"].tolist() == [65000, 10, 66000, 30]  # uint16 arithmetic would wrap x2 to 464
    assert query["gallery"][0][1].tolist() == [60000, 0, 66000, 65535]
    assert query["gallery"][1] == ("s3.jpg", None)


def test_empty_idlocate_as_matlab_empty_matrix(root):
    fx.empty_idlocate_as(root, 5, np.zeros((0, 0)))
    gallery = read_test_protocol(root, 5)[0]["gallery"]
    assert sio.loadmat(fx.protocol_path(root, 5))["TestG5"][0, 0]["Gallery"][0, 3]["idlocate"].shape == (0, 0)
    assert [b is None for _, b in gallery] == [False, False, True, True, True]


def test_image_listed_twice_in_a_gallery_is_kept(tmp_path):
    fx.write_protocol(tmp_path, 4, [(("s1.jpg", [1, 2, 3, 4], "p9"),
                                     [("s2.jpg", [5, 5, 5, 5]), ("s3.jpg", np.zeros((1, 0))),
                                      ("s3.jpg", np.zeros((1, 0))), ("s1.jpg", np.zeros((1, 0)))])])
    (query,) = read_test_protocol(str(tmp_path), 4)
    assert [n for n, _ in query["gallery"]] == ["s2.jpg", "s3.jpg", "s3.jpg", "s1.jpg"]


def test_protocol_files_must_share_their_queries(root):
    fx.swap_queries(root, 5)
    read_test_protocol(root, 3)
    with pytest.raises(ValueError, match=r"TestG5.mat: its queries differ from those of TestG3.mat"):
        read_test_protocol(root, 5)


def test_parse_test_protocol_mat(root):
    arrays = parse_test_protocol_mat(fx.protocol_path(root, 5), 5)
    assert arrays["query_images"].tolist() == ["s5.jpg", "s6.jpg"] and arrays["query_pids"].tolist() == ["p200", "p201"]
    assert arrays["query_boxes"].dtype == np.int32 and arrays["query_boxes"].tolist() == [[10, 5, 30, 45],
                                                                                          [45, 5, 65, 45]]
    assert arrays["gallery_offsets"].tolist() == [0, 5, 10]
    names = arrays["image_names"][arrays["gallery_images"]].tolist()
    assert sorted(arrays["image_names"].tolist()) == arrays["image_names"].tolist()
    assert names[:2] == ["s6.jpg", "s9.jpg"] and sorted(names[2:5]) == ["s10.jpg", "s7.jpg", "s8.jpg"]
    assert arrays["gallery_has_box"][:5].tolist() == [True, True, False, False, False]
    assert arrays["gallery_boxes"].dtype == np.int32
    assert arrays["gallery_boxes"][:5].tolist() == [[12, 6, 32, 46], [5, 5, 25, 45]] + [[0, 0, 0, 0]] * 3
    # the same entries as read_test_protocol, which is built on these arrays
    query = read_test_protocol(root, 5)[1]
    assert [(n, None if b is None else b.tolist()) for n, b in query["gallery"]] == [
        (n, b.tolist() if has else None) for n, b, has in zip(names[5:], arrays["gallery_boxes"][5:],
                                                             arrays["gallery_has_box"][5:])]


def test_parse_images_and_pool_mat(root):
    arrays = parse_images_mat(os.path.join(root, "annotation", "Images.mat"))
    assert arrays["names"].tolist() == [n for n, _, _ in fx.CUHK_SCENES]
    assert arrays["counts"].tolist() == [3, 2, 3, 2, 2, 2, 1, 1, 1, 1] and int(arrays["num_dropped"]) == 1
    assert arrays["boxes"].dtype == np.float64 and arrays["boxes"][3:5].tolist() == [[10, 5, 30, 45],
                                                                                     [50, 10, 70, 50]]
    pool = parse_pool_mat(os.path.join(root, "annotation", "pool.mat"))
    assert pool["names"].tolist() == [f"s{i}.jpg" for i in range(5, 11)]


def test_check_same_queries(root):
    small = parse_test_protocol_mat(fx.protocol_path(root, 3), 3)
    large = parse_test_protocol_mat(fx.protocol_path(root, 5), 5)
    check_same_queries(large, small, "TestG5.mat", "/x/TestG3.mat")
    fx.swap_queries(root, 5)
    with pytest.raises(ValueError, match=r"TestG5.mat: its queries differ from those of TestG3.mat"):
        check_same_queries(parse_test_protocol_mat(fx.protocol_path(root, 5), 5), small, "TestG5.mat",
                           "/x/TestG3.mat")


def test_malformed_gallery_entries(tmp_path):
    fx.write_protocol(tmp_path, 4, [
        (("s1.jpg", [1, 2, 3, 4], "p9"), [("s2.jpg", [5, 5, 5, 5])]),
        (("s2.jpg", [1, 2, 3, 4], "p8"), [("s1.jpg", [5, 5, 5, 5]), ("s3.jpg", [1, 2, 3])])])
    with pytest.raises(ValueError, match=r"TestG4\.mat: query 1, gallery entry 1: idlocate has 3 values"):
        read_test_protocol(str(tmp_path), 4)
    fx.write_protocol(tmp_path, 5, [(("s1.jpg", [1, 2, 3, 4], "p9"), [("s2.jpg", [5, 5, 5, 5]), ("", [])])])
    with pytest.raises(ValueError, match=r"TestG5\.mat: query 0: a gallery entry has no image name"):
        parse_test_protocol_mat(fx.protocol_path(tmp_path, 5), 5)


def test_identity_number():
    assert identity_number("p5533") == 5533
    with pytest.raises(ValueError, match="no digits"):
        identity_number("anna")


# ----------------------------------------------------------------------------- bad input
def test_missing_files(root):
    os.remove(os.path.join(root, "annotation", "pool.mat"))
    with pytest.raises(FileNotFoundError, match=r"pool\.mat: not found"):
        load_cuhk_sysu(root, "gallery")
    with pytest.raises(FileNotFoundError, match=r"TestG50\.mat: not found"):
        read_test_protocol(root, 50)


def test_missing_key(root):
    path = os.path.join(root, "annotation", "Images.mat")
    sio.savemat(path, {"Images": np.zeros((1, 1))})
    with pytest.raises(ValueError, match=r"Images\.mat: no variable 'Img' \(found \['Images'\]\)"):
        read_images(root)


def test_malformed_box(root):
    box = matlab_struct([(np.array([[1.0, 2.0, 3.0]]), np.array([[0.0]]))], ["idlocate", "ishard"])
    img = matlab_struct([("s1.jpg", np.array([[1.0]]), box)], ["imname", "nAppear", "box"])
    sio.savemat(os.path.join(root, "annotation", "Images.mat"), {"Img": img})
    with pytest.raises(ValueError, match=r"Images\.mat: image s1\.jpg: a box idlocate has 3 values"):
        read_images(root)


def test_missing_image_dropped_and_counted_once(root, caplog):
    os.remove(os.path.join(root, "Image", "SSM", "s8.jpg"))
    with caplog.at_level(logging.WARNING):
        dicts = load_cuhk_sysu(root, "gallery")
    assert len(dicts) == 5 and "s8.jpg" not in _by_name(dicts)
    assert len(_warnings(caplog, "1 images missing")) == 1


# ----------------------------------------------------------------------------- dataset dicts
def test_train_split(root, caplog):
    with caplog.at_level(logging.WARNING):
        dicts = load_cuhk_sysu(root, "train")
    d = _by_name(dicts)
    assert list(d) == ["s1.jpg", "s2.jpg", "s3.jpg", "s4.jpg"]
    assert sum(len(x["annotations"]) for x in dicts) == 10
    assert [_pids(d[n]) for n in d] == [[0, 1, -1], [0, -1], [1, 2, -1], [2, -1]]
    assert d["s3.jpg"]["annotations"][2]["bbox"] == [80.0, 20.0, 90.0, 50.0]  # x2 = 110 clipped to the width
    assert d["s4.jpg"]["annotations"][1]["bbox"] == [0.0, 10.0, 17.0, 40.0]  # negative x clipped
    assert len(_warnings(caplog, "2 boxes partly outside their image were clipped")) == 1
    first = d["s1.jpg"]
    assert first["file_name"] == os.path.abspath(os.path.join(root, "Image", "SSM", "s1.jpg"))
    assert (first["height"], first["width"]) == (60, 90)
    assert first["annotations"][0] == {"bbox": [10.0, 5.0, 30.0, 45.0], "bbox_mode": BoxMode.XYXY_ABS,
                                       "category_id": 0, "person_id": 0}


def test_gallery_split(root):
    d = _by_name(load_cuhk_sysu(root, "gallery"))
    assert list(d) == [f"s{i}.jpg" for i in range(5, 11)]
    assert sum(len(x["annotations"]) for x in d.values()) == 8
    assert {n: _pids(x) for n, x in d.items()} == {
        "s5.jpg": [200, -1], "s6.jpg": [200, 201], "s7.jpg": [201], "s8.jpg": [-1], "s9.jpg": [200], "s10.jpg": [-1]}
    assert (d["s9.jpg"]["height"], d["s9.jpg"]["width"]) == (60, 100)  # from the JPEG header


def test_query_split(root):
    queries = load_cuhk_sysu(root, "query")
    assert [(q["image_id"], q["query_index"], _pids(q)) for q in queries] == [
        ("s5.jpg", 0, [200]), ("s6.jpg", 1, [201])]
    assert queries[0]["annotations"][0]["bbox"] == [10.0, 5.0, 30.0, 45.0]


def test_bad_split(root):
    with pytest.raises(ValueError, match="not one of"):
        load_cuhk_sysu(root, "test")


def test_register(root):
    register_cuhk_sysu("test_cuhk_toy", root)
    meta = MetadataCatalog.get("test_cuhk_toy_gallery")
    assert (meta.thing_classes, meta.evaluator_type, meta.dataset_format, meta.root, meta.split, meta.query_set) == (
        ["person"], "person_search", "cuhk_sysu", root, "gallery", "test_cuhk_toy_query")
    assert len(DatasetCatalog.get("test_cuhk_toy_train")) == 4
    assert MetadataCatalog.get("test_cuhk_toy_train").num_identities == 3
    assert len(DatasetCatalog.get("test_cuhk_toy_query")) == 2


def test_builtin_names():
    for prefix, folder, register in [("cuhk_sysu", "cuhk_sysu", "cuhk_sysu"), ("synth_cuhk_sysu", "synthetic_cuhk_sysu",
                                                                             "cuhk_sysu")]:
        for split in ("train", "gallery", "query"):
            assert f"{prefix}_{split}" in DatasetCatalog.list()
            meta = MetadataCatalog.get(f"{prefix}_{split}")
            assert meta.root == os.path.join(builtin.datasets_root(), folder) and meta.dataset_format == register


def test_datasets_root_from_environment(monkeypatch):
    monkeypatch.setenv("DCINET_DATASETS", "/data/sets")
    assert builtin.datasets_root() == "/data/sets"
    monkeypatch.delenv("DCINET_DATASETS")
    assert builtin.datasets_root() == "datasets"


# ----------------------------------------------------------------------------- round trip
def _random_scenes(rng, n_images, n_train):
    scenes = []
    for i in range(n_images):
        height, width = rng.integers(40, 80), rng.integers(40, 80)
        n = int(rng.integers(1, 5))
        xy = rng.integers(0, 20, (n, 2))
        wh = rng.integers(1, 20, (n, 2))
        pool = range(10) if i < n_train else range(50, 56)
        pids = [int(p) if rng.random() < 0.7 else -1 for p in rng.choice(pool, n, replace=False)]
        scenes.append(dict(name=f"s{i}.jpg", image=fx.image(height, width, seed=i),
                           boxes=np.concatenate([xy, wh], 1).astype(float), pids=pids))
    return scenes


def test_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    scenes = _random_scenes(rng, 24, 12)
    test = {s["name"] for s in scenes[12:]}
    first = {}
    for s in scenes[12:]:
        for p in s["pids"]:
            if p >= 0:
                first.setdefault(p, s["name"])
    queries = sorted(first.items())
    write_cuhk_sysu(str(tmp_path), scenes, test_names=test, queries=queries, gallery_sizes=(4,))
    train_ids = sorted({p for s in scenes[:12] for p in s["pids"] if p >= 0})
    for split, part in (("train", scenes[:12]), ("gallery", scenes[12:])):
        dicts = load_cuhk_sysu(str(tmp_path), split)
        assert [d["image_id"] for d in dicts] == [s["name"] for s in part]
        for d, s in zip(dicts, part):
            boxes = s["boxes"].copy()
            boxes[:, 2:] += boxes[:, :2]
            np.testing.assert_array_equal([a["bbox"] for a in d["annotations"]], boxes)
            expected = [train_ids.index(p) if p >= 0 and split == "train" else p for p in s["pids"]]
            assert _pids(d) == expected
            assert (d["height"], d["width"]) == s["image"].shape[:2]
    queries_back = load_cuhk_sysu(str(tmp_path), "query")
    assert [(q["annotations"][0]["person_id"], q["image_id"]) for q in queries_back] == queries

"""The writers produce the real files' layouts: read back here the way the field's public loaders index them."""
import logging
import os

import numpy as np
import pytest
import scipy.io as sio

import toy_datasets as fx
from dcinet_d2.data.writers import write_cuhk_sysu, write_prw


@pytest.fixture()
def cuhk(tmp_path):
    return fx.write_toy_cuhk(tmp_path)


@pytest.fixture()
def prw(tmp_path):
    return fx.write_toy_prw(tmp_path)


def _protocol(root, size):
    return sio.loadmat(fx.protocol_path(root, size))[f"TestG{size}"].squeeze()


def test_cuhk_files_and_images(cuhk):
    ssm = os.path.join(cuhk, "Image", "SSM")
    assert sorted(os.listdir(ssm)) == sorted(n for n, _, _ in fx.CUHK_SCENES)
    from PIL import Image
    with Image.open(os.path.join(ssm, "s9.jpg")) as im:
        assert (im.format, im.size) == ("JPEG", (100, 60))
    assert sorted(os.listdir(os.path.join(cuhk, "annotation", "test", "train_test"))) == [
        "TestG3.mat", "TestG5.mat", "Train.mat"]


def test_cuhk_images_mat_layout(cuhk):
    img = sio.loadmat(os.path.join(cuhk, "annotation", "Images.mat"))["Img"]
    assert img.shape == (1, 10) and img.dtype.names == ("imname", "nAppear", "box")
    # indexed as the field's loaders do: for name, _, boxes in Img.squeeze(): b[0] for b in boxes[0]
    got = {}
    for name, n_appear, boxes in img.squeeze():
        got[str(name[0])] = (int(n_appear[0, 0]), np.asarray([b[0] for b in boxes[0]]).reshape(-1, 4))
    assert got["s2.jpg"][0] == 3
    np.testing.assert_array_equal(got["s2.jpg"][1], [[10, 5, 20, 40], [50, 10, 20, 40], [60, 0, 0, 30]])
    np.testing.assert_array_equal(got["s4.jpg"][1], [[5, 5, 20, 40], [-3, 10, 20, 30]])
    assert sum(v[0] for v in got.values()) == 19


def test_cuhk_pool_and_train_layout(cuhk):
    pool = sio.loadmat(os.path.join(cuhk, "annotation", "pool.mat"))["pool"]
    assert pool.shape == (6, 1)
    assert [str(a[0]) for a in pool.squeeze()] == [f"s{i}.jpg" for i in range(5, 11)]
    train = sio.loadmat(os.path.join(cuhk, "annotation", "test", "train_test", "Train.mat"))["Train"]
    assert train.shape == (3, 1)
    people = {}
    for item in train.squeeze():  # each cell: a 1x1 struct (idname, nAppear, scene)
        idname, n_appear, scene = item[0, 0]
        people[str(idname[0])] = [(str(n[0]), b.squeeze().astype(np.int32).tolist()) for n, b, _ in scene.squeeze()]
        assert int(n_appear[0, 0]) == len(people[str(idname[0])])
    assert people == {"p100": [("s1.jpg", [10, 5, 20, 40]), ("s2.jpg", [10, 5, 20, 40])],
                      "p101": [("s1.jpg", [40, 5, 20, 40]), ("s3.jpg", [5, 5, 20, 40])],
                      "p102": [("s3.jpg", [30, 5, 20, 40]), ("s4.jpg", [5, 5, 20, 40])]}


def test_cuhk_protocol_layout(cuhk):
    protoc = _protocol(cuhk, 5)
    assert protoc.shape == (2,) and protoc.dtype.names == ("Query", "Gallery")
    assert protoc["Query"][0].dtype.names == ("imname", "idlocate", "ishard", "idname")
    # the field's indexing: Query[i]["imname"][0, 0][0], Query[i]["idlocate"][0, 0][0] (uint16)
    assert str(protoc["Query"][0]["imname"][0, 0][0]) == "s5.jpg"
    qbox = protoc["Query"][0]["idlocate"][0, 0][0]
    assert qbox.dtype == np.uint16 and qbox.tolist() == [10, 5, 20, 40]
    assert str(protoc["Query"][1]["idname"][0, 0][0]) == "p201"
    # gallery entries: str(item[0][0]), item[1][0] (empty when the person is absent)
    entries = [(str(item[0][0]), item[1][0].astype(np.int32).tolist()) for item in protoc["Gallery"][0].squeeze()]
    assert entries[:2] == [("s6.jpg", [12, 6, 20, 40]), ("s9.jpg", [5, 5, 20, 40])]
    assert sorted(e[0] for e in entries[2:]) == ["s10.jpg", "s7.jpg", "s8.jpg"]
    assert all(e[1] == [] for e in entries[2:])
    empty = protoc["Gallery"][0][0, 2]["idlocate"]
    assert empty.shape == (1, 0)


def _gallery_names(root, size, query):
    return [str(item[0][0]) for item in _protocol(root, size)["Gallery"][query].squeeze()]


def test_cuhk_galleries_nested_and_without_query_image(cuhk):
    for q, (_, qname) in enumerate(fx.CUHK_QUERIES):
        small, large = _gallery_names(cuhk, 3, q), _gallery_names(cuhk, 5, q)
        assert len(small) == 3 and len(large) == 5
        assert large[:3] == small
        assert qname not in large and len(set(large)) == 5
    assert _gallery_names(cuhk, 3, 1)[0] == "s7.jpg"


def test_cuhk_unfillable_size_skipped_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dcinet_d2.data.writers"):
        fx.write_toy_cuhk(tmp_path)
    warnings = [r for r in caplog.records if "gallery size 6 skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert not os.path.exists(fx.protocol_path(tmp_path, 6))


def test_cuhk_seed_draws_negatives(tmp_path):
    orders = set()
    for seed in range(8):
        root = fx.write_toy_cuhk(tmp_path / str(seed), seed=seed)
        orders.add(tuple(_gallery_names(root, 5, 0)[2:]))
    assert len(orders) > 1
    again = fx.write_toy_cuhk(tmp_path / "again", seed=3)
    assert _gallery_names(again, 5, 0) == _gallery_names(str(tmp_path / "3"), 5, 0)


def test_cuhk_boxes_rounded(tmp_path):
    scenes = fx.cuhk_scenes()
    scenes[0]["boxes"] = scenes[0]["boxes"] + 0.4
    write_cuhk_sysu(str(tmp_path), scenes, test_names=fx.CUHK_TEST, queries=fx.CUHK_QUERIES, gallery_sizes=(3,))
    img = sio.loadmat(os.path.join(tmp_path, "annotation", "Images.mat"))["Img"].squeeze()
    assert img[0]["box"][0, 0]["idlocate"].tolist() == [[10, 5, 20, 40]]


@pytest.mark.parametrize("queries, message", [
    ([(100, "s1.jpg")], "not a test image"),
    ([(201, "s5.jpg")], "does not appear"),
    ([(200, "nope.jpg")], "not a test image"),
])
def test_cuhk_bad_queries(tmp_path, queries, message):
    with pytest.raises(ValueError, match=message):
        write_cuhk_sysu(str(tmp_path), fx.cuhk_scenes(), test_names=fx.CUHK_TEST, queries=queries, gallery_sizes=(3,))


def test_cuhk_negative_protocol_box_rejected(tmp_path):
    scenes = fx.cuhk_scenes()
    scenes[4]["boxes"][0] = [-2, 5, 20, 40]  # s5, the query of identity 200
    with pytest.raises(ValueError, match="uint16"):
        write_cuhk_sysu(str(tmp_path), scenes, test_names=fx.CUHK_TEST, queries=fx.CUHK_QUERIES, gallery_sizes=(3,))


def test_prw_layout(prw):
    assert sorted(os.listdir(os.path.join(prw, "frames"))) == sorted(n for n, _, _ in fx.PRW_SCENES)
    assert sorted(os.listdir(os.path.join(prw, "annotations"))) == sorted(n + ".mat" for n, _, _ in fx.PRW_SCENES)
    # frame lists as the field reads them: img[0][0] + ".jpg"
    train = sio.loadmat(os.path.join(prw, "frame_train.mat"))["img_index_train"]
    test = sio.loadmat(os.path.join(prw, "frame_test.mat"))["img_index_test"]
    assert train.shape == (3, 1) and test.shape == (4, 1)
    assert [img[0][0] + ".jpg" for img in test] == [n for n, _, _ in fx.PRW_SCENES[3:]]
    assert sio.loadmat(os.path.join(prw, "ID_train.mat"))["ID_train"].tolist() == [[5, 17, 42]]
    assert sio.loadmat(os.path.join(prw, "ID_test.mat"))["ID_test"].tolist() == [[301, 733]]


def test_prw_annotation_keys_and_rows(prw):
    def keys(name):
        return sorted(k for k in sio.loadmat(os.path.join(prw, "annotations", name + ".mat")) if not k.startswith("__"))
    assert keys("c2s1_000200.jpg") == ["anno_file"]
    assert keys("c2s2_000500.jpg") == ["anno_previous"]
    assert keys("c1s1_000100.jpg") == ["box_new"]
    rows = sio.loadmat(os.path.join(prw, "annotations", "c1s1_000100.jpg.mat"))["box_new"]
    np.testing.assert_array_equal(rows, [[17, 10, 5, 20, 40], [-2, 40, 5, 20, 40], [5, -4, 3, 20, 40]])


def test_prw_query_info_bytes(prw):
    with open(os.path.join(prw, "query_info.txt"), "rb") as f:
        raw = f.read()
    assert raw == b"301 10 5 20 40 c1s2_000400\r\n733 10 10 20 40 c3s2_000600\r\n301 -5 2 20 30 c1s3_000700\r\n"


def test_prw_fractional_coordinates_and_unlabelled(tmp_path):
    scenes = [fx.scene("c4s1_000001.jpg", [[1.25, 2.5, 30, 40.75], [3, 3, 9, 9]], [7, -1])]
    write_prw(str(tmp_path), scenes, train_names=set(), queries=[(7, "c4s1_000001.jpg")])
    assert open(tmp_path / "query_info.txt", "rb").read() == b"7 1.25 2.5 30 40.75 c4s1_000001\r\n"
    rows = sio.loadmat(tmp_path / "annotations" / "c4s1_000001.jpg.mat")["box_new"]
    assert rows[:, 0].tolist() == [7, -2]


def test_prw_query_in_train_frame_rejected(tmp_path):
    with pytest.raises(ValueError, match="training frame"):
        write_prw(str(tmp_path), fx.prw_scenes(), train_names=fx.PRW_TRAIN, queries=[(5, "c3s1_000300.jpg")])

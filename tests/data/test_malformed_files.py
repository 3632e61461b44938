"""The dataset loaders on malformed files, made here from the toy trees (tests/data/fixtures.py): a ValueError
naming the file and what was expected (the variable or key), or the documented logged skip; never another
exception type or a silently wrong dataset. Part of the bad-input corpus (tests/foundation/test_bad_inputs.py)."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

import toy_datasets as fx
from dcinet_d2.data.cuhk_sysu import load_cuhk_sysu
from dcinet_d2.data.generic import load_search_dataset
from dcinet_d2.data.prw import load_prw


CUHK_FILES = {  # file -> (its variable, a split that reads it)
    "annotation/Images.mat": ("Img", "gallery"),
    "annotation/pool.mat": ("pool", "gallery"),
    "annotation/test/train_test/Train.mat": ("Train", "train"),
    "annotation/test/train_test/TestG3.mat": ("TestG3", "query"),
}
PRW_FILES = {
    "frame_train.mat": ("img_index_train", "train"),
    "frame_test.mat": ("img_index_test", "gallery"),
    "annotations/c2s2_000500.jpg.mat": ("'box_new', 'anno_file', 'anno_previous'", "gallery"),
}


def _not_a_mat(path):
    path.write_text("s1.jpg 1 2 3 4\n")


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path):
    path.write_bytes(b"")


CORRUPTIONS = {"not a .mat": _not_a_mat, "truncated": _truncated, "empty": _empty}


# (toy tree writer, loader, its files) per dataset format.
MAT_DATASETS = {"cuhk_sysu": (fx.write_toy_cuhk, load_cuhk_sysu, CUHK_FILES),
                "prw": (fx.write_toy_prw, load_prw, PRW_FILES)}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("dataset, name", [(d, n) for d, (_, _, files) in MAT_DATASETS.items() for n in sorted(files)])
def test_unreadable_mat(tmp_path, dataset, name, corruption):
    write, load, files = MAT_DATASETS[dataset]
    root = write(tmp_path)
    key, split = files[name]
    CORRUPTIONS[corruption](tmp_path / name)
    with pytest.raises(ValueError) as e:
        load(root, split)
    message = str(e.value)
    assert message.startswith(str(tmp_path / name)) and "not a readable MATLAB .mat file" in message
    assert (f"'{key}'" if dataset == "cuhk_sysu" else key) in message and "\n" not in message


@pytest.mark.parametrize("name, content, expected", [
    ("annotation/pool.mat", {"test_images": np.zeros((1, 1))}, r"no variable 'pool' \(found \['test_images'\]\)"),
    ("annotation/test/train_test/Train.mat", {"train": np.zeros((1, 1))}, r"no variable 'Train'"),
    ("annotation/test/train_test/TestG3.mat", {"TestG50": np.zeros((1, 1))}, r"no variable 'TestG3'"),
    ("annotation/Images.mat", {"Img": np.zeros((3, 4))},
     r"expected a struct array with fields \['imname', 'box'\], got a float64 array of shape \(12,\)"),
    ("annotation/pool.mat", {"pool": np.arange(6.0)}, r"'pool' is a float64 array of 6 values, expected the test "
                                                      r"image names"),
    ("annotation/pool.mat", {"pool": np.zeros((0, 0))}, r"'pool' is a float64 array of 0 values"),
    ("annotation/test/train_test/Train.mat", {"Train": np.ones((2, 2))}, r"expected a struct array with fields "
                                                                         r"\['idname', 'scene'\]"),
    ("annotation/test/train_test/TestG3.mat", {"TestG3": np.ones((1, 2))},
     r"expected a struct array with fields \['Query', 'Gallery'\], got a float64 array"),
])
def test_cuhk_sysu_missing_key_or_wrong_shape(tmp_path, name, content, expected):
    root = fx.write_toy_cuhk(tmp_path)
    sio.savemat(tmp_path / name, content)
    split = CUHK_FILES[name][1]
    with pytest.raises(ValueError, match=expected) as e:
        load_cuhk_sysu(root, split)
    assert str(e.value).startswith(str(tmp_path / name))


@pytest.mark.parametrize("name, content, expected", [
    ("frame_test.mat", {"img_index_test": np.arange(4.0)},
     r"'img_index_test' is a float64 array of 4 values, expected the frame names"),
    ("frame_train.mat", {"img_index_train": np.zeros((0, 0))}, r"'img_index_train' is a float64 array of 0 values"),
    ("annotations/c2s2_000500.jpg.mat", {"anno_file": np.ones((2, 6))}, r"'anno_file' has shape \(2, 6\), expected"),
])
def test_prw_wrong_shape(tmp_path, name, content, expected):
    root = fx.write_toy_prw(tmp_path)
    os.remove(tmp_path / name)
    sio.savemat(tmp_path / name, content)
    with pytest.raises(ValueError, match=expected) as e:
        load_prw(root, PRW_FILES[name][1])
    assert str(e.value).startswith(str(tmp_path / name))


def test_prw_query_info_not_text(tmp_path):
    root = fx.write_toy_prw(tmp_path)
    (tmp_path / "query_info.txt").write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not the queries")
    with pytest.raises(ValueError, match=r"query_info\.txt: not a UTF-8 text file \(byte 0\); expected lines"):
        load_prw(root, "query")


# ----------------------------------------------------------------------------- generic JSON
def _generic(tmp_path, edit=None, text=None):
    json_file = fx.write_toy_generic(tmp_path)
    if text is not None:
        Path(json_file).write_text(text)
    if edit is not None:
        with open(json_file) as f:
            data = json.load(f)
        edit(data)
        with open(json_file, "w") as f:
            json.dump(data, f)
    return json_file


def _ann(i, **changes):
    return lambda d: d["annotations"][i].update(changes)


@pytest.mark.parametrize("kind, edit, text, split, expected", [
    ("not JSON", None, '{"images": [', "gallery", r"not a JSON file \(Expecting"),
    ("JSON list", None, "[1, 2, 3]", "gallery", "holds a JSON list, expected an object with 'images'"),
    ("images not objects", lambda d: d.update(images=["imgs/0.png"]), None, "gallery",
     "'images' is not a list of objects"),
    ("NaN box", _ann(4, bbox=[float("nan"), 1, 10, 10]), None, "gallery",
     r"annotation 5: bbox \[nan, 1, 10, 10\] holds NaN or infinite values"),
    ("infinite box", _ann(6, bbox=[5, 5, float("inf"), 10]), None, "gallery", "annotation 7: .* holds NaN or infinite"),
    ("negative width", _ann(4, bbox=[20, 1, -10, 10]), None, "gallery",
     r"annotation 5: bbox \[20, 1, -10, 10\] has a negative width or height"),
    ("negative height in a query", _ann(8, bbox=[2, 30, 20, -20]), None, "query", "annotation 9: .* negative width"),
    ("duplicate image name", lambda d: d["images"][3].update(file_name="imgs/2.png"), None, "gallery",
     "image file_name 'imgs/2.png' appears twice"),
    ("duplicate image id", lambda d: d["images"][3].update(id=12), None, "gallery", "image id 12 appears twice"),
    ("duplicate annotation id", _ann(6, id=5), None, "query", "annotation id 5 appears twice"),
    ("height not an integer", lambda d: d["images"][2].update(height="60px"), None, "gallery",
     "image 12: height '60px' is not a positive integer"),
    ("category without a name", lambda d: d["categories"][1].pop("name"), None, "gallery",
     r"category \{'id': 9\} needs 'id' and 'name'"),
    ("query without its annotation id", lambda d: d.update(queries=[9, {"annotation": 7}]), None, "query",
     "query 1: unknown annotation id None"),
    ("queries not a list", lambda d: d.update(queries=9), None, "query", "'queries' is not a list of annotation ids"),
])
def test_generic_bad_json(tmp_path, kind, edit, text, split, expected):
    json_file = _generic(tmp_path, edit, text)
    with pytest.raises(ValueError, match=expected) as e:
        load_search_dataset(json_file, str(tmp_path), split)
    assert str(e.value).startswith(f"{json_file}: ") and "\n" not in str(e.value)


def test_generic_zero_area_box_is_a_logged_skip(tmp_path, caplog):
    json_file = _generic(tmp_path, _ann(4, bbox=[20, 20, 0, 0]))
    with caplog.at_level(logging.WARNING):
        dicts = load_search_dataset(json_file, str(tmp_path), "gallery")
    assert [len(d["annotations"]) for d in dicts] == [0, 1, 1]  # the image stays, its box goes
    dropped = [r.getMessage() for r in caplog.records if "zero area" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].startswith(f"{json_file}:gallery: 2 boxes of zero area")


def test_generic_unknown_keys_are_ignored(tmp_path):
    plain = load_search_dataset(_generic(tmp_path / "a"), str(tmp_path / "a"), "gallery")

    def extra(d):
        d.update(info={"year": 2024}, licenses=[], my_tool={"version": 3})
        d["images"][2].update(license=1, coco_url="http://x")
        d["annotations"][4].update(segmentation=[[1, 1, 5, 5, 1, 5]], area=100.0, iscrowd=0)

    with_extra = load_search_dataset(_generic(tmp_path / "b", extra), str(tmp_path / "b"), "gallery")
    strip = lambda dicts: [{k: v for k, v in d.items() if k != "file_name"} for d in dicts]  # noqa: E731
    assert strip(with_extra) == strip(plain) and len(plain) == 3

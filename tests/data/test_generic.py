"""The generic gallery JSON format: splits, identities, queries, errors, registration and the COCO converter."""
import json
import logging
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import toy_datasets as fx
from dcinet_d2.data.generic import convert_coco_with_identity, load_search_dataset, register_search_dataset
from dcinet_d2.data.records import image_sizes


@pytest.fixture()
def toy(tmp_path):
    return fx.write_toy_generic(tmp_path), str(tmp_path)


def _summary(dicts):
    return [(d["image_id"], [(a["bbox"], a["category_id"], a["person_id"]) for a in d["annotations"]]) for d in dicts]


def _warnings(caplog, text):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def _edit(json_file, edit):
    with open(json_file) as f:
        data = json.load(f)
    edit(data)
    with open(json_file, "w") as f:
        json.dump(data, f)


def test_image_sizes_from_headers(tmp_path):
    Image.new("RGB", (33, 21)).save(tmp_path / "a.jpg")
    assert image_sizes(str(tmp_path), ["a.jpg", "missing.jpg"]) == {"a.jpg": (21, 33)}


def test_train_split(toy, caplog):
    json_file, root = toy
    with caplog.at_level(logging.WARNING):
        dicts = load_search_dataset(json_file, root, "train")
    # identities 12, 40 -> 0, 1; categories 7, 9 -> 0, 1; image 1 is 70 x 80 (header): box clipped
    assert _summary(dicts) == [
        ("imgs/0.png", [([1.0, 1.0, 11.0, 11.0], 0, 1), ([20.0, 1.0, 30.0, 11.0], 1, -1)]),
        ("imgs/1.png", [([1.0, 1.0, 11.0, 11.0], 0, 0), ([70.0, 50.0, 80.0, 70.0], 0, 1)]),
    ]
    assert [(d["height"], d["width"]) for d in dicts] == [(60, 90), (70, 80)]
    assert dicts[0]["file_name"] == os.path.abspath(os.path.join(root, "imgs/0.png"))
    assert len(_warnings(caplog, "1 boxes partly outside their image were clipped")) == 1


def test_gallery_split(toy, caplog):
    json_file, root = toy
    with caplog.at_level(logging.WARNING):
        dicts = load_search_dataset(json_file, root, "gallery")
    assert _summary(dicts) == [
        ("imgs/2.png", [([1.0, 1.0, 11.0, 11.0], 0, 3)]),
        ("imgs/3.png", [([5.0, 5.0, 15.0, 15.0], 1, 3)]),
        ("imgs/4.png", [([5.0, 5.0, 15.0, 15.0], 1, -1)]),
    ]
    assert len(_warnings(caplog, "1 boxes of zero area (after clipping) were dropped")) == 1


def test_query_split(toy):
    json_file, root = toy
    queries = load_search_dataset(json_file, root, "query")
    assert [(q["image_id"], q["query_index"]) for q in queries] == [("imgs/5.png", 0), ("imgs/3.png", 1)]
    assert _summary(queries)[0][1] == [([2.0, 2.0, 22.0, 22.0], 0, 3)]
    assert (queries[0]["height"], queries[0]["width"]) == (70, 80)


def test_missing_image_dropped(toy, caplog):
    json_file, root = toy
    os.remove(os.path.join(root, "imgs", "2.png"))
    with caplog.at_level(logging.WARNING):
        dicts = load_search_dataset(json_file, root, "gallery")
    assert [d["image_id"] for d in dicts] == ["imgs/3.png", "imgs/4.png"]
    assert len(_warnings(caplog, "1 images missing")) == 1


@pytest.mark.parametrize("edit, split, message", [
    (lambda d: d["annotations"][0].update(category_id=3), "train", "annotation 1: unknown category_id 3"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "train", r"annotation 1: bbox \[1, 2, 3\] is not"),
    (lambda d: d["annotations"][0].update(identity="x"), "train", "annotation 1: identity 'x' is not an int"),
    (lambda d: d["images"][0].update(split="test"), "train", "image 10: split 'test' is not one of"),
    (lambda d: d["annotations"][0].update(image_id=99), "train", "annotation 1: unknown image_id 99"),
    (lambda d: d.update(queries=[1]), "query", "query 0: annotation 1 lies in a training image"),
    (lambda d: d.update(queries=[5, 42]), "query", "query 1: unknown annotation id 42"),
    (lambda d: d.update(queries=[8]), "query", "query 0: annotation 8 has no identity"),
    (lambda d: d.pop("categories"), "gallery", "no 'categories' list"),
    (lambda d: [i.update(split="gallery") for i in d["images"]], "train", "no images with split 'train'"),
])
def test_bad_input(toy, edit, split, message):
    json_file, root = toy
    _edit(json_file, edit)
    with pytest.raises(ValueError, match=message) as err:
        load_search_dataset(json_file, root, split)
    assert json_file in str(err.value)


def test_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_search_dataset(str(tmp_path / "nope.json"), str(tmp_path), "gallery")


def test_register(toy):
    json_file, root = toy
    register_search_dataset("test_generic_toy", json_file, root)
    meta = MetadataCatalog.get("test_generic_toy_gallery")
    assert (meta.evaluator_type, meta.dataset_format, meta.root, meta.image_root, meta.split, meta.query_set) == (
        "person_search", "generic", json_file, root, "gallery", "test_generic_toy_query")
    assert len(DatasetCatalog.get("test_generic_toy_train")) == 2
    train_meta = MetadataCatalog.get("test_generic_toy_train")
    assert train_meta.num_identities == 2 and train_meta.thing_classes == ["tattoo", "logo"]
    assert len(DatasetCatalog.get("test_generic_toy_query")) == 2


def test_register_a_taken_name_says_which_and_what_to_do(toy):
    """Detectron2's own refusal is an AssertionError from deep inside register(); this one names the splits,
    says what to do, and registers nothing."""
    json_file, root = toy
    register_search_dataset("test_generic_twice", json_file, root)
    with pytest.raises(ValueError) as error:
        register_search_dataset("test_generic_twice", json_file, root)
    message = str(error.value)
    assert "'test_generic_twice_train', 'test_generic_twice_gallery', 'test_generic_twice_query'" in message
    assert "already registered" in message and "choose another name" in message
    assert "DatasetCatalog.remove" in message
    with pytest.raises(ValueError, match="'cuhk_sysu_gallery'"):  # a built-in name
        register_search_dataset("cuhk_sysu", json_file, root)
    assert "cuhk_sysu_train" in DatasetCatalog and len(DatasetCatalog.get("test_generic_twice_train")) == 2


def _coco(tmp_path):
    images = []
    for i in range(1, 6):
        Image.new("RGB", (50, 40)).save(tmp_path / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 40, "width": 50, "license": 0})
    images[0]["split"] = "train"
    tracks = ["bob", "bob", "bob", "amy", "amy", "cat", None]
    image_of = [1, 2, 3, 2, 4, 5, 5]
    annotations = [{"id": 100 + k, "image_id": img, "bbox": [k, k, 10, 10], "category_id": 1, "area": 100,
                    "iscrowd": 0, "attributes": {} if t is None else {"track": t}}
                   for k, (img, t) in enumerate(zip(image_of, tracks))]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "tattoo", "supercategory": "ink"}]}))
    return str(path)


def test_convert_coco_with_identity(tmp_path):
    out_file = str(tmp_path / "out" / "gallery.json")
    out = convert_coco_with_identity(_coco(tmp_path), out_file, identity_key="attributes.track", seed=1)
    # string identities numbered in sorted order: amy 0, bob 1, cat 2; no track: -1
    assert [a["identity"] for a in out["annotations"]] == [1, 1, 1, 0, 0, 2, -1]
    assert [img.get("split", "gallery") for img in out["images"]] == ["train"] + ["gallery"] * 4
    # amy (images 2, 4) and bob (non-train images 2, 3) are searchable; cat (one image) is not
    assert len(out["queries"]) == 2
    assert out["queries"][0] in (103, 104) and out["queries"][1] in (101, 102)
    with open(out_file) as f:
        assert json.load(f) == out
    queries = load_search_dataset(out_file, str(tmp_path), "query")
    assert [q["annotations"][0]["person_id"] for q in queries] == [0, 1]


def test_convert_fraction_and_integer_identities(tmp_path):
    coco = _coco(tmp_path)
    out = convert_coco_with_identity(coco, str(tmp_path / "half.json"), identity_key="attributes.track",
                                     query_fraction=0.5, seed=0)
    assert len(out["queries"]) == 1
    _edit(coco, lambda d: d["annotations"][0]["attributes"].update(track=5))
    out = convert_coco_with_identity(coco, str(tmp_path / "mixed.json"), identity_key="attributes.track")
    # ints kept; strings numbered after the largest int
    assert [a["identity"] for a in out["annotations"]] == [5, 7, 7, 6, 6, 8, -1]
    with pytest.raises(ValueError, match="query_fraction"):
        convert_coco_with_identity(coco, str(tmp_path / "x.json"), query_fraction=2)

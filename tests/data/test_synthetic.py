"""Synthetic person-search generator: split rules, layouts read back by the loaders, determinism."""
import hashlib
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from dcinet_d2.data import synthetic as S
from dcinet_d2.data.cuhk_sysu import load_cuhk_sysu
from dcinet_d2.data.prw import load_prw

SMALL = dict(identities=10, images=70, size=(120, 160))


@pytest.fixture(scope="module")
def cuhk():
    return S.build_scenes("cuhk_sysu", seed=0, **SMALL)


@pytest.fixture(scope="module")
def prw():
    return S.build_scenes("prw", seed=0, **SMALL)


def _images_of(data, names):
    where = {}
    for s in data["scenes"]:
        if s["name"] in names:
            for p in set(s["pids"]):
                where.setdefault(p, set()).add(s["name"])
    return where


@pytest.mark.parametrize("fmt", ["cuhk_sysu", "prw"])
def test_split_rules(fmt, cuhk, prw):
    data = {"cuhk_sysu": cuhk, "prw": prw}[fmt]
    scenes, unlabelled = data["scenes"], S.UNLABELLED_ID[fmt]
    assert len(scenes) == 70 and len({s["name"] for s in scenes}) == 70
    # CUHK-SYSU: the test pool must hold a 50-image gallery besides the query image.
    assert len(data["test_names"]) == (51 if fmt == "cuhk_sysu" else 28)
    assert data["train_names"] == {s["name"] for s in scenes} - data["test_names"]
    train_ids, test_ids = set(data["train_identities"]), set(data["test_identities"])
    assert len(train_ids) == 6 and len(test_ids) == 4 and not train_ids & test_ids
    for names, ids in ((data["train_names"], train_ids), (data["test_names"], test_ids)):
        where = _images_of(data, names)
        assert set(where) - {unlabelled} == ids  # a split holds exactly its own identities
        assert all(len(where[p]) >= 2 for p in ids)
    n_unlabelled = 0
    for s in scenes:
        boxes = s["boxes"]
        assert s["image"].shape == (120, 160, 3) and s["image"].dtype == np.uint8
        assert boxes.shape == (len(s["pids"]), 4) and np.all(boxes[:, 2:] > 0)
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 0] + boxes[:, 2] <= 160)
        assert np.all(boxes[:, 1] + boxes[:, 3] <= 120)
        labelled = [p for p in s["pids"] if p != unlabelled]
        assert labelled and len(set(labelled)) == len(labelled)
        n_unlabelled += len(s["pids"]) - len(labelled)
    assert n_unlabelled > 10


def test_cuhk_queries(cuhk):
    by_name = {s["name"]: s for s in cuhk["scenes"]}
    assert sorted(p for p, _ in cuhk["queries"]) == sorted(cuhk["test_identities"])
    for pid, name in cuhk["queries"]:
        assert name in cuhk["test_names"] and pid in by_name[name]["pids"]
    assert [s["name"] for s in cuhk["scenes"]] == [f"s{i}.jpg" for i in range(1, 71)]


def test_prw_names_ids_cameras_queries(prw):
    by_name = {s["name"]: s for s in prw["scenes"]}
    for s in prw["scenes"]:
        m = re.fullmatch(r"c([1-6])s1_(\d{6})\.jpg", s["name"])
        assert m and int(m.group(1)) == s["camera"]
        assert all(p == -2 or (p > 0 and p % 3 == 1) for p in s["pids"])
    for pid in prw["test_identities"]:
        cams = [by_name[n]["camera"] for n in _images_of(prw, prw["test_names"])[pid]]
        assert len(set(cams)) >= 2  # queries can be scored in the cross-camera setting
        queried = [by_name[n]["camera"] for p, n in prw["queries"] if p == pid]
        assert 1 <= len(queried) <= 3 and len(set(queried)) == len(queried)
    for pid, name in prw["queries"]:
        assert name in prw["test_names"] and pid in by_name[name]["pids"]


def test_identities_distinct_but_confusable():
    apps = S.make_identities(200, np.random.default_rng(0))
    keys = [a.key() for a in apps]
    diffs = np.array([[sum(x != y for x, y in zip(a, b)) for b in keys] for a in keys])
    off = diffs[~np.eye(len(keys), dtype=bool)]
    assert off.min() >= 2
    assert (off == 2).sum() > 0  # near twins exist
    assert len({a.shirt for a in apps}) <= len(S.SHIRT_COLOURS) < 200  # shirts are shared


def test_person_sprite_is_tight_and_sized():
    app = S.make_identities(1, np.random.default_rng(1))[0]
    for height in (50, 100, 150):
        rgb, mask = S.render_person(app, height, np.random.default_rng(height))
        assert rgb.shape[:2] == mask.shape
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert abs(mask.shape[0] - height) <= 2 + 0.02 * height
        assert height / 4 < mask.shape[1] < height


def _colour_reid_map(data):
    """mAP of a colour-band nearest-neighbour re-id over the labelled test boxes of other images."""
    feats, pids, imgs = [], [], []
    for j, s in enumerate(data["scenes"]):
        if s["name"] not in data["test_names"]:
            continue
        for (x, y, w, h), p in zip(s["boxes"].astype(int), s["pids"]):
            if p >= 0:
                crop = cv2.resize(s["image"][y : y + h, x : x + w].astype(np.float32), (8, 24),
                                  interpolation=cv2.INTER_AREA)
                f = crop.reshape(6, 4, 8, 3).mean(axis=(1, 2)).ravel()
                feats.append((f - f.mean()) / (np.linalg.norm(f - f.mean()) + 1e-6))
                pids.append(p)
                imgs.append(j)
    feats, pids, imgs = np.array(feats), np.array(pids), np.array(imgs)
    aps, chance = [], []
    for q in range(len(feats)):
        other = imgs != imgs[q]
        y = pids[other] == pids[q]
        aps.append(average_precision_score(y, feats[other] @ feats[q]))
        chance.append(y.mean())
    return float(np.mean(aps)), float(np.mean(chance))


def test_identities_learnable_from_appearance_but_not_trivially():
    data = S.build_scenes("cuhk_sysu", seed=3, identities=40, images=110, size=(160, 200))
    mean_ap, chance = _colour_reid_map(data)
    # A crude colour descriptor already separates identities far above chance; it is far from perfect
    # (lighting, pose, occlusion, look-alike identities).
    assert mean_ap > 4 * chance and mean_ap > 0.3
    assert mean_ap < 0.9


def test_deterministic_scenes():
    a = S.build_scenes("prw", seed=5, identities=6, images=20, size=(96, 128))
    b = S.build_scenes("prw", seed=5, identities=6, images=20, size=(96, 128))
    c = S.build_scenes("prw", seed=6, identities=6, images=20, size=(96, 128))
    for sa, sb in zip(a["scenes"], b["scenes"]):
        assert sa["name"] == sb["name"] and sa["pids"] == sb["pids"]
        assert np.array_equal(sa["image"], sb["image"]) and np.array_equal(sa["boxes"], sb["boxes"])
    assert a["queries"] == b["queries"]
    assert any(not np.array_equal(sa["image"], sc["image"]) for sa, sc in zip(a["scenes"], c["scenes"]))


def _tree_digest(root):
    """Hash of every file's relative path and bytes; a .mat file's 128-byte header (it holds the time of
    writing) is left out."""
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            h.update(str(path.relative_to(root)).encode() + (data[128:] if path.suffix == ".mat" else data))
    return h.hexdigest()


def test_generate_cuhk_sysu_read_back(tmp_path):
    s = S.generate(tmp_path / "a", "cuhk_sysu", seed=2, **SMALL)
    root = tmp_path / "a"
    assert s["gallery_sizes"] == [50]  # 51 test images: 100 does not fit
    assert (root / "annotation/test/train_test/TestG50.mat").is_file()
    assert not (root / "annotation/test/train_test/TestG100.mat").exists()
    assert len(list((root / "Image/SSM").glob("s*.jpg"))) == s["images"] == 70
    train, gallery, query = (load_cuhk_sysu(str(root), split) for split in ("train", "gallery", "query"))
    assert (len(train), len(gallery), len(query)) == (s["train_images"], s["test_images"], s["queries"])
    annos = [a for d in train + gallery for a in d["annotations"]]
    assert len(annos) == s["boxes"]
    assert sum(a["person_id"] >= 0 for a in annos) == s["labelled_boxes"]
    assert {a["person_id"] for d in train for a in d["annotations"]} == set(range(-1, s["train_identities"]))
    assert len({a["person_id"] for d in gallery for a in d["annotations"]} - {-1}) == s["test_identities"]
    assert all(d["height"] == 120 and d["width"] == 160 for d in train[:3])
    S.generate(tmp_path / "b", "cuhk_sysu", seed=2, **SMALL)
    assert _tree_digest(root) == _tree_digest(tmp_path / "b")
    S.generate(tmp_path / "c", "cuhk_sysu", seed=3, **SMALL)
    assert _tree_digest(root) != _tree_digest(tmp_path / "c")


def test_generate_prw_read_back(tmp_path):
    s = S.generate(tmp_path / "a", "prw", seed=2, **SMALL)
    root = str(tmp_path / "a")
    train, gallery, query = (load_prw(root, split) for split in ("train", "gallery", "query"))
    assert (len(train), len(gallery), len(query)) == (s["train_images"], s["test_images"], s["queries"])
    annos = [a for d in train + gallery for a in d["annotations"]]
    assert len(annos) == s["boxes"] and sum(a["person_id"] >= 0 for a in annos) == s["labelled_boxes"]
    assert {a["person_id"] for d in train for a in d["annotations"]} == set(range(-1, s["train_identities"]))
    raw_test = {a["person_id"] for d in gallery for a in d["annotations"]} - {-1}
    assert len(raw_test) == s["test_identities"] and all(p % 3 == 1 for p in raw_test)
    assert all(d["camera_id"] == int(d["image_id"][1]) for d in train + gallery + query)
    S.generate(tmp_path / "b", "prw", seed=2, **SMALL)
    assert _tree_digest(root) == _tree_digest(tmp_path / "b")


def test_command_line(tmp_path, capsys):
    out = tmp_path / "prw"
    S.main(["--out", str(out), "--format", "prw", "--images", "24", "--identities", "6", "--size", "96x128"])
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    assert re.fullmatch(r"prw: 24 images \(14 train, 10 test\), \d+ boxes \(\d+ labelled\), 6 identities "
                        rf"\(4 train, 2 test\), \d+ queries -> {re.escape(str(out))}", line)
    assert (out / "query_info.txt").is_file() and len(list((out / "frames").glob("*.jpg"))) == 24


@pytest.mark.parametrize("argv,message", [
    (["--format", "coco"], "invalid choice"),
    (["--format", "prw", "--images", "0"], "positive integer"),
    (["--format", "prw", "--size", "50x80"], "at least 96x96"),
    (["--format", "prw", "--size", "big"], "expected HxW"),
    (["--format", "cuhk_sysu", "--images", "40"], "too small for cuhk_sysu"),
    (["--format", "prw", "--identities", "1"], "at least 2"),
    (["--format", "prw", "--images", "10", "--identities", "40"], "cannot hold them"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        S.main(["--out", str(tmp_path / "x")] + argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_default_size_is_quick(tmp_path):
    start = time.perf_counter()
    s = S.generate(tmp_path, "cuhk_sysu")
    assert time.perf_counter() - start < 60
    assert (s["images"], s["identities"], s["gallery_sizes"]) == (300, 60, [50, 100])


def test_existing_dataset_needs_overwrite(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--format", "cuhk_sysu", "--images", "55", "--identities", "6",
            "--size", "96x128"]
    S.main(argv)
    stale = tmp_path / "annotation/test/train_test/TestG100.mat"  # as left by a larger dataset
    stale.write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        S.main(argv)
    assert e.value.code == 2 and "already holds a cuhk_sysu dataset" in capsys.readouterr().err
    S.main(argv + ["--overwrite"])
    assert not stale.exists() and (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "annotation/test/train_test/TestG50.mat").is_file()
    S.generate(tmp_path, "prw", identities=6, images=20, size=(96, 128))  # another layout may share the root

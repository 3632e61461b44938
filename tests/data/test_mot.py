"""MOTChallenge sequences as a person-search dataset (dcinet_d2/data/mot.py), on two tiny sequences written in
the exact format (gt/gt.txt rows, img1/000001.jpg frames, seqinfo.ini for one of them): parsing, the split
rule, evaluation, and "label, train, search" end to end.

The sequences (ids per sequence unless shared): cam_a frames 1-4 hold ids 1, 2, 3 and frames 5-8 ids 2, 4;
cam_b frames 1-4 ids 1, 2 and frames 5-8 ids 1, 3. Sorted identities a1 a2 a3 a4 b1 b2 b3: every second one
is a test identity (a2, a4, b2), so a1-4 (1 test of 3) and b5-8 (0 of 2) are train frames, a5-8 (2 of 2)
and b1-4 (1 of 2, a tie) gallery frames. Extra rows: an ignored row (flag 0) in a1, a car (class 3) in a2, a
static person (class 7) in a6 and a person without id (-1) in b2.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from dcinet_d2.data.mot import load_mot, read_gt, read_mot, register_mot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYOUT = {"cam_a": {range(1, 5): (1, 2, 3), range(5, 9): (2, 4)},
          "cam_b": {range(1, 5): (1, 2), range(5, 9): (1, 3)}}
EXTRA = {"cam_a": ["1,9,5,5,20,40,0,1,1.0", "2,20,100,70,50,30,1,3,1.0", "6,21,130,10,20,50,1,7,0.8"],
         "cam_b": ["2,-1,130,60,20,50,1,1,1.0"]}


def _box(person, frame):
    """XYWH of a person (slot 0..2 across the frame) in a frame: 20 x 50 pixels, moving right."""
    return 8 + 40 * (person % 3) + 2 * frame, 20 + 5 * (person % 2), 20, 50


def _colour(person, camera):
    rng = np.random.default_rng(person * 7 + {None: 0, "cam_a": 1, "cam_b": 2}[camera])
    return [int(v) for v in rng.integers(40, 255, 3)], [int(v) for v in rng.integers(40, 255, 3)]


def write_sequences(root, shared_ids=False):
    """Write cam_a (with seqinfo.ini) and cam_b (without) under ``root``, 160 x 120 JPEG frames with each
    person drawn as a shirt and trousers of their own colours (the same in both cameras when ``shared_ids``)."""
    for camera, spans in LAYOUT.items():
        seq = os.path.join(root, camera)
        os.makedirs(os.path.join(seq, "gt"))
        os.makedirs(os.path.join(seq, "img1"))
        rows = []
        for frame in range(1, 9):
            image = np.full((120, 160, 3), 90, np.uint8)
            image[:, :, 1] = np.linspace(60, 160, 160, dtype=np.uint8)[None, :]
            people = next(ids for span, ids in spans.items() if frame in span)
            for person in people:
                x, y, w, h = _box(person, frame)
                shirt, trousers = _colour(person, None if shared_ids else camera)
                cv2.rectangle(image, (x, y), (x + w, y + h // 2), shirt, -1)
                cv2.rectangle(image, (x, y + h // 2), (x + w, y + h), trousers, -1)
                cv2.circle(image, (x + w // 2, y - 4), 5, (60, 80, 200), -1)
                rows.append((person, frame, f"{frame},{person},{x},{y},{w},{h},1,1,1.0"))
            cv2.imwrite(os.path.join(seq, "img1", f"{frame:06d}.jpg"), image)
        lines = [r[2] for r in sorted(rows)] + EXTRA[camera]  # MOT files are sorted by id, then frame
        with open(os.path.join(seq, "gt", "gt.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        if camera == "cam_a":
            with open(os.path.join(seq, "seqinfo.ini"), "w") as f:
                f.write("[Sequence]\nname=cam_a\nimDir=img1\nframeRate=10\nseqLength=8\nimWidth=160\n"
                        "imHeight=120\nimExt=.jpg\n")
    return root


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    return str(write_sequences(tmp_path_factory.mktemp("mot") / "shop"))


def _frames(dicts):
    return sorted(d["image_id"] for d in dicts)


def test_rows_are_parsed_as_mot_defines_them(sequences):
    rows = read_gt(os.path.join(sequences, "cam_a", "gt", "gt.txt"))
    assert len(rows) == 4 * 3 + 4 * 2 + 3
    assert rows[0] == (1, 1, [50.0, 25.0, 70.0, 75.0], 1, 1)  # x, y, w, h -> XYXY
    train, gallery = load_mot(sequences, "train"), load_mot(sequences, "gallery")
    a, b = [f"cam_a/img1/{i:06d}.jpg" for i in range(1, 9)], [f"cam_b/img1/{i:06d}.jpg" for i in range(1, 9)]
    assert _frames(train) == a[:4] + b[4:] and _frames(gallery) == a[4:] + b[:4]
    boxes = {d["image_id"]: [(a_["bbox"], a_["person_id"]) for a_ in d["annotations"]] for d in train + gallery}
    # The ignored row and the car are dropped; the static person and the id -1 person are unlabelled people.
    assert len(boxes["cam_a/img1/000001.jpg"]) == 3 and len(boxes["cam_a/img1/000002.jpg"]) == 3
    assert [p for _, p in boxes["cam_a/img1/000006.jpg"]].count(-1) == 1 and len(boxes["cam_a/img1/000006.jpg"]) == 3
    assert [p for _, p in boxes["cam_b/img1/000002.jpg"]].count(-1) == 2  # b1 (a train id) and the id -1 person
    assert sum(len(v) for k, v in boxes.items() if k in _frames(train)) == 20
    assert sum(len(v) for k, v in boxes.items() if k in _frames(gallery)) == 18
    # Train ids contiguous over a1, a3, b1, b3 (4 identities, 4 boxes each); a2 unlabelled in a1-4.
    train_ids = [p for d in train for a_ in d["annotations"] for p in [a_["person_id"]]]
    assert sorted(set(train_ids)) == [-1, 0, 1, 2, 3] and train_ids.count(-1) == 4
    assert all(train_ids.count(i) == 4 for i in range(4))
    sizes = {(d["height"], d["width"]) for d in train + gallery}
    assert sizes == {(120, 160)} and {d["camera"] for d in gallery} == {"cam_a", "cam_b"}


def test_split_keeps_identities_apart_and_queries_first_appearances(sequences):
    parsed = read_mot(sequences)
    labelled = {split: {a[2] for img in parsed["images"] if img["split"] == split
                        for a in parsed["annotations"][img["id"]] if a[2] >= 0} for split in ("train", "gallery")}
    # Numbered a1=0, a2=1, a3=2, a4=3, b1=4, b2=5, b3=6: test identities are the odd positions.
    assert labelled == {"train": {0, 2, 4, 6}, "gallery": {1, 3, 5}}
    queries = load_mot(sequences, "query")
    got = [(q["annotations"][0]["person_id"], q["image_id"], q["annotations"][0]["bbox"]) for q in queries]
    x, y, w, h = _box(2, 5)
    assert got[0] == (1, "cam_a/img1/000005.jpg", [x, y, x + w, y + h])
    assert [g[:2] for g in got] == [(1, "cam_a/img1/000005.jpg"), (3, "cam_a/img1/000005.jpg"),
                                   (5, "cam_b/img1/000001.jpg")]
    assert [q["query_index"] for q in queries] == [0, 1, 2]


def test_shared_ids_give_one_query_per_camera(tmp_path):
    root = str(write_sequences(tmp_path / "shared", shared_ids=True))
    parsed = read_mot(root, shared_ids=True)
    # ids 1, 2, 3, 4: 2 and 4 are test identities; id 2 is seen by both cameras.
    queries = [(parsed["annotations"][parsed["ann_index"][q]], parsed["images"][parsed["ann_index"][q]]["file_name"])
               for q in parsed["queries"]]
    assert [(next(a[2] for a in anns if a[0] == q), name) for (anns, name), q in zip(queries, parsed["queries"])] \
        == [(1, "cam_a/img1/000005.jpg"), (1, "cam_b/img1/000001.jpg"), (3, "cam_a/img1/000005.jpg")]


def test_perfect_results_score_100_and_key_frames_by_path(sequences):
    """Gallery detections equal to the ground truth, embedded one-hot by identity, search perfectly; a
    results file keyed by base name (every sequence has 000005.jpg) is refused."""
    from dcinet_d2.evaluation import evaluate_search_results

    gallery = load_mot(sequences, "gallery")
    queries = load_mot(sequences, "query")

    def onehot(pids):
        e = torch.zeros(len(pids), 16)
        for i, p in enumerate(pids):
            e[i, p if p >= 0 else 8 + i % 8] = 1
        return e
    results = {"gallery": {d["image_id"]: {"boxes": torch.tensor([a["bbox"] for a in d["annotations"]]),
                                           "scores": torch.ones(len(d["annotations"])),
                                           "embeddings": onehot([a["person_id"] for a in d["annotations"]])}
                           for d in gallery},
               "queries": onehot([q["annotations"][0]["person_id"] for q in queries])}
    out = evaluate_search_results(results, "mot", sequences)
    assert out["mAP"] == pytest.approx(100.0) and out["top1"] == pytest.approx(100.0)
    assert out["det_ap"] == pytest.approx(100.0) and out["setting"]["queries"] == 3
    # A2's ground truth: the 3 other frames a6-a8 (the query's own frame left out).
    assert out["per_query"]["count_gt"].tolist() == [3, 3, 3]
    by_base = {"gallery": {os.path.basename(k): v for k, v in results["gallery"].items()},
               "queries": results["queries"]}
    with pytest.raises(ValueError, match="none of the 8 gallery images has results"):
        evaluate_search_results(by_base, "mot", sequences)


def test_bad_files_name_the_file_and_line(tmp_path):
    root = write_sequences(tmp_path / "bad")
    gt = os.path.join(root, "cam_b", "gt", "gt.txt")
    with open(gt, "a") as f:
        f.write("3,5,10,10,twenty,40,1,1,1\n")
    with pytest.raises(ValueError, match=r"cam_b/gt/gt.txt: line 18: .* is not 'frame, id, x, y, w, h"):
        read_mot(str(root))
    with pytest.raises(FileNotFoundError, match="no MOTChallenge sequence"):
        read_mot(str(tmp_path))
    os.makedirs(tmp_path / "lonely" / "gt")
    (tmp_path / "lonely" / "gt" / "gt.txt").write_text("1,1,1,1,5,5,1,1,1\n")
    with pytest.raises(FileNotFoundError, match="lonely/img1: not found"):
        read_mot(str(tmp_path / "lonely"))


def test_registered_names_and_the_datasets_folder(sequences, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    register_mot("test_mot_shop", sequences)
    assert len(DatasetCatalog.get("test_mot_shop_query")) == 3
    meta = MetadataCatalog.get("test_mot_shop_gallery")
    assert meta.dataset_format == "mot" and meta.query_set == "test_mot_shop_query"
    DatasetCatalog.get("test_mot_shop_train")
    assert MetadataCatalog.get("test_mot_shop_train").num_identities == 4
    code = ("import dcinet_d2, detectron2.data as d; print(len(d.DatasetCatalog.get('mot_shop_gallery')))")
    env = dict(os.environ, DCINET_DATASETS=str(tmp_path / "datasets"))
    os.makedirs(tmp_path / "datasets" / "mot")
    os.symlink(sequences, tmp_path / "datasets" / "mot" / "shop")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "8", res.stderr[-2000:]


@pytest.mark.slow
def test_label_train_search_end_to_end(sequences, tmp_path, capsys):
    """The user's path: MOT sequences under datasets/mot/ -> train_net.py (a few CPU iterations of the ResNet-18
    config on mot_shop_train, then its evaluation on mot_shop_gallery) -> dcinet-eval equals the online
    numbers -> dcinet-search index the gallery (cameras recorded) and query it for a person. Training runs as a
    user starts it; the two command lines run in this process (their own tests start them as programs)."""
    from detectron2.data import DatasetCatalog

    from dcinet_d2.evaluation.cli import main as dcinet_eval
    from dcinet_d2.search.cli import main as dcinet_search

    os.makedirs(tmp_path / "datasets" / "mot")
    os.symlink(sequences, tmp_path / "datasets" / "mot" / "shop")
    env = dict(os.environ, DCINET_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="2")
    out = tmp_path / "output"
    res = subprocess.run([sys.executable, "scripts/train_net.py", "--config-file", "configs/cpu/dcinet_r18_synth.yaml",
                          "DATASETS.TRAIN", "('mot_shop_train',)", "DATASETS.TEST", "('mot_shop_gallery',)",
                          "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "OUTPUT_DIR", str(out),
                          "TEST.PERSON_SEARCH.COCO_AP", "False"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(out / "metrics.json") as f:
        online = [json.loads(line) for line in f if "search/mAP" in line][-1]
    results = out / "inference" / "mot_shop_gallery" / "search_results.pth"
    assert sorted(torch.load(results, weights_only=True)["gallery"]) == \
        [f"cam_a/img1/{i:06d}.jpg" for i in range(5, 9)] + [f"cam_b/img1/{i:06d}.jpg" for i in range(1, 5)]

    def run(cli, args):
        capsys.readouterr()
        code = cli([str(a) for a in args])
        printed = capsys.readouterr()
        assert code == 0, printed.err[-3000:]
        return printed.out
    offline = json.loads(run(dcinet_eval, ["--format", "mot", "--root", sequences, "--results", results,
                                           "--det-thresh", "0.5"]).splitlines()[-1])
    assert offline["queries"] == 3
    for key in ("mAP", "top1", "det_ap"):
        assert offline[key] == pytest.approx(online[f"search/{key}"], abs=1e-3), key
    if "e2e_mot_shop_gallery" not in DatasetCatalog.list():  # the sequences the training read, in this process
        register_mot("e2e_mot_shop", sequences)
    printed = run(dcinet_search, ["index", "--config-file", out / "config.yaml", "--weights", out / "model_final.pth",
                                  "--dataset", "e2e_mot_shop_gallery", "--out", tmp_path / "index", "--det-thresh",
                                  "0.0", "--quiet", "--device", "cpu"])
    assert "indexed 8 images" in printed
    x, y, w, h = _box(2, 5)
    hits = json.loads(run(dcinet_search, ["query", "--index", tmp_path / "index", "--image",
                                          os.path.join(sequences, "cam_a", "img1", "000005.jpg"), "--box",
                                          f"{x},{y},{x + w},{y + h}", "--camera", "cam_b", "--top-k", "3",
                                          "--json"]))["hits"]
    assert len(hits) == 3 and {h["camera"] for h in hits} == {"cam_b"}
    assert all(h["image"].startswith("cam_b/img1/") for h in hits)

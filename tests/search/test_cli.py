"""dcinet-search as a user runs it: index a folder with broken files, query, extend, kill and resume, shards,
and bad input (one "error:" line, exit 2, nothing already indexed changed)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from dcinet_d2.search.cli import main
from dcinet_d2.search.index import GalleryIndex

from .conftest import scene

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _cli(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "dcinet_d2.search.cli", *map(str, args)], capture_output=True,
                         text=True, env=ENV)
    assert "Traceback" not in res.stderr, res.stderr
    if check:
        assert res.returncode == 0, res.stderr[-2000:]
    return res


def _index_args(tiny_model, images, out, *extra):
    return ["index", "--config-file", tiny_model[0], "--weights", tiny_model[1], "--images", images, "--out", out,
            "--det-thresh", "0.3", "--quiet", *extra]


def _rows(path):
    index = GalleryIndex.load(str(path))
    return {key: (index.boxes[index.entry_image == i], index.embeddings[index.entry_image == i])
            for i, key in enumerate(index.images)}


def _assert_same_rows(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key][0], b[key][0], atol=0.05)
        np.testing.assert_allclose(a[key][1], b[key][1], atol=1e-3)


@pytest.fixture(scope="module")
def built(tiny_model, gallery, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "idx"
    res = _cli(*_index_args(tiny_model, gallery, out, "--batch-size", "3"))
    return {"out": out, "stdout": res.stdout, "rows": _rows(out)}


def test_index_skips_and_names_broken_files(built):
    out = built["stdout"]
    assert "indexed 8 images" in out and "skipped 3 images:" in out
    for name in ("zero.jpg", "text.png", "truncated.jpg"):
        assert f"  {name}: not a readable image" in out
    assert set(built["rows"]) == {(n, -1) for n in ["cam 2/s3.PNG", "cam 2/s4.PNG", "deep.png", "grey.png",
                                                     "rgba.png", "s0.jpg", "s1.jpg", "s2.jpg"]}
    assert sum(len(b) for b, _ in built["rows"].values()) > 8
    info = _cli("info", "--index", built["out"]).stdout
    assert "8 images" in info and "score >= 0.3" in info and "flat" in info


def test_index_warns_when_most_images_give_no_detection(built, gallery, tiny_model, tmp_path, capsys, caplog):
    """A threshold no detection of this model reaches (as a model trained on other imagery gives on real
    footage): one warning, logged and in the summary, naming the cause and what to do; none when most images
    hold detections."""
    assert all(len(boxes) for boxes, _ in built["rows"].values())
    assert "no detection" not in built["stdout"]
    args = [str(a) for a in _index_args(tiny_model, gallery, tmp_path / "idx")[:-2]]
    assert main(args + ["0.9999", "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "indexed 8 images, 0 detections" in out
    expected = "8 of 8 images gave no detection with a score >= 0.9999: the model likely was trained on other imagery"
    assert f"warning: {expected}" in out and "train it on your own images" in out and "lower --det-thresh" in out
    assert [r.getMessage()[:len(expected)] for r in caplog.records if r.levelname == "WARNING"
            and "no detection" in r.getMessage()] == [expected]


def test_query_finds_the_detection_it_was_given(built, gallery, tmp_path):
    """Querying an indexed detection's own box ranks that detection first with similarity 1."""
    boxes, _ = built["rows"][("s1.jpg", -1)]
    box = boxes[0]
    vis = tmp_path / "hits.png"
    res = _cli("query", "--index", built["out"], "--image", gallery / "s1.jpg", "--box",
               ",".join(f"{v:.3f}" for v in box), "--top-k", "5", "--json", "--vis", vis)
    answer = json.loads(res.stdout)
    hits = answer["hits"]
    assert answer["query"]["box"] == pytest.approx(box.tolist(), abs=1e-3)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["image"] == "s1.jpg" and hits[0]["frame"] is None
    assert hits[0]["box"] == pytest.approx(box.tolist(), abs=0.02) and hits[0]["similarity"] > 0.999
    assert all(a["similarity"] >= b["similarity"] for a, b in zip(hits, hits[1:]))
    picture = cv2.imread(str(vis))
    assert picture is not None and picture.shape[0] >= 240 and picture.shape[1] > 5 * 100
    table = _cli("query", "--index", built["out"], "--image", gallery / "s1.jpg", "--box",
                 ",".join(f"{v:.3f}" for v in box), "--top-k", "3", "--one-per-image").stdout
    assert table.splitlines()[0].split()[:6] == ["rank", "image", "box", "similarity", "det", "score"]
    assert len(table.strip().splitlines()) == 2 + 3


def test_indexing_again_embeds_only_new_images(built, gallery, tiny_model, tmp_path):
    folder = tmp_path / "gallery"
    shutil.copytree(gallery, folder)
    out = tmp_path / "idx"
    shutil.copytree(built["out"], out)
    index = GalleryIndex.load(str(out))
    index.gallery_root = str(folder)  # the copy's root, as if the index had been built there
    index.save(str(out))
    parts_before = {p: (out / "parts" / p).read_bytes() for p in os.listdir(out / "parts")}
    cv2.imwrite(str(folder / "new.jpg"), scene(42))
    res = _cli(*_index_args(tiny_model, folder, out))
    assert "indexed 1 images" in res.stdout and "already in the index: 8" in res.stdout
    rows = _rows(out)
    assert set(rows) == set(built["rows"]) | {("new.jpg", -1)}
    for key, (boxes, emb) in built["rows"].items():  # exactly the old rows, untouched
        np.testing.assert_array_equal(rows[key][0], boxes)
        np.testing.assert_array_equal(rows[key][1], emb)
    assert parts_before  # (compaction rewrote them as one part with the same rows)


def test_killed_build_resumes_to_the_uninterrupted_result(built, gallery, tiny_model, tmp_path):
    out = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "dcinet_d2.search.cli",
                             *map(str, _index_args(tiny_model, gallery, out, "--checkpoint-every", "1"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        parts = [p for p in os.listdir(out / "parts") if p.endswith(".npz")] if (out / "parts").is_dir() else []
        if len(parts) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _rows(out)
    assert 0 < len(partial) < 8
    res = _cli(*_index_args(tiny_model, gallery, out))
    assert f"already in the index: {len(partial)}" in res.stdout
    assert f"indexed {8 - len(partial)} images" in res.stdout
    _assert_same_rows(_rows(out), built["rows"])


def test_shards_merge_to_the_single_build(built, gallery, tiny_model, tmp_path):
    out = tmp_path / "idx"
    procs = [subprocess.Popen([sys.executable, "-m", "dcinet_d2.search.cli",
                               *map(str, _index_args(tiny_model, gallery, out, "--shard", f"{i}/2"))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for i in range(2)]
    outputs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    counts = [int(o[0].split("indexed ")[1].split()[0]) for o in outputs]
    assert sum(counts) == 8 and min(counts) > 0  # each image embedded once, by one shard
    merged = _cli(*_index_args(tiny_model, gallery, out))
    assert "indexed 0 images" in merged.stdout and "index " in merged.stdout
    assert len(os.listdir(out / "parts")) == 1
    _assert_same_rows(_rows(out), built["rows"])


def _fails(capsys, argv, match):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and match in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_bad_input_is_one_line_and_changes_nothing(built, gallery, tiny_model, tmp_path, capsys):
    idx = built["out"]
    files_before = {p: p.read_bytes() for p in idx.rglob("*") if p.is_file()}
    q = ["query", "--index", idx, "--image", gallery / "s1.jpg"]
    _fails(capsys, q + ["--box", "500,10,600,90"], "lies outside the 160x120 image")
    _fails(capsys, q + ["--box", "50,10,20,90"], "expected x1 < x2")
    _fails(capsys, q + ["--box", "20,10,20,90"], "expected x1 < x2")
    _fails(capsys, q + ["--box", "nan,10,20,90"], "not a finite number")
    _fails(capsys, q + ["--box", "1,2,3,4", "--top-k", "0"], "--top-k 0")
    _fails(capsys, q + ["--box", "1,2,30,40", "--det-thresh", "1.5"], "--det-thresh 1.5")
    _fails(capsys, ["query", "--index", idx, "--image", tmp_path / "none.jpg", "--box", "1,2,3,4"], "not found")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _fails(capsys, ["query", "--index", idx, "--image", tmp_path / "empty.jpg", "--box", "1,2,3,4"],
           "not a readable image")
    _fails(capsys, ["query", "--index", tmp_path / "nothing", "--image", gallery / "s1.jpg", "--box", "1,2,3,4"],
           "no such index folder")
    from dcinet_d2.testing import save_tiny_model

    other = save_tiny_model(str(tmp_path / "other"), seed=1)
    _fails(capsys, q + ["--box", "1,2,30,40", "--weights", other[1]], "built by another model")
    _fails(capsys, _index_args(other, gallery, idx), "built by another model")
    _fails(capsys, _index_args(tiny_model, gallery, idx)[:-1] + ["--det-thresh", "0.9"], "--det-thresh 0.3")
    (tmp_path / "no_images").mkdir()
    _fails(capsys, _index_args(tiny_model, tmp_path / "no_images", tmp_path / "i2"), "no image files")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    _fails(capsys, ["index", "--config-file", tiny_model[0], "--weights", tiny_model[1], "--video",
                    tmp_path / "bad.mp4", "--out", tmp_path / "i3"], "cannot open this file as a video")
    _fails(capsys, _index_args(tiny_model, gallery, tmp_path / "i4")[:-1] + ["--det-thresh", "7"], "--det-thresh 7")
    weights = open(tiny_model[1], "rb").read()
    (tmp_path / "cut.pth").write_bytes(weights[:1000])
    _fails(capsys, _index_args((tiny_model[0], tmp_path / "cut.pth"), gallery, tmp_path / "i5"),
           "not a readable checkpoint")
    _fails(capsys, _index_args((tmp_path / "none.yaml", tiny_model[1]), gallery, tmp_path / "i6"), "config file")
    (tmp_path / "somefile").write_text("x")
    _fails(capsys, _index_args(tiny_model, gallery, tmp_path / "somefile"), "not a gallery index")
    assert {p: p.read_bytes() for p in idx.rglob("*") if p.is_file()} == files_before


def test_video_frames_are_indexed_and_found(tiny_model, tmp_path):
    """A video is indexed one frame in N; hits name the video and the frame number."""
    video = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    frames = [scene(100 + i) for i in range(9)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    out = tmp_path / "idx"
    res = _cli("index", "--config-file", tiny_model[0], "--weights", tiny_model[1], "--video", video, "--every", "4",
               "--out", out, "--det-thresh", "0.3", "--quiet")
    assert "indexed 3 images" in res.stdout
    rows = _rows(out)
    assert set(rows) == {("cam.avi", 0), ("cam.avi", 4), ("cam.avi", 8)}
    box = rows[("cam.avi", 4)][0][0]
    still = tmp_path / "frame4.png"
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 4)
    ok, image = cap.read()
    assert ok
    cv2.imwrite(str(still), image)  # the decoded frame, so that the query sees the indexed pixels
    hits = json.loads(_cli("query", "--index", out, "--image", still, "--box", ",".join(f"{v:.3f}" for v in box),
                           "--top-k", "2", "--json", "--vis", tmp_path / "v.png").stdout)["hits"]
    assert (hits[0]["image"], hits[0]["frame"]) == ("cam.avi", 4) and hits[0]["similarity"] > 0.999
    assert cv2.imread(str(tmp_path / "v.png")) is not None


def test_two_processes_under_launch_give_the_single_build(built, gallery, tiny_model, tmp_path):
    out = tmp_path / "idx"
    res = _cli(*_index_args(tiny_model, gallery, out, "--num-gpus", "2"))
    assert "indexed 8 images" in res.stdout and "skipped 3 images" in res.stdout
    assert len(os.listdir(out / "parts")) == 1  # merged by the main process
    _assert_same_rows(_rows(out), built["rows"])


def test_query_filters_by_camera_and_time_and_hits_say_where_and_when(served_index, capsys):
    index_dir, root = served_index
    index = GalleryIndex.load(str(index_dir))
    i = index.images.index(("f1.jpg", -1))
    box = ",".join(f"{v:.2f}" for v in index.boxes[index.entry_image == i][0])
    base = ["query", "--index", str(index_dir), "--image", str(root / "f1.jpg"), "--box", box, "--json",
            "--device", "cpu", "--top-k", "50", "--one-per-image"]
    assert main(base + ["--camera", "cam 2", "--camera", "nowhere"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert sorted(h["image"] for h in hits) == ["cam 2/f4.jpg", "cam 2/f5.jpg"]
    assert {h["camera"] for h in hits} == {"cam 2"} and {h["time"] for h in hits} == {None}
    assert main(base + ["--since", "2026-01-02T10:00:00Z", "--until", "2026-01-02T11:07+01:00"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert sorted((h["image"], h["time"]) for h in hits) == [("f0.jpg", "2026-01-02T10:00:00Z"),
                                                             ("f1.jpg", "2026-01-02T10:05:00Z")]
    assert main([a for a in base if a != "--json"] + ["--camera", "cam 2"]) == 0  # a table with camera, time
    assert "camera" in capsys.readouterr().out
    assert main(base + ["--since", "10 am"]) == 2
    assert "--since '10 am': expected an ISO 8601" in capsys.readouterr().err
    assert main(base + ["--since", "2026-01-03", "--until", "2026-01-02"]) == 2
    assert "is before --since" in capsys.readouterr().err


def test_index_refuses_video_options_without_a_video(tiny_model, gallery, tmp_path, capsys):
    args = [str(a) for a in _index_args(tiny_model, gallery, tmp_path / "idx")]
    assert main(args + ["--video-start", "2026-01-02T10:00:00"]) == 2
    assert "--video-start apply to --video only" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()


def test_index_type_flag_is_kept_in_the_index_and_reported(built, gallery, tiny_model, tmp_path, capsys):
    from dcinet_d2.search.indexer import finalize

    out = tmp_path / "idx"
    shutil.copytree(built["out"], out)
    res = _cli(*_index_args(tiny_model, gallery, out, "--index-type", "hnsw"))
    assert "already in the index: 8" in res.stdout and "hnsw search" in res.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index_type"] == "hnsw" and manifest["search"]["kind"] == "hnsw"
    finalize(str(out))  # a later build without the flag keeps the choice
    assert json.loads((out / "manifest.json").read_text())["index_type"] == "hnsw"
    assert main(["info", "--index", str(out)]) == 0
    assert "search: hnsw (approximate, faiss HNSW)" in capsys.readouterr().out
    assert main([str(a) for a in _index_args(tiny_model, gallery, out, "--index-type", "ivfpq")]) == 2
    assert "needs at least 10,000 boxes" in capsys.readouterr().err.strip().splitlines()[-1]

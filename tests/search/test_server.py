"""dcinet-search serve through FastAPI's test client: every route, the answers equal to ``query --json``, each
bad request refused with the status and message it deserves (the server answering on), 8 concurrent
queries equal to one at a time, the index folder untouched, and the command line's refusals."""
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dcinet_d2.search.cli import main
from dcinet_d2.search.index import GalleryIndex
from dcinet_d2.search.query import open_search
from dcinet_d2.search.server import create_app

UPLOAD_LIMIT = 200_000


@pytest.fixture(scope="module")
def served(served_index):
    index_dir, root = served_index
    index, predictor = open_search(str(index_dir), device="cpu")
    client = TestClient(create_app(index, predictor, max_upload_bytes=UPLOAD_LIMIT))
    return {"client": client, "index": index, "dir": index_dir, "root": root}


def _person(index, image="f1.jpg"):
    """The best-scoring detection box of a gallery image."""
    i = index.images.index((image, -1))
    rows = np.flatnonzero(index.entry_image == i)
    assert len(rows), f"the tiny model found nobody in {image}"
    return [round(float(v), 2) for v in index.boxes[rows[np.argmax(index.scores[rows])]]]


def _jpeg_size(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    return image.shape[1], image.shape[0]


def _tree_digest(folder):
    h = hashlib.sha256()
    for dirpath, _dirs, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            h.update(f"{path} {st.st_mtime_ns} {st.st_size}\n".encode())
            h.update(open(path, "rb").read())
    return h.hexdigest()


def test_page_static_files_and_openapi_docs(served):
    client = served["client"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "<script src=\"http" not in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()  # the docs, too, work without the internet
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/info", "/api/frames", "/api/frame", "/api/frame/image", "/api/frame/crop", "/api/query",
            "/api/query/upload"} <= set(paths)


def test_info_and_paginated_frames(served):
    client, index = served["client"], served["index"]
    info = client.get("/api/info").json()
    assert info["num_images"] == 7 == index.num_images and info["num_boxes"] == index.num_boxes
    assert info["det_thresh"] == pytest.approx(0.3) and info["max_upload_bytes"] == UPLOAD_LIMIT
    first = client.get("/api/frames", params={"offset": 0, "limit": 4}).json()
    rest = client.get("/api/frames", params={"offset": 4, "limit": 4}).json()
    assert first["total"] == 7 and len(first["frames"]) == 4 and len(rest["frames"]) == 3
    frames = first["frames"] + rest["frames"]
    assert [f["image"] for f in frames] == [image for image, _ in index.images]
    assert frames[0] == {"image": "cam 2/f4.jpg", "frame": None, "label": "cam 2/f4.jpg", "camera": "cam 2",
                         "time": None, "detections": int((index.entry_image == 0).sum())}
    assert frames[3] == {"image": "f1.jpg", "frame": None, "label": "f1.jpg", "camera": None,
                         "time": "2026-01-02T10:05:00Z", "detections": int((index.entry_image == 3).sum())}
    assert info["cameras"] == ["cam 2"]
    assert (info["first_time"], info["last_time"]) == ("2026-01-02T10:00:00Z", "2026-01-02T10:10:00Z")
    # The grid of one camera, of a time span.
    cam = client.get("/api/frames", params={"camera": "cam 2"}).json()
    assert cam["total"] == 2 and [f["image"] for f in cam["frames"]] == ["cam 2/f4.jpg", "cam 2/f5.jpg"]
    span = client.get("/api/frames", params={"since": "2026-01-02T10:03", "until": "2026-01-02T11:05:00+01:00"})
    assert [f["image"] for f in span.json()["frames"]] == ["f1.jpg"]
    bad = client.get("/api/frames", params={"since": "yesterday"})
    assert bad.status_code == 422 and "ISO 8601" in bad.json()["detail"]
    assert sum(f["detections"] for f in frames) == index.num_boxes
    assert client.get("/api/frames", params={"limit": 0}).status_code == 422


def test_frame_detections_image_and_crop(served):
    client, index = served["client"], served["index"]
    r = client.get("/api/frame", params={"image": "cam 2/f5.jpg"}).json()
    i = index.images.index(("cam 2/f5.jpg", -1))
    rows = np.flatnonzero(index.entry_image == i)
    assert len(r["boxes"]) == len(rows) and r["frame"] is None
    assert [b["score"] for b in r["boxes"]] == sorted(index.scores[rows].tolist(), reverse=True)
    assert _jpeg_size(client.get("/api/frame/image", params={"image": "cam 2/f5.jpg"})) == (320, 240)
    assert _jpeg_size(client.get("/api/frame/image", params={"image": "f0.jpg", "max_side": 160})) == (160, 120)
    crop = client.get("/api/frame/crop", params={"image": "f0.jpg", "box": "10.2,20,50,100.5"})
    assert _jpeg_size(crop) == (40, 81)  # outward to whole pixels: x 10..50, y 20..101


def test_query_answers_as_the_command_line_json(served, capsys):
    client, index = served["client"], served["index"]
    box = _person(index)
    api = client.post("/api/query", json={"image": "f1.jpg", "box": box, "top_k": 5}).json()
    code = main(["query", "--index", str(served["dir"]), "--image", str(served["root"] / "f1.jpg"), "--box",
                 ",".join(map(str, box)), "--top-k", "5", "--json", "--device", "cpu"])
    assert code == 0
    cli = json.loads(capsys.readouterr().out)
    assert api["query"] == {"image": "f1.jpg", "box": box} and cli["query"]["box"] == box
    assert [h.keys() for h in api["hits"]] == [h.keys() for h in cli["hits"]]
    for a, c in zip(api["hits"], cli["hits"]):
        assert (a["rank"], a["image"], a["frame"], a["box"]) == (c["rank"], c["image"], c["frame"], c["box"])
        assert a["similarity"] == pytest.approx(c["similarity"], abs=1e-5)
    assert len(api["hits"]) == 5 and api["hits"][0]["image"] == "f1.jpg"
    assert api["hits"][0]["box"] == box and api["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    # Filters: one hit per frame, the query's frame left out, a higher detection threshold.
    filtered = client.post("/api/query", json={"image": "f1.jpg", "box": box, "top_k": 50, "one_per_image": True,
                                               "exclude_images": ["f1.jpg"], "det_thresh": 0.5}).json()["hits"]
    assert len({h["image"] for h in filtered}) == len(filtered) and "f1.jpg" not in {h["image"] for h in filtered}
    assert all(h["score"] >= 0.5 for h in filtered)


def test_upload_query_equals_the_gallery_query(served):
    client, index = served["client"], served["index"]
    box = _person(index)
    data = (served["root"] / "f1.jpg").read_bytes()
    upload = client.post("/api/query/upload", files={"file": ("me.jpg", data, "image/jpeg")},
                         data={"box": ",".join(map(str, box)), "top_k": "4"})
    assert upload.status_code == 200, upload.text
    gallery = client.post("/api/query", json={"image": "f1.jpg", "box": box, "top_k": 4}).json()
    assert upload.json()["query"] == {"image": "me.jpg", "box": box}
    assert upload.json()["hits"] == gallery["hits"]


def test_camera_and_time_filters_act_inside_the_search(served):
    client, index = served["client"], served["index"]
    box = _person(index)
    every = client.post("/api/query", json={"image": "f1.jpg", "box": box, "top_k": 500}).json()["hits"]
    cam = client.post("/api/query", json={"image": "f1.jpg", "box": box, "top_k": 5,
                                          "cameras": ["cam 2"]}).json()["hits"]
    assert cam == [dict(h, rank=r) for r, h in enumerate([h for h in every if h["camera"] == "cam 2"][:5], 1)]
    span = client.post("/api/query", json={"image": "f1.jpg", "box": box, "top_k": 500, "one_per_image": True,
                                           "since": "2026-01-02T10:05:00Z"}).json()["hits"]
    assert sorted(h["image"] for h in span) == ["f1.jpg", "f2.jpg"]
    assert {h["time"] for h in span} == {"2026-01-02T10:05:00Z", "2026-01-02T10:10:00Z"}
    data = (served["root"] / "f1.jpg").read_bytes()
    upload = client.post("/api/query/upload", files={"file": ("me.jpg", data, "image/jpeg")},
                         data={"box": ",".join(map(str, box)), "top_k": "5", "cameras": ["cam 2"]}).json()
    assert upload["hits"] == cam
    r = client.post("/api/query", json={"image": "f1.jpg", "box": box, "until": "10 o'clock"})
    assert r.status_code == 422 and "until" in r.json()["detail"]


@pytest.mark.parametrize("image", ["../../etc/passwd", "/etc/passwd", "../outside/secret.jpg", "link.jpg",
                                   "cam 2/../f0.jpg", "./f0.jpg", "f0.jpg\0", "missing.jpg", "cam 2"])
def test_files_outside_the_index_or_the_root_are_404(served, image):
    client = served["client"]
    for route in ("/api/frame", "/api/frame/image"):
        r = client.get(route, params={"image": image})
        assert r.status_code == 404 and "no such frame in this gallery" in r.json()["detail"]
    r = client.get("/api/frame/crop", params={"image": image, "box": "0,0,10,10"})
    assert r.status_code == 404
    r = client.post("/api/query", json={"image": image, "box": [0, 0, 10, 10]})
    assert r.status_code == 404
    assert client.get("/api/info").status_code == 200  # and the server answers on


def test_raw_traversal_urls_never_leave_the_root(served):
    client = served["client"]
    assert "link.jpg" in {image for image, _ in served["index"].images}  # indexed, yet outside the root
    for url in ("/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/server.py", "/static/..%2fserver.py",
                "/api/frame/image?image=..%2F..%2Fetc%2Fpasswd", "/api/frame/image?image=%2Fetc%2Fpasswd"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert b"root:" not in r.content and b"def create_app" not in r.content
    assert client.get("/api/frame", params={"image": "f0.jpg", "frame": 3}).status_code == 404


def test_oversized_upload_is_413_and_the_server_answers_on(served):
    client = served["client"]
    big = b"\xff\xd8" + os.urandom(UPLOAD_LIMIT + 100_000)
    r = client.post("/api/query/upload", files={"file": ("big.jpg", big, "image/jpeg")}, data={"box": "0,0,9,9"})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"] and str(UPLOAD_LIMIT) in r.json()["detail"]
    # Just above the limit inside the form's slack: refused by the handler, naming the file.
    near = b"\xff\xd8" + os.urandom(UPLOAD_LIMIT)
    r = client.post("/api/query/upload", files={"file": ("near.jpg", near, "image/jpeg")}, data={"box": "0,0,9,9"})
    assert r.status_code == 413 and "'near.jpg' too large" in r.json()["detail"]
    r = client.post("/api/query", content=iter([b"{}"]), headers={"Content-Type": "application/json"})
    assert r.status_code == 411 and "Content-Length" in r.json()["detail"]
    assert client.get("/api/info").status_code == 200


@pytest.mark.parametrize("files, form, status, words", [
    ({"file": ("notes.txt", b"just text", "text/plain")}, {"box": "1,1,20,20"}, 415, ["'notes.txt'", "not a readable"]),
    ({"file": ("empty.jpg", b"", "image/jpeg")}, {"box": "1,1,20,20"}, 415, ["'empty.jpg'"]),
    ("f0", {"box": "1,2,3"}, 422, ["box '1,2,3'", "X1,Y1,X2,Y2"]),
    ("f0", {"box": "a,b,c,d"}, 422, ["X1,Y1,X2,Y2"]),
    ("f0", {"box": "50,50,10,10"}, 422, ["box"]),
    ("f0", {"box": "1000,1000,1200,1200"}, 422, ["outside"]),
    ("f0", {"box": "nan,1,20,20"}, 422, ["finite"]),
    ("f0", {"box": "1,1,20,20", "top_k": "0"}, 422, ["top_k"]),
    ("f0", {"box": "1,1,20,20", "det_thresh": "1.5"}, 422, ["det_thresh"]),
    ("f0", {}, 422, ["box"]),
])
def test_bad_uploads_and_boxes_name_what_was_wrong(served, files, form, status, words):
    client = served["client"]
    if files == "f0":
        files = {"file": ("f0.jpg", (served["root"] / "f0.jpg").read_bytes(), "image/jpeg")}
    r = client.post("/api/query/upload", files=files, data=form)
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.text, r.text
    assert client.get("/api/info").status_code == 200


@pytest.mark.parametrize("body, words", [
    ({"image": "f0.jpg", "box": [1, 2, 3]}, ["box"]),
    ({"image": "f0.jpg", "box": [40, 40, 10, 10]}, ["box"]),
    ({"image": "f0.jpg", "box": [0, 0, 0, 0]}, ["box"]),
    ({"image": "f0.jpg", "box": [1, 1, 20, 20], "top_k": 0}, ["top_k"]),
    ({"image": "f0.jpg", "box": [1, 1, 20, 20], "det_thresh": -1}, ["det_thresh"]),
    ({"box": [1, 1, 20, 20]}, ["image"]),
])
def test_bad_json_queries_are_422_naming_the_field(served, body, words):
    r = served["client"].post("/api/query", json=body)
    assert r.status_code == 422, r.text
    for word in words:
        assert word in r.text
    r = served["client"].get("/api/frame/crop", params={"image": "f0.jpg", "box": "5,5,5,9"})
    assert r.status_code == 422 and "empty" in r.json()["detail"]


def test_eight_concurrent_queries_equal_one_at_a_time(served):
    client, index = served["client"], served["index"]
    requests = []
    for image, _ in index.images[:8]:
        if image == "link.jpg":
            continue
        i = index.images.index((image, -1))
        for row in np.flatnonzero(index.entry_image == i)[:2]:
            requests.append({"image": image, "box": [float(v) for v in index.boxes[row]], "top_k": 6})
    requests = (requests * 8)[:8]

    def ask(body):
        r = client.post("/api/query", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    alone = [ask(body) for body in requests]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, requests))
    assert together == alone
    assert len({json.dumps(a["hits"]) for a in alone}) > 1  # different questions, different answers


def test_the_server_leaves_the_index_folder_untouched(served_index):
    index_dir, _ = served_index
    before = _tree_digest(index_dir)
    index, predictor = open_search(str(index_dir), device="cpu")
    client = TestClient(create_app(index, predictor))
    box = _person(index, "f2.jpg")
    assert client.post("/api/query", json={"image": "f2.jpg", "box": box, "approximate": True}).status_code == 200
    assert client.get("/api/frame/image", params={"image": "f2.jpg"}).status_code == 200
    assert _tree_digest(index_dir) == before


def test_only_local_host_names_when_bound_to_localhost(served):
    index = served["index"]
    client = TestClient(create_app(index, None, allowed_hosts=["127.0.0.1", "localhost"]),
                        base_url="http://127.0.0.1:8000")
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"Host": "evil.example"}).status_code == 400


def test_serve_refuses_a_missing_or_corrupt_index_in_one_line(tmp_path, served_index, capsys):
    assert main(["serve", "--index", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no such index folder" in err[0]
    broken = tmp_path / "broken"
    os.makedirs(broken)
    (broken / "manifest.json").write_text("{not json")
    assert main(["serve", "--index", str(broken), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json: not valid JSON" in err[0]
    assert main(["serve", "--index", str(served_index[0]), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err


def test_serve_binds_localhost_by_default_and_warns_elsewhere(served_index, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: calls.append((app, host, port)))
    assert main(["serve", "--index", str(served_index[0]), "--port", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert calls[-1][1] == "127.0.0.1" and "WARNING" not in err and "http://127.0.0.1:0/" in err
    local = TestClient(calls[-1][0], base_url="http://127.0.0.1:8000")
    assert local.get("/api/info").status_code == 200
    assert local.get("/api/info", headers={"Host": "attacker.example:8000"}).status_code == 400
    assert main(["serve", "--index", str(served_index[0]), "--host", "0.0.0.0", "--port", "0",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert calls[-1][1] == "0.0.0.0" and "WARNING: listening on 0.0.0.0" in err and "no login" in err
    with TestClient(calls[-1][0]) as client:
        assert client.get("/api/info").json()["num_images"] == GalleryIndex.load(str(served_index[0])).num_images


def test_uploads_decode_like_gallery_files(served):
    """An upload is decoded as the gallery files are (PNG with alpha, grey)."""
    client, index = served["client"], served["index"]
    image = cv2.imread(str(served["root"] / "f1.jpg"))
    for converted in (cv2.cvtColor(image, cv2.COLOR_BGR2BGRA), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)):
        ok, data = cv2.imencode(".png", converted)
        r = client.post("/api/query/upload", files={"file": ("x.png", io.BytesIO(data.tobytes()), "image/png")},
                        data={"box": ",".join(map(str, _person(index)))})
        assert r.status_code == 200 and len(r.json()["hits"]) > 0


def test_video_hits_merge_into_appearances(served_video_index):
    index_dir, _ = served_video_index
    index, predictor = open_search(str(index_dir), device="cpu")
    client = TestClient(create_app(index, predictor))
    frames = client.get("/api/frames", params={"limit": 100}).json()
    assert frames["total"] == 16 and frames["frames"][5]["label"] == "gate.avi#5"
    assert frames["frames"][5]["camera"] == "gate.avi" and frames["frames"][5]["time"] == "2026-01-02T10:00:01.250Z"
    i = index.image_id("gate.avi", 3)
    box = [float(v) for v in index.boxes[index.entry_image == i][0]]
    r = client.get("/api/frame/image", params={"image": "gate.avi", "frame": 3})
    assert _jpeg_size(r) == (320, 240)
    answer = client.post("/api/query", json={"image": "gate.avi", "frame": 3, "box": box, "top_k": 16,
                                             "one_per_image": True}).json()
    hits, runs = answer["hits"], answer["appearances"]
    assert answer["query"]["image"] == "gate.avi#3" and hits[0]["frame"] == 3
    # Every hit is in exactly one appearance; within one, neighbours are at most 3 indexed frames apart.
    assert sorted(r for a in runs for r in a["ranks"]) == [h["rank"] for h in hits]
    for a in runs:
        frames_of = [hits[r - 1]["frame"] for r in a["ranks"]]
        assert frames_of == sorted(frames_of) and (a["first_frame"], a["last_frame"]) == (frames_of[0], frames_of[-1])
        assert all(b - a_ <= 3 for a_, b in zip(frames_of, frames_of[1:]))
        assert a["best_rank"] == min(a["ranks"]) and a["camera"] == "gate.avi"
        assert a["start"] == hits[a["ranks"][0] - 1]["time"]
    assert [a["best_rank"] for a in runs] == sorted(a["best_rank"] for a in runs) and runs[0]["best_rank"] == 1
    # Split runs: a hit set with a gap of more than 3 frames gives two appearances.
    from dcinet_d2.search.index import Hit
    from dcinet_d2.search.query import appearances

    made = [Hit(r + 1, "gate.avi", f, [0, 0, 1, 1], 0.9, 0.5, "gate.avi", None) for r, f in enumerate([2, 0, 9, 3])]
    assert [(a["first_frame"], a["last_frame"], a["ranks"]) for a in appearances(index, made)] == \
        [(0, 3, [2, 1, 4]), (9, 9, [3])]

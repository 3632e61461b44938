"""GalleryIndex: search equals brute force, files round-trip, parts are atomic and deduplicated, bad files."""
import json
import os

import numpy as np
import pytest

from dcinet_d2.search import filtered as filtered_module
from dcinet_d2.search import index as index_module
from dcinet_d2.search.index import GalleryIndex, build_faiss


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _filled(num_images=30, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    index = GalleryIndex(dim, det_thresh=0.2, gallery_root="/g", model={"config_sha256": "c"})
    for i in range(num_images):
        n = int(rng.integers(0, 5))
        boxes = np.sort(rng.uniform(0, 100, (n, 4)), axis=1)[:, [0, 1, 2, 3]]
        index.add(f"cam{i % 3}/img{i:03d}.jpg", -1 if i % 4 else i, boxes, rng.uniform(0.2, 1, n),
                  _unit(rng.normal(size=(n, dim))))
    return index


def _brute(index, q, k, thresh=None, one_per_image=False):
    sims = index.embeddings @ q
    order = np.argsort(-sims, kind="stable")
    out, seen = [], set()
    for r in order:
        if thresh is not None and index.scores[r] < thresh:
            continue
        img = index.entry_image[r]
        if one_per_image and img in seen:
            continue
        seen.add(img)
        out.append(r)
        if len(out) == k:
            break
    return out


@pytest.mark.parametrize("thresh,one", [(None, False), (0.6, False), (None, True), (0.5, True)])
def test_search_equals_brute_force(thresh, one):
    index = _filled()
    queries = _unit(np.random.default_rng(1).normal(size=(5, 16)))
    for q, hits in zip(queries, index.search(queries, top_k=7, det_thresh=thresh, one_per_image=one)):
        rows = _brute(index, q, 7, thresh, one)
        assert [h.rank for h in hits] == list(range(1, len(rows) + 1))
        assert [h.similarity for h in hits] == pytest.approx([float(index.embeddings[r] @ q) for r in rows], abs=1e-5)
        assert [h.score for h in hits] == pytest.approx([float(index.scores[r]) for r in rows])
        for h, r in zip(hits, rows):
            assert (h.image, -1 if h.frame is None else h.frame) == index.images[index.entry_image[r]]
        if one:
            assert len({(h.image, h.frame) for h in hits}) == len(hits)
        if thresh is not None:
            assert all(h.score >= thresh for h in hits)


def test_top_k_larger_than_gallery_and_bad_top_k():
    index = _filled(num_images=3)
    q = index.embeddings[0]
    assert len(index.search(q, top_k=1000)[0]) == index.num_boxes
    with pytest.raises(ValueError, match="top-k 0"):
        index.search(q, top_k=0)


def test_add_rejects_duplicates_unnormalised_and_nan():
    index = GalleryIndex(4)
    index.add("a.jpg", -1, [[0, 0, 1, 1]], [0.9], _unit(np.ones((1, 4))))
    with pytest.raises(ValueError, match="already in the index"):
        index.add("a.jpg", -1, [], [], [])
    with pytest.raises(ValueError, match="not L2-normalised"):
        index.add("b.jpg", -1, [[0, 0, 1, 1]], [0.9], np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        index.add("c.jpg", -1, [[0, 0, np.nan, 1]], [0.9], _unit(np.ones((1, 4))))
    assert index.num_images == 1 and index.num_boxes == 1


def test_save_load_round_trip_and_incremental_parts(tmp_path):
    index = _filled()
    index.save(str(tmp_path))
    parts = sorted(os.listdir(tmp_path / "parts"))
    assert len(parts) == 1
    loaded = GalleryIndex.load(str(tmp_path))
    assert loaded.num_images == index.num_images and loaded.num_boxes == index.num_boxes
    # Canonical order: by image key; rows of each image in their own order.
    for key in index.images:
        a = index.entry_image == index.images.index(key)
        b = loaded.entry_image == loaded.images.index(key)
        np.testing.assert_array_equal(index.embeddings[a], loaded.embeddings[b])
        np.testing.assert_array_equal(index.boxes[a], loaded.boxes[b])
    loaded.add("new.jpg", -1, [[1, 2, 3, 4]], [0.5], _unit(np.ones((1, 16))))
    loaded.save(str(tmp_path))
    assert len(os.listdir(tmp_path / "parts")) == 2  # only the new rows were written
    again = GalleryIndex.load(str(tmp_path))
    assert again.num_images == index.num_images + 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["num_boxes"] == index.num_boxes + 1 and manifest["embedding_dim"] == 16
    # Compaction leaves one part with the same content.
    again.save(str(tmp_path), compact=True, search_file=True)
    assert len(os.listdir(tmp_path / "parts")) == 1
    final = GalleryIndex.load(str(tmp_path))
    assert final.search_kind == "flat" and final._search is not None  # the saved faiss file was used
    np.testing.assert_array_equal(final.embeddings, again.embeddings)


def test_an_image_in_two_parts_is_kept_once(tmp_path):
    index = _filled(num_images=5)
    index.save(str(tmp_path))
    part = os.listdir(tmp_path / "parts")[0]
    os.link(tmp_path / "parts" / part, tmp_path / "parts" / ("z" + part))  # as after a killed compaction
    loaded = GalleryIndex.load(str(tmp_path))
    assert loaded.num_images == 5 and loaded.num_boxes == index.num_boxes


def test_parts_hold_no_pickle(tmp_path):
    _filled(num_images=4).save(str(tmp_path))
    part = tmp_path / "parts" / os.listdir(tmp_path / "parts")[0]
    with np.load(part, allow_pickle=False) as z:
        assert set(z.files) == {"images", "frames", "cameras", "times", "entry_image", "boxes", "scores", "embeddings"}


def test_missing_and_corrupt_index_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such index folder"):
        GalleryIndex.load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a gallery index"):
        GalleryIndex.load(str(tmp_path / "empty"))
    good = tmp_path / "good"
    _filled(num_images=4).save(str(good))
    manifest = (good / "manifest.json").read_text()
    (good / "manifest.json").write_text(manifest[:20])
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        GalleryIndex.load(str(good))
    (good / "manifest.json").write_text(manifest.replace('"format_version": 1', '"format_version": 9'))
    with pytest.raises(ValueError, match="format version 9"):
        GalleryIndex.load(str(good))
    (good / "manifest.json").write_text(manifest)
    part = good / "parts" / os.listdir(good / "parts")[0]
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt index part"):
        GalleryIndex.load(str(good))


def test_hnsw_recall_on_clustered_embeddings():
    """Identities with noisy views: HNSW's top-10 agrees with exact search on at least 95% of the hits."""
    rng = np.random.default_rng(0)
    dim, ids, views = 64, 2000, 10
    centres = _unit(rng.normal(size=(ids, dim)))
    data = _unit(np.repeat(centres, views, axis=0) + 0.08 * rng.normal(size=(ids * views, dim)))
    queries = _unit(centres[:200] + 0.08 * rng.normal(size=(200, dim)))
    exact = build_faiss(data, "flat").search(queries, 10)[1]
    approx = build_faiss(data, "hnsw").search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95
    index = GalleryIndex(dim)
    index._append(("all.jpg", -1), np.zeros((len(data), 4), np.float32), np.ones(len(data), np.float32), data)
    index.search(queries[0], 10, approximate=True)
    assert index.search_kind == "hnsw"


def test_excluded_images_never_hit():
    index = _filled()
    q = index.embeddings[0]
    first = index.search(q, top_k=3)[0][0].image
    hits = index.search(q, top_k=50, exclude_images=[first])[0]
    assert hits and all(h.image != first for h in hits)
    assert len(hits) == min(50, int(sum(index.images[i][0] != first for i in index.entry_image)))


def _with_places_and_times(index):
    """Cameras cam0..cam2 by path (as _filled names them); times one minute apart, every fifth unknown."""
    index.cameras = [image.split("/")[0] for image, _ in index.images]
    index.times = [np.nan if i % 5 == 0 else 1_700_000_000.0 + 60 * i for i in range(index.num_images)]
    return index


@pytest.mark.parametrize("approximate,strategy", [(False, "selector"), (False, "exact"), (True, "selector"),
                                                   (True, "exact"), (True, None)])
@pytest.mark.parametrize("cameras,since,until,one", [
    (["cam1"], None, None, False), (["cam0", "cam2"], None, None, True),
    (None, 1_700_000_000.0 + 60 * 7, None, False), (None, None, 1_700_000_000.0 + 60 * 20, True),
    (["cam2"], 1_700_000_000.0 + 60 * 3, 1_700_000_000.0 + 60 * 25, False), (["nowhere"], None, None, False),
])
def test_camera_and_time_filters_equal_brute_force(approximate, strategy, cameras, since, until, one,
                                                   monkeypatch):
    """Both strategies of a filtered query over flat search and HNSW: the structure with an ID selector
    and exact search over the kept rows alone (FILTER_STRATEGY forcing each), and the cost model's choice."""
    monkeypatch.setattr(filtered_module, "FILTER_STRATEGY", strategy)
    index = _with_places_and_times(_filled(num_images=60))
    times = np.asarray(index.times)
    ok_image = np.array([(cameras is None or c in cameras) for c in index.cameras])
    if since is not None or until is not None:
        with np.errstate(invalid="ignore"):
            ok_image &= np.isfinite(times) & (times >= (since or -np.inf)) & (times <= (until or np.inf))
    queries = _unit(np.random.default_rng(2).normal(size=(4, 16)))
    results = index.search(queries, top_k=6, one_per_image=one, approximate=approximate, cameras=cameras,
                           since=since, until=until, det_thresh=0.3)
    for q, hits in zip(queries, results):
        sims = index.embeddings @ q
        rows = [r for r in np.argsort(-sims, kind="stable") if ok_image[index.entry_image[r]]
                and index.scores[r] >= 0.3]
        if one:
            rows = [r for n, r in enumerate(rows) if index.entry_image[r] not in index.entry_image[rows[:n]]]
        assert [h.similarity for h in hits] == pytest.approx([float(sims[r]) for r in rows[:6]], abs=1e-5)
        for h in hits:
            i = index.images.index((h.image, -1 if h.frame is None else h.frame))
            assert h.camera == index.cameras[i]
            assert (h.time is None) == (not np.isfinite(index.times[i]))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("filters,rows_per_ef,chosen", [
    ({"cameras": ["cam0"]}, 90, "exact"), ({"cameras": ["cam0"]}, 4, "camera"),
    ({"cameras": ["cam0", "cam1", "cam2"]}, 4, "selector"),
    ({"since": 0, "until": 74}, 90, "exact"), ({"since": 0, "until": 74}, 4, "time slice"),
    ({"cameras": ["cam0", "cam1"], "since": 0, "until": 74}, 4, "time slice"),
    ({"since": 0, "until": 149}, 4, "wide time slice"), ({"since": 40, "until": 189}, 4, "selector"),
])
def test_filtered_hnsw_query_takes_the_cheapest_way(filters, rows_per_ef, chosen, threads, monkeypatch):
    """Over an HNSW graph the cost model (exact: the rows kept; a graph walk: GRAPH_ROWS_PER_EF a unit of
    efSearch) picks the cheapest way, and each finds the brute-force top k of the
    kept rows on clustered data. 3,000 rows, 4 cameras of 750, time slices of 750 rows:
    - cam0: exact (750 rows against a walk of 90 x 64), its graph (4 x 64 against 750 rows and the whole graph
      at ef 160), 3 cameras: the whole graph (4 x 64 against 3 camera walks);
    - the span of slice 0: exact (750 rows), its graph (4 x 64 against the whole graph at ef 160 and 4
      cameras at ef 160); with 2 cameras (slice 0 half kept: ef 88, against 2 cameras at ef 160 and the whole
      graph at ef 256); the span of 2 slices: wide slice 0 (1,500 rows, all kept: ef 64); the span of 2 slices
      off the borders: the whole graph (ef 88 against the wide shifted slice at 88 and a scan of 100 rows,
      or 2 walks at 88 / sqrt(2) = 63).
    The same on 1 thread and on 2 (the plans costed by their work)."""
    import faiss

    monkeypatch.setattr(filtered_module, "GRAPH_ROWS_PER_EF", rows_per_ef)
    monkeypatch.setattr(filtered_module, "TIME_SLICE_ROWS", 750)
    monkeypatch.setattr(filtered_module, "SEARCH_THREADS", threads)
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(300, 32)))
    data = _unit(np.repeat(centres, 10, axis=0) + 0.08 * rng.normal(size=(3000, 32)))
    index = GalleryIndex(32, gallery_root="/g")
    for i in range(300):  # 10 boxes an image; cameras cam0..cam3 round-robin, image i taken at i seconds
        index.add(f"cam{i % 4}/img{i:03d}.jpg", -1, np.tile([0, 0, 1, 1], (10, 1)) + np.arange(10)[:, None],
                  np.ones(10), data[10 * i:10 * i + 10], camera=f"cam{i % 4}", time=float(i))
    calls = []
    by_idx, part_search = faiss.knn_inner_products_by_idx, filtered_module.PartitionGraphs.search
    monkeypatch.setattr(faiss, "knn_inner_products_by_idx", lambda *a: calls.append("exact") or by_idx(*a))
    monkeypatch.setattr(filtered_module.PartitionGraphs, "search",
                        lambda self, *a: calls.append(self.what) or part_search(self, *a))
    queries = _unit(centres[:20] + 0.08 * rng.normal(size=(20, 32)))
    results = index.search(queries, top_k=10, approximate=True, **filters)
    assert index.search_kind == "hnsw" and set(calls) == ({chosen} - {"selector"})
    kept = np.ones(index.num_boxes, bool) if "cameras" not in filters else \
        np.isin(np.array(index.cameras)[index.entry_image], filters["cameras"])
    if "since" in filters:
        row_times = np.array(index.times)[index.entry_image]
        kept &= (row_times >= filters["since"]) & (row_times <= filters["until"])
    for q, hits in zip(queries, results):
        sims = np.where(kept, index.embeddings @ q, -np.inf)
        assert [h.similarity for h in hits] == pytest.approx(np.sort(sims)[::-1][:10].tolist(), abs=1e-5)


def test_cameras_and_times_round_trip_and_old_parts_load_as_unknown(tmp_path):
    index = GalleryIndex(4, gallery_root="/g")
    index.add("a.jpg", -1, [[0, 0, 1, 1]], [0.9], _unit(np.ones((1, 4))), camera="door", time=1_767_348_000.5)
    index.add("b.jpg", -1, [[0, 0, 1, 1]], [0.8], _unit(np.ones((1, 4))))
    index.save(str(tmp_path / "new"))
    loaded = GalleryIndex.load(str(tmp_path / "new"))
    assert loaded.cameras == ["door", ""] and loaded.times[0] == 1_767_348_000.5 and np.isnan(loaded.times[1])
    hit = loaded.search(_unit(np.ones((1, 4))), top_k=1)[0][0]
    assert (hit.camera, hit.time) == ("door", "2026-01-02T10:00:00.500Z")
    assert set(hit.to_dict()) == {"rank", "image", "frame", "box", "score", "similarity", "camera", "time"}
    # A part as written before cameras and times were recorded.
    os.makedirs(tmp_path / "old" / "parts")
    with np.load(tmp_path / "new" / "parts" / os.listdir(tmp_path / "new" / "parts")[0]) as z:
        old = {k: z[k] for k in z.files if k not in ("cameras", "times")}
    np.savez(tmp_path / "old" / "parts" / "p-1.npz", **old)
    (tmp_path / "old" / "manifest.json").write_text((tmp_path / "new" / "manifest.json").read_text())
    before = GalleryIndex.load(str(tmp_path / "old"))
    assert before.cameras == ["", ""] and all(np.isnan(before.times))
    hits = before.search(_unit(np.ones((1, 4))), top_k=2)[0]
    assert [(h.camera, h.time) for h in hits] == [(None, None), (None, None)]
    assert before.search(_unit(np.ones((1, 4))), top_k=2, since=0.0)[0] == []


def _three_cameras(num_images=150, dim=16, seed=3):
    """3 boxes an image (scores 0.2..1), cameras cam0..cam2 round-robin, times a minute apart (every fifth
    unknown); searched with an HNSW graph."""
    rng = np.random.default_rng(seed)
    index = GalleryIndex(dim, gallery_root="/g")
    for i in range(num_images):
        index.add(f"cam{i % 3}/img{i:03d}.jpg", -1, np.tile([0, 0, 1, 1], (3, 1)) + np.arange(3)[:, None],
                  rng.uniform(0.2, 1, 3), _unit(rng.normal(size=(3, dim))), camera=f"cam{i % 3}",
                  time=None if i % 5 == 0 else 1_700_000_000.0 + 60 * i)
    index.index_type = "hnsw"
    return index.sort()  # canonical order, as a build leaves it (and load reads it)


def _filtered_truth(index, q, k, cameras=None, since=None, until=None, exclude=(), thresh=None, one=False):
    """Similarities of the brute-force top k of the rows passing the filters."""
    times = np.asarray(index.times)
    with np.errstate(invalid="ignore"):
        ok = np.array([(cameras is None or c in cameras) and image not in exclude
                       for c, (image, _) in zip(index.cameras, index.images)])
        if since is not None or until is not None:
            ok &= np.isfinite(times) & (times >= (since or -np.inf)) & (times <= (until or np.inf))
    sims = index.embeddings @ q
    rows = [r for r in np.argsort(-sims, kind="stable") if ok[index.entry_image[r]]
            and (thresh is None or index.scores[r] >= thresh)]
    if one:
        rows = [r for n, r in enumerate(rows) if index.entry_image[r] not in index.entry_image[rows[:n]]]
    return [float(sims[r]) for r in rows[:k]]


def _force_camera_graphs(monkeypatch, rows_per_ef=0.05):
    """Camera graphs searched for every filter; cameras of more than rows_per_ef x 64 rows get a graph, a camera
    keeping fewer rows than its walk costs (rows_per_ef x efSearch) is scanned exactly."""
    monkeypatch.setattr(filtered_module, "FILTER_STRATEGY", "cameras")
    monkeypatch.setattr(filtered_module, "GRAPH_ROWS_PER_EF", rows_per_ef)


T0 = 1_700_000_000.0
MOST_OF_CAM1 = [f"cam1/img{i:03d}.jpg" for i in range(1, 150, 3)][5:]  # 45 of its 50 images


@pytest.mark.parametrize("rows_per_ef", [0.05, 0.5])
@pytest.mark.parametrize("filters,one", [
    ({"cameras": ["cam1"]}, False), ({"cameras": ["cam0", "cam2"]}, True),
    ({"cameras": ["cam2"], "since": T0 + 60 * 20, "until": T0 + 60 * 120, "thresh": 0.4,
      "exclude": ["cam2/img023.jpg", "cam2/img050.jpg"]}, False),
    ({"cameras": ["cam0", "cam1"], "since": T0 + 60 * 30, "exclude": ["cam0/img042.jpg"]}, True),
    ({"cameras": ["cam0", "cam1"], "exclude": MOST_OF_CAM1}, False),
    ({"since": T0 + 60 * 10, "until": T0 + 60 * 100}, False),
])
def test_camera_graph_filters_equal_brute_force(filters, one, rows_per_ef, monkeypatch):
    """Filters searched through per-camera graphs (a selector over a camera's rows where time, score or
    excluded images narrow it; cameras keeping few rows scanned exactly) find the brute-force top k."""
    _force_camera_graphs(monkeypatch, rows_per_ef)
    index = _three_cameras()
    splits = []
    split = filtered_module.PartitionGraphs.plan
    monkeypatch.setattr(filtered_module.PartitionGraphs, "plan", lambda *a: splits.append(split(*a)) or splits[-1])
    queries = _unit(np.random.default_rng(4).normal(size=(4, 16)))
    kw = {"cameras": filters.get("cameras"), "since": filters.get("since"), "until": filters.get("until"),
          "exclude_images": filters.get("exclude", ()), "det_thresh": filters.get("thresh")}
    results = index.search(queries, top_k=8, one_per_image=one, **kw)
    graphed, exact, _ = splits[-1]
    assert index.search_kind == "hnsw" and index.partition_graphs("cameras").built == len(graphed)
    if rows_per_ef == 0.05:  # every walk is cheaper than a scan of the camera's kept rows
        assert graphed and not exact
    if filters.get("exclude") is MOST_OF_CAM1:  # at 0.5 rows a unit, cam1's 15 rows are scanned, cam0 walked
        assert (graphed, exact) == (([0, 1], []) if rows_per_ef == 0.05 else ([0], [1]))
    for q, hits in zip(queries, results):
        truth = _filtered_truth(index, q, 8, filters.get("cameras"), filters.get("since"), filters.get("until"),
                                filters.get("exclude", ()), filters.get("thresh"), one)
        assert len(truth) == 8 and [h.similarity for h in hits] == pytest.approx(truth, abs=1e-5)
        assert all(h.image not in filters.get("exclude", ()) for h in hits)


def _force_time_slices(monkeypatch, rows_per_ef=0.05, slice_rows=90):
    """Time-slice graphs searched for every filter, slices of ``slice_rows`` rows (_three_cameras: 360 rows of
    known time, 4 slices of 30 images); walks cost as in _force_camera_graphs."""
    monkeypatch.setattr(filtered_module, "FILTER_STRATEGY", "times")
    monkeypatch.setattr(filtered_module, "GRAPH_ROWS_PER_EF", rows_per_ef)
    monkeypatch.setattr(filtered_module, "TIME_SLICE_ROWS", slice_rows)


# Per partition: how to force it, a filter walking only part 1's graph, and the folder of its graphs.
PARTITIONS = {"cameras": (_force_camera_graphs, {"cameras": ["cam1"], "since": T0}, "camera_graphs", 3),
              "times": (_force_time_slices, {"since": T0 + 60 * 45, "until": T0 + 60 * 65}, "time_graphs", 4),
              "times shifted": (_force_time_slices, {"since": T0 + 60 * 60, "until": T0 + 60 * 90},
                                "shifted_time_graphs", 3),
              "times wide": (_force_time_slices, {"since": T0 + 60 * 80, "until": T0 + 60 * 145},
                             "wide_time_graphs", 2)}


@pytest.mark.parametrize("name", list(PARTITIONS))
def test_partition_graphs_saved_loaded_reused_and_stale_ones_rebuilt(name, tmp_path, monkeypatch):
    force, filters, folder, num_parts = PARTITIONS[name]
    force(monkeypatch)
    index = _three_cameras()
    index.save(str(tmp_path), compact=True, search_file=True)
    files = sorted(os.listdir(tmp_path / folder))
    assert files == [f"{p}.faiss" for p in range(num_parts)]
    assert index.partition_graphs(name).built == num_parts
    stamps = {f: os.stat(tmp_path / folder / f).st_mtime_ns for f in files}
    q = _unit(np.random.default_rng(5).normal(size=(1, 16)))

    loaded = GalleryIndex.load(str(tmp_path))
    hits = loaded.search(q, top_k=6, **filters)[0]
    graphs = loaded.partition_graphs(name)
    assert graphs.built == 0 and sorted(graphs.graphs) == [1]  # read, only the one used
    assert [h.similarity for h in hits] == pytest.approx(_filtered_truth(loaded, q[0], 6, **filters), abs=1e-5)

    # Rows added after the graphs were written (an incremental save): the files are ignored, rebuilt in memory.
    rng = np.random.default_rng(6)
    loaded.add("cam1/late.jpg", -1, [[0, 0, 1, 1]] * 2, [0.9, 0.9], _unit(rng.normal(size=(2, 16))), camera="cam1",
               time=T0 + 1)
    loaded.save(str(tmp_path))
    stale = GalleryIndex.load(str(tmp_path))
    hits = stale.search(q, top_k=6, **filters)[0]
    graphs = stale.partition_graphs(name)
    # cam1: 150 + 2 rows; time slices: 362 / 4, wide ones 362 / 2
    grown = {"cameras": 152, "times": 90, "times shifted": 91, "times wide": 181}[name]
    assert graphs.built == 1 and graphs.graphs[1].ntotal == len(graphs.rows[1]) == grown
    # The graph holds the part's rows now (the old file's rows were another set of as many, for time slice 1).
    np.testing.assert_array_equal(graphs.graphs[1].reconstruct_n(0, grown), stale.embeddings[graphs.rows[1]])
    assert [h.similarity for h in hits] == pytest.approx(_filtered_truth(stale, q[0], 6, **filters), abs=1e-5)
    assert {f: os.stat(tmp_path / folder / f).st_mtime_ns for f in files} == stamps  # never written
    stale.save(str(tmp_path), compact=True, search_file=True)  # a build's end writes them again
    again = GalleryIndex.load(str(tmp_path))
    again.search(q, top_k=6, **filters)
    assert again.partition_graphs(name).built == 0 and again.partition_graphs(name).graphs[1].ntotal == grown


@pytest.mark.parametrize("name", list(PARTITIONS))
def test_index_without_partition_graphs_loads_and_answers_the_same(name, tmp_path, monkeypatch):
    force, filters, folder, num_parts = PARTITIONS[name]
    force(monkeypatch)
    monkeypatch.setattr(filtered_module, "TIME_SLICE_ROWS", 90)  # both partitions get graphs
    index = _three_cameras()
    index.save(str(tmp_path), compact=True, search_file=True)
    q = _unit(np.random.default_rng(7).normal(size=(3, 16)))
    kw = {"cameras": {"cameras": ["cam0", "cam2"]}, "times": {"since": T0 + 60 * 20, "until": T0 + 60 * 100},
          "times shifted": filters, "times wide": filters}[name]
    with_graphs = GalleryIndex.load(str(tmp_path)).search(q, top_k=6, one_per_image=True, **kw)
    # As an index written before these graphs: no folder, no manifest entry (the other partition's kept).
    for f in os.listdir(tmp_path / folder):
        os.remove(tmp_path / folder / f)
    os.rmdir(tmp_path / folder)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest[folder]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    old = GalleryIndex.load(str(tmp_path))
    without = old.search(q, top_k=6, one_per_image=True, **kw)
    assert old.partition_graphs(name).built == {"cameras": 2, "times": 3, "times shifted": 1,
                                                "times wide": 1}[name]  # in memory
    assert not os.path.exists(tmp_path / folder)
    assert [[h.to_dict() for h in hits] for hits in without] == [[h.to_dict() for h in hits] for hits in with_graphs]
    for other in set(PARTITIONS) - {name}:  # the other partitions' graphs are still read from their files
        assert old.partition_graphs(other).files


def test_time_slices_cut_the_rows_of_known_time_in_time_order():
    times = np.array([5.0, np.nan, 1.0, 3.0, 3.0, np.nan, 0.0, 9.0, 7.0, 2.0, 4.0, 8.0, 6.0, 10.0])
    # 12 rows of known time: 3 slices of 4 in time order (the two rows at time 3 split, the earlier row first);
    # shifted, 2 slices of 4 starting 2 rows later (the first and last 2 rows in none).
    cut = filtered_module.time_slices(times, slice_rows=4).tolist()
    assert cut == [1, -1, 0, 0, 1, -1, 0, 2, 2, 0, 1, 2, 1, 2]
    assert filtered_module.time_slices(times, shifted=True, slice_rows=4).tolist() == \
        [1, -1, -1, 0, 0, -1, -1, -1, 1, 0, 0, 1, 1, -1]
    assert filtered_module.time_slices(times, slice_rows=100).tolist() == [0, -1] + [0] * 3 + [-1] + [0] * 8
    assert filtered_module.time_slices(times, shifted=True, slice_rows=100).tolist() == [-1] * 14
    assert filtered_module.time_slices(np.full(3, np.nan), slice_rows=4).tolist() == [-1, -1, -1]


def _slice_times(index, part):
    """(first, last) time of time slice ``part`` (slices as filtered.time_slices cuts the index's rows)."""
    times = np.asarray(index.times)[index.entry_image]
    slice_times = times[filtered_module.time_slices(times) == part]
    return float(slice_times.min()), float(slice_times.max())


@pytest.mark.parametrize("rows_per_ef", [0.05, 0.5])
@pytest.mark.parametrize("shape,one", [("across borders", False), ("inside one slice", True),
                                       ("camera and span", False), ("excluded images", True),
                                       ("score threshold", False), ("cameras only", False)])
def test_time_slice_filters_equal_brute_force(shape, one, rows_per_ef, monkeypatch):
    """Filters searched through the time-slice graphs (a selector over a slice's rows where the span, cameras,
    score or excluded images keep part of it; slices keeping few rows, and rows of unknown time, scanned
    exactly) find the brute-force top k."""
    _force_time_slices(monkeypatch, rows_per_ef)
    index = _three_cameras()
    (s0, e0), (s1, e1), (s2, e2), (s3, e3) = [_slice_times(index, p) for p in range(4)]
    filters = {"across borders": {"since": (s0 + e0) / 2, "until": (s2 + e2) / 2},
               "inside one slice": {"since": s1 + 120, "until": e1 - 120},
               "camera and span": {"cameras": ["cam0", "cam2"], "since": s1, "until": e2},
               "excluded images": {"since": s2, "exclude": [f"cam{i % 3}/img{i:03d}.jpg" for i in range(60, 100)]},
               "score threshold": {"since": s0, "until": (s3 + e3) / 2, "thresh": 0.6},
               "cameras only": {"cameras": ["cam1", "cam2"]}}[shape]
    searched = []
    search = filtered_module.PartitionGraphs.search
    monkeypatch.setattr(filtered_module.PartitionGraphs, "search",
                        lambda self, keep, plan: searched.append((self, plan)) or search(self, keep, plan))
    queries = _unit(np.random.default_rng(4).normal(size=(4, 16)))
    kw = {"cameras": filters.get("cameras"), "since": filters.get("since"), "until": filters.get("until"),
          "exclude_images": filters.get("exclude", ()), "det_thresh": filters.get("thresh")}
    results = index.search(queries, top_k=8, one_per_image=one, **kw)
    (graphs, (graphed, exact, _)), = searched
    assert index.search_kind == "hnsw" and graphs.built == len(graphed)
    # Slices of 90 rows (4, and 3 shifted) and wide ones of 180 (2, and 1 shifted over rows 90-269): a span
    # of slices 1-2 or 2-3, or every row, walks the wide graphs, not two or four narrow ones.
    expected = {"inside one slice": ("time slice", [1], []), "camera and span": ("shifted wide time slice", [0], []),
                "excluded images": ("wide time slice", [1], []), "score threshold": ("wide time slice", [0, 1], []),
                "cameras only": ("wide time slice", [0, 1], [])}
    # The first cut needs 3 walks (each at efSearch / sqrt(3)), the shifted cut 2 (at efSearch / sqrt(2)) and a
    # scan of the 3 rows it keeps of a third slice: the 3 walks cost less at 0.05 rows a unit, more at 0.5.
    expected["across borders"] = (("time slice", [0, 1, 2], []) if rows_per_ef == 0.05 else
                                  ("shifted time slice", [0, 1], [2]))
    assert (graphs.what, graphed, exact) == expected[shape]
    if shape == "cameras only":  # rows of unknown time, in no slice, are scanned
        assert any(h.time is None for hits in results for h in hits)
    for q, hits in zip(queries, results):
        truth = _filtered_truth(index, q, 8, filters.get("cameras"), filters.get("since"), filters.get("until"),
                                filters.get("exclude", ()), filters.get("thresh"), one)
        assert len(truth) == 8 and [h.similarity for h in hits] == pytest.approx(truth, abs=1e-5)
        assert all(h.image not in filters.get("exclude", ()) for h in hits)


def test_a_filter_is_computed_once_for_its_queries(monkeypatch):
    """The row mask and search of a filter are reused by its next queries (the FILTER_CACHE_SIZE last
    filters), and forgotten when rows are added."""
    index = _three_cameras()
    masks, searches = [], []
    image_filter, filtered_search = index._image_filter, index._filtered_search
    monkeypatch.setattr(index, "_image_filter", lambda *a: masks.append(1) or image_filter(*a))
    monkeypatch.setattr(index, "_filtered_search", lambda *a: searches.append(1) or filtered_search(*a))
    q = _unit(np.random.default_rng(8).normal(size=(2, 16)))
    first = index.search(q, top_k=5, cameras=["cam1", "cam0"], since=T0)
    assert index.search(q, top_k=5, cameras=["cam0", "cam1"], since=T0) == first  # same filter, any order
    assert (len(masks), len(searches)) == (1, 1)
    for n in range(index_module.FILTER_CACHE_SIZE):  # other filters push it out
        index.search(q, top_k=5, since=T0 + n)
    index.search(q, top_k=5, cameras=["cam1", "cam0"], since=T0)
    assert len(masks) == index_module.FILTER_CACHE_SIZE + 2
    index.add("cam0/late.jpg", -1, [[0, 0, 1, 1]], [0.9], _unit(q[:1]), camera="cam0", time=T0 + 1)
    hits = index.search(q, top_k=5, cameras=["cam1", "cam0"], since=T0)
    assert len(masks) == index_module.FILTER_CACHE_SIZE + 3 and hits[0][0].image == "cam0/late.jpg"


def test_sub_searches_run_side_by_side_and_merge_as_one_after_the_other(monkeypatch):
    """A query's sub-searches run on two threads at once (each waits at a barrier for the other: one after the
    other they would time out), and the merged top k equals the sequential merge; a batch of queries (faiss
    spreads it itself) and one thread run them in turn."""
    import threading

    rng = np.random.default_rng(9)
    data = _unit(rng.normal(size=(400, 16)))
    rows = np.arange(400)
    exact = [filtered_module.exact_search(data, part) for part in (rows[:150], rows[150:320], rows[320:])]
    barrier, threads_seen = threading.Barrier(2, timeout=10), set()

    def waiting(search):
        def run(queries, k):
            threads_seen.add(threading.get_ident())
            if len(queries) == 1 and filtered_module.SEARCH_THREADS == 2:
                barrier.wait()
            return search(queries, k)
        return run
    q = _unit(rng.normal(size=(3, 16)))
    monkeypatch.setattr(filtered_module, "SEARCH_THREADS", 2)
    together = filtered_module.together([waiting(s) for s in exact[:2]] + [exact[2]])
    side_by_side = np.concatenate([together(q[i:i + 1], 7)[1] for i in range(3)])
    assert len(threads_seen) == 2
    truth = np.argsort(-(q @ data.T), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(side_by_side, truth)
    threads_seen.clear()
    np.testing.assert_array_equal(together(q, 7)[1], truth)  # a batch: in turn, on this thread
    monkeypatch.setattr(filtered_module, "SEARCH_THREADS", 1)
    np.testing.assert_array_equal(np.concatenate([together(q[i:i + 1], 7)[1] for i in range(3)]), truth)
    assert len(threads_seen) == 1

    def failing(queries, k):
        raise RuntimeError("a sub-search failed")
    monkeypatch.setattr(filtered_module, "SEARCH_THREADS", 2)
    with pytest.raises(RuntimeError, match="a sub-search failed"):
        filtered_module.together([exact[0], failing])(q[:1], 7)


def test_walks_widen_efsearch_by_the_share_kept(monkeypatch):
    """efSearch = 40 / share kept, at least the unfiltered 64 (88 for a lone walk whose selector rejects any
    row), at most 256; P walks each at that over sqrt(P), floored before the division only when alone."""
    assert [filtered_module.widened_ef(64, share) for share in (1.0, 0.8, 0.5, 0.25, 0.1)] == [64, 88, 88, 160, 256]
    assert [filtered_module.widened_ef(64, share, floor=False) for share in (1.0, 0.8, 0.5)] == [64, 64, 80]
    rows = np.repeat(np.arange(4), 100)  # 4 parts of 100 rows
    graphs = filtered_module.PartitionGraphs(np.zeros((400, 8), np.float32), rows, list("abcd"), None)
    assert graphs._walk_ef(80, 0, 1) == 88 and graphs._walk_ef(100, 0, 1) == 64
    assert graphs._walk_ef(80, 0, 2) == 46 and graphs._walk_ef(50, 0, 2) == 57 and graphs._walk_ef(100, 0, 4) == 32

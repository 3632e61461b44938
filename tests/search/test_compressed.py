"""The compressed (IVF-PQ) index kind: exact results with re-ranking on well-separated data, filters, files
round-trip with the embeddings memory-mapped, the automatic choice by size, and older index folders."""
import json
import os

import numpy as np
import pytest

from dcinet_d2.search import compressed, index as index_module
from dcinet_d2.search.compressed import CompressedSearch
from dcinet_d2.search.index import GalleryIndex

DIM, IDS, VIEWS = 64, 2000, 10


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(autouse=True)
def few_lists(monkeypatch):
    monkeypatch.setattr(compressed, "IVFPQ_MAX_LISTS", 64)  # 20k boxes: 64 lists, half of them probed


@pytest.fixture(scope="module")
def data():
    """20k boxes, 2000 identities of 10 views (one view an image, views 0-9 on cam0/cam1 alternately, taken
    at 1000 + view seconds), and 50 queries: new views of identities 0, 40, 80, ..."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(IDS, DIM)))
    rows = _unit(np.repeat(centres, VIEWS, axis=0) + 0.03 * rng.normal(size=(IDS * VIEWS, DIM)))
    queries = _unit(centres[::40] + 0.03 * rng.normal(size=(IDS // 40, DIM)))
    return rows, queries


def _index(rows, index_type="ivfpq"):
    index = GalleryIndex(DIM, gallery_root="/g")
    for r, row in enumerate(rows):
        view = r % VIEWS
        index.add(f"id{r // VIEWS:04d}/v{view}.jpg", -1, [[r, 0, r + 1, 1]], [0.9], row[None],
                  camera=f"cam{view % 2}", time=1000.0 + view)
    index.index_type = index_type
    return index


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """An IVF-PQ index of ``data`` saved as a build leaves it (one part, search.faiss), and its folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compressed, "IVFPQ_MAX_LISTS", 64)
        index = _index(data[0])
        path = str(tmp_path_factory.mktemp("ivfpq") / "index")
        index.save(path, compact=True, search_file=True)
    return index, path


def _exact(rows, query, k, ok=None):
    sims = rows @ query
    order = [r for r in np.argsort(-sims, kind="stable") if ok is None or ok[r]][:k]
    return order, sims[order]


def _row(hit):
    return int(hit.box[0])  # _index puts the row number in each box


def test_reranked_search_equals_exact_search_and_round_trips(data, saved):
    rows, queries = data
    built, path = saved
    loaded = GalleryIndex.load(path)
    assert loaded.search_kind == "ivfpq" and loaded.index_type == "ivfpq"
    structure = loaded._search
    assert isinstance(structure, CompressedSearch)  # read from search.faiss, not rebuilt
    assert structure.ivf.nlist == 64 and structure.ivf.ntotal == len(rows)
    # The embeddings stay on disk: a memory map of the part file, which the re-ranking reads from.
    assert isinstance(loaded.embeddings, np.memmap) and structure.embeddings is loaded.embeddings
    assert isinstance(loaded.boxes, np.memmap) and isinstance(loaded.scores, np.memmap)
    for index in (built, loaded):
        for query, hits in zip(queries, index.search(queries, top_k=10)):
            want, sims = _exact(rows, query, 10)
            assert [_row(h) for h in hits] == want  # recall 1.0, exact order
            assert [h.similarity for h in hits] == pytest.approx(sims, abs=1e-5)  # exact cosines


def test_without_reranking_similarities_are_the_compressed_ones(data, saved):
    rows, queries = data
    index = GalleryIndex.load(saved[1])
    index.rerank = 0
    errors, recall = [], []
    for query, hits in zip(queries, index.search(queries, top_k=10)):
        want, _ = _exact(rows, query, 10)
        recall.append(len({_row(h) for h in hits} & set(want)) / 10)
        errors += [abs(h.similarity - float(rows[_row(h)] @ query)) for h in hits]
    assert np.mean(recall) >= 0.95
    assert 1e-3 < np.max(errors) < 0.5  # PQ-coded inner products (8 bytes for 64 dimensions): not exact


@pytest.mark.parametrize("cameras,since,until,k", [(["cam1"], None, None, 5), (None, 1003.0, 1006.0, 4),
                                                   (["cam0"], 1002.0, None, 4)])
def test_camera_and_time_filters(data, saved, cameras, since, until, k):
    rows, queries = data
    index = GalleryIndex.load(saved[1])
    view = np.arange(len(rows)) % VIEWS
    ok = np.ones(len(rows), bool)
    if cameras:
        ok &= np.isin(np.char.add("cam", (view % 2).astype(str)), cameras)
    ok &= (view + 1000.0 >= (since or -np.inf)) & (view + 1000.0 <= (until or np.inf))
    for query, hits in zip(queries, index.search(queries, top_k=k, cameras=cameras, since=since, until=until)):
        want, sims = _exact(rows, query, k, ok)
        assert [_row(h) for h in hits] == want
        assert [h.similarity for h in hits] == pytest.approx(sims, abs=1e-5)
        assert all((cameras is None or h.camera in cameras) for h in hits)


def test_the_index_type_is_chosen_by_size_past_a_configurable_threshold(data, monkeypatch):
    rows, queries = data
    monkeypatch.setattr(index_module, "APPROX_MIN_BOXES", 5_000)
    monkeypatch.setattr(compressed, "COMPRESSED_MIN_BOXES", 15_000)
    small, large = _index(rows[:12_000], None), _index(rows, None)
    assert (_index(rows[:4_000], None).default_index_type(), small.default_index_type()) == ("flat", "hnsw")
    large.search(queries[0], 10)
    assert large.search_kind == "ivfpq" and isinstance(large._search, CompressedSearch)
    large.search(queries[0], 10, approximate=False)
    assert large.search_kind == "flat"
    large.search(queries[0], 10, approximate=True)
    assert large.search_kind == "ivfpq"
    # A type chosen by flag is kept whatever the size (and written to the manifest for later loads).
    small.index_type = "ivfpq"
    assert small.default_index_type() == "ivfpq" and small.manifest()["index_type"] == "ivfpq"


def test_too_few_boxes_for_ivfpq_is_a_clear_error(data):
    index = _index(data[0][:500])
    with pytest.raises(ValueError, match="needs at least 10,000 boxes.*flat or hnsw"):
        index.search(data[1][0], 5)


def test_older_index_folders_load_as_before(data, tmp_path):
    """A folder written before the index type was recorded (manifest without ``index_type``), with several
    parts, one of them stored compressed: rows are joined in memory, searched as before (flat)."""
    rows, queries = data
    index = _index(rows[:300], None)
    path = tmp_path / "old"
    index.save(str(path), compact=True, search_file=True)
    index.add("zzz.jpg", -1, [[0, 0, 1, 1]], [0.5], rows[:1])
    index.save(str(path))
    parts = sorted(os.listdir(path / "parts"))
    with np.load(path / "parts" / parts[-1]) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(path / "parts" / parts[-1], **arrays)  # the same name (it ends in .npz)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["index_type"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = GalleryIndex.load(str(path))
    assert loaded.index_type is None and loaded.num_boxes == 301 and not isinstance(loaded.embeddings, np.memmap)
    np.testing.assert_array_equal(loaded.embeddings[loaded.entry_image == loaded.image_id("zzz.jpg", -1)], rows[:1])
    hits = loaded.search(queries[0], 10)[0]
    assert loaded.search_kind == "flat"
    assert [h.similarity for h in hits] == pytest.approx(_exact(loaded.embeddings, queries[0], 10)[1], abs=1e-5)


def test_a_bad_index_type_in_the_manifest_is_named(saved, tmp_path):
    path = tmp_path / "bad"
    GalleryIndex.load(saved[1]).save(str(path))
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(dict(manifest, index_type="lsh")))
    with pytest.raises(ValueError, match="manifest.json: index_type 'lsh', expected one of flat, hnsw, ivfpq"):
        GalleryIndex.load(str(path))

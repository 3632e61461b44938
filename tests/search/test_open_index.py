"""open_index under concurrency: shards started together all open one index, none sees a half-made folder."""
import multiprocessing as mp

import pytest

from dcinet_d2.search.query import model_config
from dcinet_d2.search.index import GalleryIndex
from dcinet_d2.search.indexer import open_index

NUM_PROCS = 6


def _open(barrier, config_file, weights, path, gallery_root, results):
    cfg = model_config(config_file, weights, "cpu")
    barrier.wait()
    try:
        open_index(path, cfg, 0.3, gallery_root)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - the failure is the test's message
        results.put(f"{type(e).__name__}: {e}")


@pytest.mark.parametrize("attempt", range(8))
def test_shards_opening_a_new_index_together_all_succeed(tiny_model, gallery, tmp_path, attempt):
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(NUM_PROCS), ctx.Queue()
    path = str(tmp_path / "idx")
    procs = [ctx.Process(target=_open, args=(barrier, *tiny_model, path, str(gallery), results))
             for _ in range(NUM_PROCS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert outcomes == ["ok"] * NUM_PROCS
    assert GalleryIndex.load(path).num_images == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folder left beside it


def test_an_existing_folder_that_is_not_an_index_is_refused(tiny_model, gallery, tmp_path):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a gallery index"):
        open_index(str(tmp_path / "idx"), model_config(*tiny_model, "cpu"), 0.3, str(gallery))
    assert (tmp_path / "idx" / "notes.txt").read_text() == "mine"


def test_an_empty_folder_becomes_the_index(tiny_model, gallery, tmp_path):
    (tmp_path / "idx").mkdir()
    open_index(str(tmp_path / "idx"), model_config(*tiny_model, "cpu"), 0.3, str(gallery))
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["config.yaml", "manifest.json", "parts"]

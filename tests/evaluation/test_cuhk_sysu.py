"""CUHK-SYSU protocol on trees written by dcinet_d2.data.writers, against the loop reference; its on-disk cache."""
import logging
import os

import numpy as np
import pytest

import eval_trees
import reference_impl
from dcinet_d2.data import cuhk_sysu as data_cuhk_sysu
from dcinet_d2.data.cuhk_sysu import read_test_protocol
from dcinet_d2.evaluation import cuhk_sysu
from dcinet_d2.evaluation.offline import evaluate_search_results


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuhk")
    images, queries = eval_trees.cuhk_tree(root, n_images=80, n_test=60, n_ids=25, n_queries=25,
                                           gallery_sizes=(10, 50), seed=0)
    return str(root), images, queries


def assert_matches_reference(out, ref):
    np.testing.assert_allclose(out["per_query"]["ap"], ref["aps"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["per_query"]["first_tp_rank"], ref["first_rank"])
    for key in ("mAP", "top1", "top5", "top10"):
        assert abs(out[key] - ref[key]) < 1e-9


@pytest.mark.parametrize("size", [10, 50, -1])
def test_search_matches_the_reference(tree, size):
    root, images, queries = tree
    results = eval_trees.random_results(images, queries, seed=size + 7, missing=2)
    out = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=size)
    assert_matches_reference(out, reference_impl.cuhk_sysu(root, results, size))
    assert 0 < out["mAP"] < 100 and out["per_query"]["count_tp"].sum() > 0
    det = reference_impl.detection(reference_impl.cuhk_sysu_detection_gt(root), results)
    assert abs(out["det_ap"] - det["ap"]) < 1e-9 and abs(out["det_recall"] - det["recall"]) < 1e-9


def test_labelled_detection_matches_the_reference(tree):
    root, images, queries = tree
    results = eval_trees.random_results(images, queries, seed=3)
    out = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=10, labeled_only=True)
    det = reference_impl.detection(reference_impl.cuhk_sysu_detection_gt(root), results, labeled_only=True)
    assert abs(out["det_ap"] - det["ap"]) < 1e-9 and abs(out["det_recall"] - det["recall"]) < 1e-9
    assert out["detection"]["count_gt"] < sum(len(b) for b, _ in images.values())


def test_full_set_gallery(tree):
    root, _, _ = tree
    protocol = cuhk_sysu.search_protocol(root, -1)
    names = cuhk_sysu.gallery_images(root)
    first = read_test_protocol(root, 50)[0]
    mask = protocol.image_mask(0, 1)[0]
    # Every test image but the query's own; the TestG50 gallery first, then the others in pool order.
    assert mask.sum() == len(names) - 1 and not mask[names.index(first["query_image"])]
    _, listed, _ = protocol.entries(0, 1)
    assert [names[i] for i in listed[:50]] == [name for name, _ in first["gallery"]]
    assert list(listed[50:]) == sorted(listed[50:])
    np.testing.assert_array_equal(protocol.count_gt, cuhk_sysu.search_protocol(root, 50).count_gt)


def test_duplicates_and_the_query_image_in_its_gallery(tmp_path):
    # TestG100 lists an image twice for a few queries and the query's own image for two: both kept.
    root = str(tmp_path)
    images, queries = eval_trees.cuhk_tree(root, n_images=40, n_test=30, n_ids=12, n_queries=8,
                                           gallery_sizes=(10,), seed=1)
    protocol_queries = read_test_protocol(root, 10)
    entries = []
    for k, q in enumerate(protocol_queries):
        xywh = lambda b: None if b is None else [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
        gallery = [(name, xywh(box)) for name, box in q["gallery"]]
        if k % 2 == 0:
            gallery.insert(1, gallery[0])  # a duplicate (of a positive entry: the person's first image)
        if k % 3 == 0:
            gallery.append((q["query_image"], xywh(q["query_box"])))  # the query's own image
        entries.append((q["query_image"], xywh(q["query_box"]), q["pid"], gallery))
    eval_trees.write_test_protocol(root, 10, entries)
    protocol = cuhk_sysu.search_protocol(root, 10)
    assert protocol.count_gt[0] == sum(box is not None for _, box in entries[0][3])  # duplicates count twice
    assert np.diff(protocol.gallery_offsets)[0] == len(entries[0][3]) - 1  # but are listed once
    results = eval_trees.random_results(images, queries, seed=5)
    out = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=10)
    assert_matches_reference(out, reference_impl.cuhk_sysu(root, results, 10))
    assert (out["per_query"]["count_gt"] > out["per_query"]["count_tp"]).any()


def test_gallery_sizes(tree):
    root, _, _ = tree
    with pytest.raises(ValueError, match="unknown CUHK-SYSU gallery size 100"):
        cuhk_sysu.search_protocol(root, 100)
    with pytest.raises(ValueError, match="unknown CUHK-SYSU gallery size"):
        cuhk_sysu.check_gallery_size(root, "50")
    assert cuhk_sysu.search_protocol(root, 10).num_queries == 25


def test_full_set_needs_testg50(tmp_path):
    root = str(tmp_path)
    eval_trees.cuhk_tree(root, n_images=30, n_test=20, n_ids=10, n_queries=4, gallery_sizes=(10,), seed=2)
    with pytest.raises(FileNotFoundError, match="TestG50.mat"):
        cuhk_sysu.search_protocol(root, -1)


# ----------------------------------------------------------------------------- the on-disk protocol cache
def clear_memory_caches():
    """Forget every parsed file and protocol kept in memory (a new process): only the disk cache remains."""
    for module in (data_cuhk_sysu, cuhk_sysu):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


def cache_warnings(caplog, text):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.fixture()
def small_tree(tmp_path, monkeypatch):
    """A fresh tree (the tests edit it) and an empty cache directory of its own."""
    monkeypatch.setenv("DCINET_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cuhk"
    images, queries = eval_trees.cuhk_tree(root, n_images=66, n_test=56, n_ids=20, n_queries=10,
                                           gallery_sizes=(20, 50), seed=4)
    clear_memory_caches()
    return str(root), images, queries


def evaluation_arrays(root, results, size):
    """Every array an evaluation derives from the dataset files, and its outputs."""
    out = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=size, labeled_only=True)
    arrays = {f"protocol.{k}": v for k, v in vars(cuhk_sysu.search_protocol(root, size)).items()
              if isinstance(v, np.ndarray)}
    for name, value in zip(("boxes", "image_index", "labelled"), cuhk_sysu.detection_ground_truth(root, labeled=True)):
        arrays[f"gt.{name}"] = value
    arrays.update({f"out.{k}": v for k, v in out["per_query"].items()})
    arrays["out.cmc"] = out["cmc"]
    arrays["out.det"] = np.array([out["det_ap"], out["det_recall"]])
    arrays["gallery"] = np.array(cuhk_sysu.gallery_images(root))
    return arrays


def no_loadmat(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a .mat file was parsed: the cache was not used")
    monkeypatch.setattr(data_cuhk_sysu.sio, "loadmat", fail)


@pytest.mark.parametrize("size", [50, -1])
def test_cache_hit_equals_the_uncached_path(small_tree, tmp_path, monkeypatch, caplog, size):
    root, images, queries = small_tree
    results = eval_trees.random_results(images, queries, seed=11)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("DCINET_CACHE", str(blocker / "cache"))  # unwritable: no cache at all
    uncached = evaluation_arrays(root, results, size)
    reference = reference_impl.cuhk_sysu(root, results, size)
    np.testing.assert_allclose(uncached["out.ap"], reference["aps"], rtol=0, atol=1e-12)
    clear_memory_caches()
    monkeypatch.setenv("DCINET_CACHE", str(tmp_path / "cache"))
    first = evaluation_arrays(root, results, size)  # parses and writes the cache
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == [
        "cuhk_sysu.Images", "cuhk_sysu.TestG20", "cuhk_sysu.TestG50", "cuhk_sysu.pool"]
    clear_memory_caches()
    no_loadmat(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        hit = evaluation_arrays(root, results, size)  # a new process: from the disk cache only
    assert not cache_warnings(caplog, "protocol cache")
    eval_trees.assert_bitwise_equal(first, uncached)
    eval_trees.assert_bitwise_equal(hit, uncached)


def _rewrite_testg50(root, edit=None):
    """Write TestG50.mat again from its parse, after ``edit(list of query entries)``."""
    entries = []
    for q in read_test_protocol(root, 50):
        xywh = lambda b: None if b is None else [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
        entries.append((q["query_image"], xywh(q["query_box"]), q["pid"],
                        [(name, xywh(box)) for name, box in q["gallery"]]))
    if edit:
        edit(entries)
    path = data_cuhk_sysu.protocol_path(root, 50)
    st = os.stat(path)
    eval_trees.write_test_protocol(root, 50, entries)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**6))  # coarse clocks: the mtime changes for sure


def test_a_modified_protocol_file_invalidates_its_entry(small_tree, caplog):
    root, _, _ = small_tree
    before = cuhk_sysu.search_protocol(root, 50)
    path = data_cuhk_sysu.protocol_path(root, 50)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # touched: same contents
    clear_memory_caches()
    with caplog.at_level(logging.WARNING):
        touched = cuhk_sysu.search_protocol(root, 50)
    assert len(cache_warnings(caplog, "stale entry")) == 1
    np.testing.assert_array_equal(touched.gallery_images, before.gallery_images)

    def drop_last_entry(entries):
        entries[0][3].pop()
    _rewrite_testg50(root, drop_last_entry)  # the memory cache is keyed by the file version too: no clearing
    edited = cuhk_sysu.search_protocol(root, 50)
    assert np.diff(edited.gallery_offsets)[0] == np.diff(before.gallery_offsets)[0] - 1
    np.testing.assert_array_equal(edited.gallery_images[edited.gallery_offsets[1]:],
                                  before.gallery_images[before.gallery_offsets[1]:])


def test_the_query_order_check_holds_on_cache_hits(small_tree, monkeypatch):
    root, _, _ = small_tree

    def swap_first_queries(entries):
        entries[0], entries[1] = entries[1], entries[0]
    _rewrite_testg50(root, swap_first_queries)
    for _ in range(2):  # parsed, then from the disk cache (no .mat parsed the second time)
        with pytest.raises(ValueError, match=r"TestG50\.mat: its queries differ from those of TestG20\.mat"):
            cuhk_sysu.search_protocol(root, 50)
        clear_memory_caches()
        no_loadmat(monkeypatch)
    assert cuhk_sysu.search_protocol(root, 20).num_queries == 10  # the smallest file needs no check


def test_a_corrupt_entry_is_rebuilt(small_tree, tmp_path, caplog):
    root, images, queries = small_tree
    results = eval_trees.random_results(images, queries, seed=12)
    first = evaluation_arrays(root, results, 50)
    for entry in (tmp_path / "cache").glob("cuhk_sysu.TestG50-*.npz"):
        entry.write_bytes(entry.read_bytes()[:1000])  # e.g. a disk that filled up under another writer
    clear_memory_caches()
    with caplog.at_level(logging.WARNING):
        rebuilt = evaluation_arrays(root, results, 50)
    eval_trees.assert_bitwise_equal(rebuilt, first)
    assert len(cache_warnings(caplog, "unreadable entry")) == 1

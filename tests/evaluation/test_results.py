"""Results files: atomic saving, loading with weights_only, validation naming the file and the problem."""
import logging
import os

import numpy as np
import pytest
import torch

from dcinet_d2.evaluation.results import gallery_detections, load_results, save_results, validate_results


def results(dim=3):
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return {"gallery": {"a.jpg": {"boxes": t([[0, 0, 10, 20], [5, 5, 9, 9]]), "scores": t([0.9, 0.4]),
                                  "embeddings": t(np.eye(dim)[:2])},
                        "b.jpg": {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "embeddings": torch.zeros(0)}},
            "queries": t(np.eye(dim)[:1])}


def test_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "out" / "search_results.pth"
    save_results(str(path), results())
    save_results(str(path), results())  # overwrite
    assert os.listdir(path.parent) == ["search_results.pth"]  # no temporary file left
    loaded = load_results(str(path))
    assert torch.equal(loaded["gallery"]["a.jpg"]["embeddings"], results()["gallery"]["a.jpg"]["embeddings"])
    assert loaded["gallery"]["b.jpg"]["embeddings"].shape == (0, 3)
    assert torch.equal(loaded["queries"], results()["queries"])


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.pth"
    save_results(str(path), results())
    before = path.read_bytes()

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_results(str(path), results())
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["r.pth"]


def test_numpy_input_is_accepted():
    r = results()
    r["queries"] = r["queries"].numpy().astype(np.float64)
    out = validate_results(r)
    assert out["queries"].dtype == torch.float32


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("queries"), "expected a dict with 'gallery' and 'queries'"),
    (lambda r: r.update(queries=torch.ones(3)), r"queries has shape \(3,\), expected \[Q, D\]"),
    (lambda r: r.update(gallery=[]), "gallery is a list"),
    (lambda r: r["gallery"]["a.jpg"].pop("scores"), r"gallery\['a.jpg'\] must be a dict"),
    (lambda r: r["gallery"]["a.jpg"].update(boxes=torch.ones(2, 3)), r"gallery\['a.jpg'\]: boxes \(2, 3\)"),
    (lambda r: r["gallery"]["a.jpg"].update(embeddings=torch.ones(2, 5)), "embeddings of dimension 5, but the queries"),
    (lambda r: r["gallery"]["a.jpg"]["embeddings"].__setitem__((1, 0), float("nan")),
     r"gallery\['a.jpg'\]\['embeddings'\] holds NaN"),
    (lambda r: r["gallery"]["a.jpg"]["scores"].__setitem__(0, float("nan")), r"\['scores'\] holds NaN"),
    (lambda r: r["gallery"]["a.jpg"].update(scores=torch.tensor([1, 0])), "dtype torch.int64, expected a float"),
    (lambda r: r["gallery"].update({3: r["gallery"]["a.jpg"]}), "gallery key 3 is not an image name"),
    (lambda r: r["gallery"]["a.jpg"].update(scores="high"), "is a str, expected a tensor"),
])
def test_validation_names_the_file_and_the_problem(tmp_path, edit, message):
    r = results()
    edit(r)
    with pytest.raises(ValueError, match=message):
        validate_results(r, source="my.pth")
    with pytest.raises(ValueError, match="my.pth"):
        validate_results(r, source="my.pth")
    with pytest.raises(ValueError, match="r.pth"):
        save_results(str(tmp_path / "r.pth"), r)
    assert not os.listdir(tmp_path)


def test_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_results(str(tmp_path / "missing.pth"))
    text = tmp_path / "notes.txt"
    text.write_text("not a results file")
    with pytest.raises(ValueError, match="notes.txt: not a results file"):
        load_results(str(text))
    pickled = tmp_path / "object.pth"
    torch.save({"gallery": {}, "queries": torch.ones(1, 2), "extra": logging.getLogger("x")}, pickled)
    with pytest.raises(ValueError, match="object.pth: not a results file readable with torch.load"):
        load_results(str(pickled))
    model = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.ones(2)}}, model)
    with pytest.raises(ValueError, match=r"model.pth: not a results file: expected a dict with 'gallery' and "
                                         r"'queries' \(got \['model'\]\)"):
        load_results(str(model))


def test_gallery_detections(caplog):
    r = validate_results(results())
    with caplog.at_level(logging.WARNING):
        gallery, queries = gallery_detections(r, ["a.jpg", "c.jpg", "d.jpg", "b.jpg"], source="f.pth")
    assert gallery.num_images == 4 and gallery.image_index.tolist() == [0, 0]
    assert queries.shape == (1, 3)
    missing = [rec for rec in caplog.records if "have no results" in rec.message]
    assert len(missing) == 1 and "2 of 4 gallery images" in missing[0].getMessage()
    with pytest.raises(ValueError, match="f.pth: none of the 2 gallery images has results"):
        gallery_detections(r, ["x.jpg", "y.jpg"], source="f.pth")


def test_a_gallery_without_any_detection_scores_zero():
    """An early model (e.g. I-Net at iteration 100) may detect nothing at all: its periodic evaluation crashed
    training (numpy could not reshape 0 rows to (0, -1)). The evaluator's version: test_cbgm.py."""
    r = validate_results(results())
    for entry in r["gallery"].values():
        entry.update(boxes=torch.zeros(0, 4), scores=torch.zeros(0), embeddings=torch.zeros(0, 3))
    gallery, queries = gallery_detections(r, list(r["gallery"]))
    assert len(gallery.scores) == 0 and gallery.embeddings.shape == (0, 3) and queries.shape == (1, 3)

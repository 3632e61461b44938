"""evaluate_search_results and the dcinet-eval command on a small CUHK-SYSU tree."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval_trees
import reference_impl
from dcinet_d2.evaluation.cli import main
from dcinet_d2.evaluation.offline import SUMMARY_KEYS, evaluate_search_results, summarize
from dcinet_d2.evaluation.results import save_results


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuhk")
    images, queries = eval_trees.cuhk_tree(root, n_images=50, n_test=35, n_ids=15, n_queries=10,
                                           gallery_sizes=(10, 20), seed=4)
    results = eval_trees.random_results(images, queries, seed=2)
    path = root / "results.pth"
    save_results(str(path), results)
    return str(root), results, str(path)


def test_file_and_dict_give_the_reference_numbers(tree):
    root, results, path = tree
    from_file = evaluate_search_results(path, "cuhk_sysu", root, gallery_size=20, det_thresh=0.6)
    from_dict = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=20, det_thresh=0.6)
    ref = reference_impl.cuhk_sysu(root, results, 20, det_thresh=0.6)
    det = reference_impl.detection(reference_impl.cuhk_sysu_detection_gt(root), results, det_thresh=0.6)
    for out in (from_file, from_dict):
        for key in ("mAP", "top1", "top5", "top10"):
            assert abs(out[key] - ref[key]) < 1e-9
        assert abs(out["det_ap"] - det["ap"]) < 1e-9 and abs(out["det_recall"] - det["recall"]) < 1e-9
    summary = summarize(from_file)
    assert json.loads(json.dumps(summary)) == summary
    assert set(SUMMARY_KEYS) <= set(summary) and summary["gallery_size"] == 20 and summary["queries"] == 10
    assert from_file["per_query"]["ap"].shape == (10,) and from_file["cmc"].shape == (100,)


@pytest.mark.parametrize("edit, kwargs, message", [
    (lambda r: r.update(queries=r["queries"][:-1]), {}, "9 query embeddings, but the cuhk_sysu protocol"),
    (lambda r: r.update(queries=torch.ones(10, 5)), {}, "embeddings of dimension 16, but the queries have dimension 5"),
    (lambda r: next(iter(r["gallery"].values()))["scores"].fill_(float("nan")), {}, "holds NaN"),
    (lambda r: None, {"gallery_size": 77}, "unknown CUHK-SYSU gallery size 77"),
])
def test_bad_input(tree, tmp_path, edit, kwargs, message):
    root, results, _ = tree
    bad = {"gallery": {k: {f: t.clone() for f, t in v.items()} for k, v in results["gallery"].items()},
           "queries": results["queries"].clone()}
    edit(bad)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    kwargs = {"gallery_size": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate_search_results(str(path), "cuhk_sysu", root, **kwargs)
    if kwargs["gallery_size"] == 10:
        with pytest.raises(ValueError, match="bad.pth"):
            evaluate_search_results(str(path), "cuhk_sysu", root, **kwargs)


def test_unknown_format(tree):
    root, results, _ = tree
    with pytest.raises(ValueError, match="unknown dataset format 'coco'"):
        evaluate_search_results(results, "coco", root)


def test_command_line(tree, capsys):
    root, results, path = tree
    assert main(["--format", "cuhk_sysu", "--root", root, "--results", path, "--gallery-size", "10"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    expected = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=10)
    assert summary["mAP"] == pytest.approx(expected["mAP"], abs=1e-4)
    assert "CUHK-SYSU (gallery 10)" in "\n".join(lines[:-1]) and "top-1" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--results", "nowhere.pth"], "error: nowhere.pth: results file not found"),
    (["--gallery-size", "33"], "error: unknown CUHK-SYSU gallery size 33"),
    (["--det-thresh", "nan"], "error: --det-thresh nan is not a number"),
    (["--det-thresh", "5"], "error: --det-thresh 5.0: expected a detection score threshold in [0, 1]"),
    (["--det-thresh", "-1"], "error: --det-thresh -1.0: expected a detection score threshold in [0, 1]"),
    (["--cross-camera", None], "error: --cross-camera applies to --format prw only"),
    (["--format", "prw", "--gallery-size", "50"], "error: --gallery-size applies to --format cuhk_sysu only"),
])
def test_command_line_errors(tree, capsys, args, message):
    root, _, path = tree
    base = {"--format": "cuhk_sysu", "--root": root, "--results": path}
    base.update(dict(zip(args[::2], args[1::2])))
    assert main([x for kv in base.items() for x in kv if x is not None]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message) and "Traceback" not in "\n".join(err)


def test_command_line_process(tree, tmp_path):
    root, _, _ = tree
    text = tmp_path / "garbage.pth"
    text.write_bytes(np.arange(10).tobytes())
    proc = subprocess.run([sys.executable, "-m", "dcinet_d2.evaluation.cli", "--format", "cuhk_sysu", "--root",
                           root, "--results", str(text)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {text}: not a results file")
    assert "Traceback" not in proc.stderr

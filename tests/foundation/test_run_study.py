"""scripts/run_study.py: the study file is checked; tables, CSV and curves come from the runs' own files; an
interrupted study continues; shards split the runs; a real tiny study trains, skips done runs and tabulates."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("run_study", os.path.join(ROOT, "scripts", "run_study.py"))
run_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_study)


def _study(tmp_path, **extra):
    study = {"out": str(tmp_path / "study"), "seeds": [1, 2, 3],
             "runs": [{"name": "a", "row": "A", "paper": "83.7 / 85.8", "config": "configs/cpu/dcinet_r18_synth.yaml"},
                      {"name": "b", "config": "configs/cpu/inet_r18_synth.yaml", "opts": ["SOLVER.MAX_ITER", 5]}],
             **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


def _fake_run(study, name, seed, evals, wall_s=60.0):
    """A finished run as train_net.py and the runner leave it: metrics.json with evaluations, done.json."""
    folder = run_study.run_dir(study, {"name": name}, seed)
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for it, m in evals:
            f.write(json.dumps({"iteration": it, "loss_cls": 0.1}) + "\n")
            f.write(json.dumps({"iteration": it, "search/mAP": m, "search/top1": m + 10, "search/det_ap": 80.0}) + "\n")
    with open(os.path.join(folder, "done.json"), "w") as f:
        json.dump({"wall_s": wall_s, "metrics": run_study.final_metrics(folder)}, f)


def test_table_gives_mean_and_sample_spread_over_the_done_seeds(tmp_path):
    study = run_study.load_study(_study(tmp_path))
    for seed, m in zip((1, 2, 3), (40.0, 50.0, 60.0)):
        _fake_run(study, "a", seed, [(100, 1.0), (200, m)], wall_s=120.0)
    _fake_run(study, "b", 2, [(200, 33.0)])
    md = run_study.write_table(study)
    assert "| a | A | 3 | 50.0 ± 10.0 | 60.0 ± 10.0 | 80.0 ± 0.0 | 2.0 ± 0.0 | 83.7 / 85.8 |" in md
    assert "| b |  | 1 | 33.0 | 43.0 | 80.0 | 1.0 |  |" in md
    with open(os.path.join(study["out"], "table.csv")) as f:
        rows = {(r["run"], r["metric"]): r for r in csv.DictReader(f)}
    assert rows[("a", "mAP")]["values"] == "40.000 50.000 60.000" and rows[("a", "mAP")]["std"] == "10.000"
    assert rows[("b", "top-1")]["seeds"] == "1" and rows[("b", "top-1")]["std"] == ""


def test_table_adds_cbgm_columns_when_the_runs_report_them(tmp_path):
    study = run_study.load_study(_study(tmp_path))
    for seed, m in zip((1, 2), (40.0, 50.0)):
        _fake_run(study, "a", seed, [(200, m)])
        metrics_file = os.path.join(run_study.run_dir(study, {"name": "a"}, seed), "done.json")
        with open(metrics_file) as f:
            done = json.load(f)
        done["metrics"].update({"search/mAP@cbgm": m + 5, "search/top1@cbgm": m + 20})
        with open(metrics_file, "w") as f:
            json.dump(done, f)
    _fake_run(study, "b", 1, [(200, 33.0)])
    md = run_study.write_table(study)
    assert "| mAP CBGM | top-1 CBGM |" in md
    assert "| a | A | 2 | 45.0 ± 7.1 | 55.0 ± 7.1 | 80.0 ± 0.0 | 50.0 ± 7.1 | 65.0 ± 7.1 |" in md
    assert "| b |  | 1 | 33.0 | 43.0 | 80.0 | nan | nan |" in md  # a run without CBGM says so


def test_curves_use_the_iterations_every_seed_evaluated(tmp_path):
    study = run_study.load_study(_study(tmp_path, curves=["a"]))
    _fake_run(study, "a", 1, [(100, 10.0), (200, 20.0), (300, 30.0)])
    _fake_run(study, "a", 2, [(100, 20.0), (200, 40.0)])
    its, m, top1 = run_study.curves(study, study["runs"][0])
    assert its.tolist() == [100, 200]
    np.testing.assert_array_equal(m, [[10.0, 20.0], [20.0, 40.0]])
    np.testing.assert_array_equal(top1, m + 10)
    path = run_study.plot_curves(study, str(tmp_path / "curves.png"))
    assert os.path.getsize(path) > 10_000


def test_shards_split_the_runs_without_overlap(tmp_path):
    study = run_study.load_study(_study(tmp_path))
    every = run_study.jobs(study)
    parts = [run_study.jobs(study, shard=(i, 4)) for i in range(4)]
    assert sorted(sum(parts, []), key=every.index) == every and len(every) == 6
    assert run_study.jobs(study, only=["b"]) == [(study["runs"][1], s) for s in (1, 2, 3)]


@pytest.mark.parametrize("content, message", [
    ("runs: []", "non-empty 'runs'"),
    ("runs: [{name: a, config: configs/none.yaml}]", "config 'configs/none.yaml' not found"),
    ("runs: [{name: a, config: configs/cpu/dcinet_r18_synth.yaml}, "
     "{name: a, config: configs/cpu/dcinet_r18_synth.yaml}]",
     "unique 'name'"),
    ("runs: [{name: a, config: configs/cpu/dcinet_r18_synth.yaml}]\ncurves: [b]", "curves name unknown runs"),
])
def test_bad_study_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    res = subprocess.run([sys.executable, "scripts/run_study.py", str(path), "table"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


# The runner is under test, not the model: the smallest images the synthetic data and the ResNet-18 config
# take, and no COCO AP (the table reads the search metrics only).
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", 128, "INPUT.MIN_SIZE_TEST", 96,
         "INPUT.MAX_SIZE_TEST", 128, "TEST.PERSON_SEARCH.COCO_AP", False]


@pytest.mark.slow
def test_a_tiny_study_trains_skips_done_runs_and_tabulates(tmp_path):
    from dcinet_d2.data.synthetic import generate

    env = dict(os.environ, DCINET_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="2")
    generate(tmp_path / "datasets" / "synthetic_cuhk_sysu", "cuhk_sysu", seed=0, identities=8, images=60,
             size=(96, 128))
    path = _study(tmp_path, seeds=[1, 2], opts=["SOLVER.MAX_ITER", 4, "SOLVER.WARMUP_ITERS", 1,
                                                   "TEST.PERSON_SEARCH.GALLERY_SIZES", "[50]", *SMALL],
                  curves=["a"], gallery_sizes=[50, -1])
    study = run_study.load_study(path)
    study_file = yaml.safe_load(open(path))
    study_file["runs"] = study_file["runs"][:1]
    study_file["runs"][0]["opts"] = ["TEST.EVAL_PERIOD", 2]
    with open(path, "w") as f:
        yaml.safe_dump(study_file, f)
    cmd = [sys.executable, "scripts/run_study.py", path]
    res = subprocess.run([*cmd, "all"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    table = open(os.path.join(study["out"], "table.md")).read()
    assert "| a | A | 2 |" in table
    for name in ("curves.png", "gallery_size.png", "table.csv"):
        assert os.path.getsize(os.path.join(study["out"], name)) > 0
    its, m, _ = run_study.curves(study, study["runs"][0])  # both seeds' evaluations: after iteration 2, final
    assert its.tolist() == [1, 4] and m.shape == (2, 2)
    done = json.load(open(os.path.join(study["out"], "a", "seed_2", "done.json")))
    assert done["metrics"]["iteration"] == 4 and "SEED" in done["command"]
    again = subprocess.run([*cmd, "run"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("done, skipped") == 2


@pytest.mark.parametrize("path", sorted((p for p in os.listdir(os.path.join(ROOT, "configs", "studies"))
                                         if p.endswith(".yaml"))))
def test_every_run_of_the_shipped_study_files_merges(path):
    """Each run's config and overrides (the study's, then the run's) merge into the project's config, so a
    study cannot fail on a typo an hour in."""
    from detectron2.config import get_cfg

    from dcinet_d2 import add_dcinet_config

    study = run_study.load_study(os.path.join(ROOT, "configs", "studies", path))
    names = [run["name"] for run in study["runs"]]
    assert len(set(names)) == len(names) and set(study.get("curves", [])) <= set(names)
    for run in study["runs"]:
        cfg = get_cfg()
        add_dcinet_config(cfg)
        cfg.merge_from_file(os.path.join(ROOT, run["config"]))
        cfg.merge_from_list([str(o) for o in [*study["opts"], *run.get("opts", [])]])
        assert cfg.MODEL.REID.LOSSES, run["name"]

#!/usr/bin/env python
"""Ablation studies: train and evaluate a list of runs over several seeds, then tabulate and plot them.

    python scripts/run_study.py STUDY.yaml run   [--only NAME ...] [--shard I/N] [--dry-run]
    python scripts/run_study.py STUDY.yaml table     # OUT/table.md and OUT/table.csv: mean and spread over seeds
    python scripts/run_study.py STUDY.yaml plot      # OUT/curves.png (mAP, top-1 vs iteration), OUT/gallery_size.png
    python scripts/run_study.py STUDY.yaml all       # run, table, plot

A study file (e.g. configs/studies/cpu_mnv2_synth.yaml) holds ``out`` (the study's folder), ``seeds``, ``opts``
(overrides of every run), ``runs`` (each: ``name``, ``config``, ``opts``, and optional ``row`` and ``paper``
labels for the table), ``curves`` (runs drawn against the iteration: their opts should set TEST.EVAL_PERIOD)
and ``gallery_sizes`` (CUHK-SYSU-format test sets: mAP against the gallery size, re-evaluated offline from
each run's results file).

Each (run, seed) trains with ``scripts/train_net.py ... SEED s OUTPUT_DIR OUT/name/seed_s`` and, when it
exits 0, gets a ``done.json`` (command, wall time, final metrics): a study that is stopped continues where
it left off, skipping every run with a ``done.json``. Runs are independent: spread one study over several
processes or machines sharing OUT (a network folder) with ``--shard I/N`` (process I of N takes every N-th
(run, seed), I = 0..N-1), then run ``table`` and ``plot`` once, anywhere that sees OUT.
"""
import argparse
import csv
import io
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = logging.getLogger("run_study")
METRICS = (("mAP", "search/mAP"), ("top-1", "search/top1"), ("det AP", "search/det_ap"))
# Columns shown when the runs evaluated with TEST.PERSON_SEARCH.CBGM (same models, re-scored).
CBGM_METRICS = (("mAP CBGM", "search/mAP@cbgm"), ("top-1 CBGM", "search/top1@cbgm"))


def load_study(path):
    """The study file as a dict, checked: ValueError naming the file and the key on bad input."""
    with open(path) as f:
        study = yaml.safe_load(f)
    if not isinstance(study, dict) or not study.get("runs"):
        raise ValueError(f"{path}: expected a mapping with a non-empty 'runs' list")
    names = [r.get("name") for r in study["runs"]]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path}: every run needs a unique 'name', got {names}")
    for r in study["runs"]:
        if not os.path.isfile(os.path.join(ROOT, r.get("config", ""))):
            raise ValueError(f"{path}: run {r['name']}: config {r.get('config')!r} not found")
    unknown = [n for n in study.get("curves", []) if n not in names]
    if unknown:
        raise ValueError(f"{path}: curves name unknown runs {unknown}")
    study.setdefault("out", os.path.join("output", "studies", os.path.splitext(os.path.basename(path))[0]))
    study["out"] = os.path.join(ROOT, study["out"])  # relative to the repository, wherever the runner starts
    study.setdefault("seeds", [1])
    study.setdefault("opts", [])
    return study


def jobs(study, only=(), shard=(0, 1)):
    """[(run dict, seed)] in study order, filtered by run names and taken every N-th for shard (I, N)."""
    all_jobs = [(r, s) for r in study["runs"] if not only or r["name"] in only for s in study["seeds"]]
    return all_jobs[shard[0]::shard[1]]


def run_dir(study, run, seed):
    return os.path.join(study["out"], run["name"], f"seed_{seed}")


def command(study, run, seed):
    """The train_net.py command of (run, seed); --resume continues an interrupted run from its last
    checkpoint (or starts it afresh)."""
    opts = [str(o) for o in [*study["opts"], *run.get("opts", [])]]
    return [sys.executable, os.path.join(ROOT, "scripts", "train_net.py"), "--resume", "--config-file",
            os.path.join(ROOT, run["config"]), *opts, "SEED", str(seed), "OUTPUT_DIR", run_dir(study, run, seed)]


def final_metrics(folder):
    """The last evaluation in ``folder``/metrics.json: {key: value} of the row holding search/mAP."""
    rows = read_metrics(folder)
    evals = [r for r in rows if "search/mAP" in r]
    return evals[-1] if evals else {}


def read_metrics(folder):
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_one(study, run, seed, dry_run=False):
    """Train and evaluate one (run, seed) unless its done.json exists; True when done."""
    folder = run_dir(study, run, seed)
    done = os.path.join(folder, "done.json")
    cmd = command(study, run, seed)
    if os.path.isfile(done):
        logger.info("%s seed %s: done, skipped", run["name"], seed)
        return True
    logger.info("%s seed %s: %s", run["name"], seed, " ".join(cmd))
    if dry_run:
        return False
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        logger.error("%s seed %s: train_net.py exited %d (see %s/log.txt)", run["name"], seed, proc.returncode,
                     folder)
        return False
    metrics = final_metrics(folder)
    from dcinet_d2.fileio import write_json

    write_json(done, {"command": cmd, "wall_s": round(time.time() - start, 1), "metrics": metrics})
    return True


def gather(study):
    """{run name: {"seeds": [...], metric label: [values], "train min": [...]}} over the done seeds."""
    table = {}
    for run in study["runs"]:
        entry = {"seeds": [], "train min": [], **{label: [] for label, _ in METRICS + CBGM_METRICS}}
        for seed in study["seeds"]:
            done = os.path.join(run_dir(study, run, seed), "done.json")
            if not os.path.isfile(done):
                continue
            with open(done) as f:
                info = json.load(f)
            entry["seeds"].append(seed)
            entry["train min"].append(info["wall_s"] / 60)
            for label, key in METRICS + CBGM_METRICS:
                entry[label].append(info["metrics"].get(key, float("nan")))
        table[run["name"]] = entry
    return table


def _spread(values):
    """'mean ± std (n)' with the sample standard deviation; '-' without values."""
    if not values:
        return "-"
    v = np.asarray(values, dtype=float)
    std = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{v.mean():.1f} ± {std:.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def write_table(study):
    """OUT/table.md and OUT/table.csv from the done runs; returns the Markdown text."""
    from dcinet_d2.fileio import atomic_open

    table = gather(study)
    labels = [label for label, _ in METRICS]
    labels += [label for label, _ in CBGM_METRICS if any(np.isfinite(e[label]).any() for e in table.values())]
    md = io.StringIO()
    md.write("| run | row | seeds | " + " | ".join(labels) + " | train min | paper mAP / top-1 |\n")
    md.write("|---" * (len(labels) + 5) + "|\n")
    rows = []
    for run in study["runs"]:
        e = table[run["name"]]
        md.write(f"| {run['name']} | {run.get('row', '')} | {len(e['seeds'])} | "
                 + " | ".join(_spread(e[label]) for label in labels)
                 + f" | {_spread(e['train min'])} | {run.get('paper', '')} |\n")
        for label in labels + ["train min"]:
            v = np.asarray(e[label], dtype=float)
            rows.append({"run": run["name"], "metric": label, "seeds": len(v),
                         "mean": f"{v.mean():.3f}" if len(v) else "",
                         "std": f"{v.std(ddof=1):.3f}" if len(v) > 1 else "",
                         "min": f"{v.min():.3f}" if len(v) else "", "max": f"{v.max():.3f}" if len(v) else "",
                         "values": " ".join(f"{x:.3f}" for x in v)})
    with atomic_open(os.path.join(study["out"], "table.md"), "w") as f:
        f.write(md.getvalue())
    with atomic_open(os.path.join(study["out"], "table.csv"), "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return md.getvalue()


def curves(study, run):
    """(iterations [K], mAP [S, K], top-1 [S, K]) over the done seeds of ``run`` evaluated at the same
    iterations (TEST.EVAL_PERIOD); None without periodic evaluations."""
    per_seed = []
    for seed in study["seeds"]:
        folder = run_dir(study, run, seed)
        if os.path.isfile(os.path.join(folder, "done.json")):
            evals = {r["iteration"]: r for r in read_metrics(folder) if "search/mAP" in r}
            per_seed.append(evals)
    if not per_seed:
        return None
    its = sorted(set.intersection(*(set(e) for e in per_seed)))
    if len(its) < 2:
        return None
    return (np.asarray(its), np.asarray([[e[i]["search/mAP"] for i in its] for e in per_seed]),
            np.asarray([[e[i]["search/top1"] for i in its] for e in per_seed]))


def plot_curves(study, path):
    """mAP and top-1 against the training iteration, one line per run (mean over seeds, band min..max)."""
    from dcinet_d2.evaluation.plots import new_figure, save_figure

    fig, axes = new_figure(size=(9.0, 3.6), ncols=2)
    drawn = 0
    for name in study.get("curves", []):
        run = next(r for r in study["runs"] if r["name"] == name)
        data = curves(study, run)
        if data is None:
            logger.warning("%s: no periodic evaluations to draw (set TEST.EVAL_PERIOD in its opts)", name)
            continue
        its, *values = data
        for ax, v in zip(axes, values):
            line, = ax.plot(its, v.mean(0), marker="o", label=f"{run.get('row', name)} ({len(v)} seeds)")
            ax.fill_between(its, v.min(0), v.max(0), color=line.get_color(), alpha=0.15)
        drawn += 1
    if not drawn:
        raise ValueError("no run of 'curves' has periodic evaluations to draw")
    for ax, label in zip(axes, ("mAP (%)", "top-1 (%)")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_gallery_sizes(study, path):
    """mAP and top-1 against the gallery size for every run (mean over seeds), from the results files."""
    from detectron2.data import MetadataCatalog

    import dcinet_d2  # noqa: F401  registers the datasets
    from dcinet_d2.evaluation.offline import evaluate_search_results
    from dcinet_d2.evaluation.plots import new_figure, save_figure

    sizes = study["gallery_sizes"]
    fig, (*axes, key) = new_figure(size=(13.0, 4.4), ncols=3)  # the third holds the legend of many runs
    x = np.arange(len(sizes))
    for i, run in enumerate(study["runs"]):
        values = []
        for seed in study["seeds"]:
            folder = run_dir(study, run, seed)
            if not os.path.isfile(os.path.join(folder, "done.json")):
                continue
            with open(os.path.join(folder, "config.yaml")) as f:
                gallery = yaml.safe_load(f)["DATASETS"]["TEST"][0]
            meta = MetadataCatalog.get(gallery)
            results = os.path.join(folder, "inference", gallery, "search_results.pth")
            values.append([[m["mAP"], m["top1"]] for m in (
                evaluate_search_results(results, meta.dataset_format, meta.root, gallery_size=n) for n in sizes)])
        if values:
            v = np.asarray(values).mean(0)
            for k, ax in enumerate(axes):
                # Matplotlib's 10 colours repeat: every 10 runs change the line style, so no two look alike.
                ax.plot(x, v[:, k], marker="o", linestyle=("-", "--", ":", "-.")[i // 10 % 4],
                        label=f"{run.get('row', run['name'])} ({len(values)} seeds)")
    for ax, label in zip(axes, ("mAP (%)", "top-1 (%)")):
        ax.set_xticks(x)
        ax.set_xticklabels(["full set" if n == -1 else str(n) for n in sizes])
        ax.set_xlabel("gallery size")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    key.axis("off")
    key.legend(*axes[0].get_legend_handles_labels(), loc="center left", fontsize=7, frameon=False)
    return save_figure(fig, path)


def parse_shard(text):
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected 0 <= I < N")
    return i, n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study")
    p.add_argument("action", choices=["run", "table", "plot", "all"])
    p.add_argument("--only", nargs="+", default=(), help="run names to train (default: all)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="I/N: this process's share of the runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the runs left to do")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[run_study] %(message)s")
    try:
        study = load_study(args.study)
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    failed = 0
    if args.action in ("run", "all"):
        failed = sum(not run_one(study, r, s, args.dry_run) for r, s in jobs(study, args.only, args.shard))
        if args.dry_run:
            return 0
    if args.action in ("table", "all"):
        print(write_table(study))
    if args.action in ("plot", "all"):
        try:
            if study.get("curves"):
                plot_curves(study, os.path.join(study["out"], "curves.png"))
            if study.get("gallery_sizes"):
                plot_gallery_sizes(study, os.path.join(study["out"], "gallery_size.png"))
        except (OSError, ValueError) as e:
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

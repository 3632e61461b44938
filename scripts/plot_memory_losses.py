#!/usr/bin/env python
"""Plot the memory-based re-id losses of a training run against their uniform values.

    python scripts/plot_memory_losses.py output/demo/metrics.json --out output/demo/memory_losses.png
    python scripts/plot_memory_losses.py runs/a/metrics.json runs/b/metrics.json --label "I-Net" --label "DC-I-Net" \
        --out losses.png        # one panel per run, side by side

Reads Detectron2's metrics.json: the unweighted losses ``reid/olp``, ``reid/c2hep`` / ``reid/hep`` (runs from
before they were recorded: ``loss_olp``, ... , which carry the loss weight) and the uniform values the
losses record (``reid/olp_uniform``: log(1 + valid dictionary negatives); ``reid/c2hep_uniform``,
``reid/hep_uniform``: log of the priority pool size), the loss of a model that cannot tell its candidates
apart. A loss that ends clearly below its line has learned. Prints the last values as a table.
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSSES = ("olp", "c2hep", "hep")


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows, key):
    points = [(r["iteration"], r[key]) for r in rows if key in r and "iteration" in r]
    return [p[0] for p in points], [p[1] for p in points]


def _plot_run(ax, rows, title):
    """One run's memory losses against their uniform values on ``ax``; returns the table rows printed."""
    key = {n: f"reid/{n}" if series(rows, f"reid/{n}")[0] else f"loss_{n}" for n in LOSSES}
    names = [n for n in LOSSES if series(rows, key[n])[0] and series(rows, f"reid/{n}_uniform")[0]]
    table = []
    for color, name in zip(("tab:blue", "tab:orange", "tab:green"), names):
        it, loss = series(rows, key[name])
        uit, uniform = series(rows, f"reid/{name}_uniform")
        ax.plot(it, loss, color=color, label=f"{name} loss (unweighted)")
        ax.plot(uit, uniform, color=color, linestyle="--", label=f"{name} uniform (log #candidates)")
        table.append(f"| {title} | {name} | {loss[-1]:.3f} | {uniform[-1]:.3f} | {loss[-1] / uniform[-1]:.2f} |")
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", help="metrics.json of one or more runs")
    parser.add_argument("--label", action="append", default=[], help="title of each run's panel (in order)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.metrics):
        print(f"error: {len(args.label)} --label for {len(args.metrics)} metrics files", file=sys.stderr)
        return 2
    runs = [(path, read_metrics(path)) for path in args.metrics]
    for path, rows in runs:
        if not any(series(rows, f"reid/{n}_uniform")[0] for n in LOSSES):
            print(f"error: {path}: no memory loss with its uniform value (reid/*_uniform) in it", file=sys.stderr)
            return 2
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False, sharey=True)
    print("| run | loss | last value | uniform value | ratio |\n|---|---|---|---|---|")
    for i, (ax, (path, rows)) in enumerate(zip(axes[0], runs)):
        for line in _plot_run(ax, rows, args.label[i] if args.label else path):
            print(line)
    axes[0][0].set_ylabel("loss (median of 20 iterations)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"picture: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

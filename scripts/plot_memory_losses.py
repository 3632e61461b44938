#!/usr/bin/env python
"""Plot the memory-based re-id losses of a training run against their uniform values.

    python scripts/plot_memory_losses.py output/demo/metrics.json --out output/demo/memory_losses.png

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = read_metrics(args.metrics)
    key = {n: f"reid/{n}" if series(rows, f"reid/{n}")[0] else f"loss_{n}" for n in LOSSES}
    names = [n for n in LOSSES if series(rows, key[n])[0] and series(rows, f"reid/{n}_uniform")[0]]
    if not names:
        print(f"error: {args.metrics}: no memory loss with its uniform value (reid/*_uniform) in it", file=sys.stderr)
        return 2
    fig, ax = plt.subplots(figsize=(7, 4))
    print("| loss | last value | uniform value | ratio |\n|---|---|---|---|")
    for color, name in zip(("tab:blue", "tab:orange", "tab:green"), names):
        it, loss = series(rows, key[name])
        uit, uniform = series(rows, f"reid/{name}_uniform")
        ax.plot(it, loss, color=color, label=f"{name} loss (unweighted)")
        ax.plot(uit, uniform, color=color, linestyle="--", label=f"{name} uniform (log #candidates)")
        print(f"| {name} | {loss[-1]:.3f} | {uniform[-1]:.3f} | {loss[-1] / uniform[-1]:.2f} |")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median of 20 iterations)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"picture: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

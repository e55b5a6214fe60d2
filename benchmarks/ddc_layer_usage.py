"""How much each trained model uses its latent layers: the share of each layer's variability that x carries.

For every run directory (written by ``wakesleep train``), :func:`wakesleep.eval.latent_predictability` draws
``--n`` + ``--n-test`` ancestral samples from the trained model and reports the held-out fraction of the variance
of each latent layer's sufficient statistics S(z_l) explained from x by ridge regression (``linear``) and by an
MLP (``mlp``, ``--mlp-epochs`` epochs; 0 skips it). Both are lower bounds on Var(E[S(z_l) | x]) / Var(S(z_l))
(pooled over the statistics), a property of the generative model alone: no recognition model or AIS reference
enters it. A layer near 0 % is nearly independent of x, i.e. unused by the model (e.g. an SBN 784-200-200-200
whose z2 is explained 1 % by x under one learner and 12 % under another).

Prints a markdown table (one row per run, ``linear / mlp`` in % per layer) and writes every result
(:meth:`~wakesleep.eval.predictability.PredictabilityResult.to_dict`, with the run directory) to ``--out``.
One intra-op thread (``torch.set_num_threads(1)``).

Usage::

    nice -n 10 python benchmarks/ddc_layer_usage.py --runs /tmp/ddc_rec/ddc_hm /tmp/ddc_rec/vimco_k50 \\
        --out /tmp/layer_usage.json [--n 100000] [--n-test 10000] [--mlp-epochs 5]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from wakesleep import runs
from wakesleep.eval import latent_predictability


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else f"{100 * value:.1f}"


def markdown_table(results: list[dict]) -> str:
    """One row per run, one ``linear / mlp`` column (in %) per latent layer name (top first, the deepest model's
    order, then names only shallower models have)."""
    names: list[str] = []
    for res in sorted(results, key=lambda r: -len(r["layers"])):
        for rec in res["layers"]:
            if rec["name"] not in names:
                names.append(rec["name"])
    head = "| run | " + " | ".join(f"{name}: linear / mlp (%)" for name in names) + " |"
    rows = [head, "|" + "---|" * (len(names) + 1)]
    for res in results:
        by_name = {rec["name"]: rec for rec in res["layers"]}
        cells = [f"{_pct(by_name[n]['linear'])} / {_pct(by_name[n]['mlp'])}" if n in by_name else "" for n in names]
        rows.append(f"| {res['label']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, type=Path, help="run directories of 'wakesleep train'")
    parser.add_argument("--out", required=True, type=Path, help="JSON file of all results")
    parser.add_argument("--n", type=int, default=100_000, help="training samples of the predictors")
    parser.add_argument("--n-test", type=int, default=10_000, help="held-out samples the fractions are scored on")
    parser.add_argument("--mlp-epochs", type=int, default=5, help="epochs of the MLP (0: linear only)")
    parser.add_argument("--mlp-hidden", type=int, default=500, help="width of the MLP's two hidden layers")
    parser.add_argument("--statistics", choices=("sufficient", "mean"), default="sufficient")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    results = []
    labels = [d.name for d in args.runs]
    if len(set(labels)) < len(labels):  # same directory names under different parents: use the paths
        labels = [str(d) for d in args.runs]
    t0 = time.perf_counter()
    for label, run_dir in zip(labels, args.runs, strict=True):
        _, model = runs.load_run(run_dir)
        res = latent_predictability(
            model,
            args.n,
            args.n_test,
            mlp_epochs=args.mlp_epochs,
            mlp_hidden=args.mlp_hidden,
            seed=args.seed,
            statistics=args.statistics,
        )
        print(f"{label} ({res.seconds:.0f} s):", *res.lines(), sep="\n  ", flush=True)
        results.append({"label": label, "run": str(run_dir), **res.to_dict()})

    print()
    print(markdown_table(results))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "runs"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    print(f"\n{len(results)} runs in {time.perf_counter() - t0:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()

"""How well the factorised posterior means of ``recognition_input: mean_field`` predict z_1 on a trained sigmoid
belief network (docs/RESULTS.md, session 17).

Loads a run directory of ``wakesleep train`` / ``bench_ddc_recognition.py`` (``config.yaml``,
``model.safetensors``), draws ``--n`` ancestral samples (z_L, ..., z_1, x) and prints, for several numbers of damped
mean-field steps, the share of z_1's variance that the means explain, R^2 = 1 - sum (z_1 - mu(x))^2 /
sum (z_1 - mean z_1)^2 (0 steps: the prior means passed down the hierarchy; the exact posterior means reach
Var(E[z_1 | x]) / Var(z_1), which ``ddc_layer_usage.py`` bounds from below).

Usage::

    python benchmarks/diag_mean_field_means.py RUN_DIR [--n 5000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

import wakesleep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    model = wakesleep.build_model(cfg["model"])
    model.load_state_dict(load_file(str(args.run / "model.safetensors")), strict=False)
    options = {k: v for k, v in cfg["algorithm"].items() if k != "name"}
    options["recognition_input"] = "mean_field"
    algo = wakesleep.build_algorithm("ddc_hm", model, **options)
    torch.manual_seed(0)
    with torch.no_grad():
        samples = model.sample(args.n)
    x, z1 = samples[-1], samples[-2]
    print("| mean-field steps | damping | R^2 of z1 | mean of mu (of z1) |")
    print("| --- | --- | --- | --- |")
    for steps, damping in [(0, 0.6), (1, 1.0), (3, 0.6), (8, 0.6), (20, 0.6), (50, 0.3)]:
        mu = algo.mean_field_means(x, steps=steps, damping=damping)
        r2 = 1 - ((z1 - mu) ** 2).sum() / ((z1 - z1.mean(0)) ** 2).sum()
        print(f"| {steps} | {damping} | {float(r2):.3f} | {float(mu.mean()):.3f} ({float(z1.mean()):.3f}) |")


if __name__ == "__main__":
    main()

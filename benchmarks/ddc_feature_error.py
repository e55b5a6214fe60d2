"""Held-out error of DDC-HM's gradient regressions (eqs. 31-35) per latent layer on a trained run: its encoding
functions against the random ones it started from (issue 16, item 4: learned encoding functions).

For each run, ``--samples`` fresh samples are drawn from the trained model; the first 80 % fit the ridge regressions
of the sketched per-sample gradients (``--directions`` random directions,
:func:`wakesleep.algorithms.ddc_hm.learned.sketched_targets`) on T(z_l), the rest measure the fraction of their
variance left unexplained. "start" uses the encoding functions of a freshly built algorithm (same seed, so the
run's initial projections), with the run's standardisation; for a run without ``learn_features`` the two are
the same. Also the held-out R^2 of a fresh closed-form read-out of each T from x (``recognition_r2_*``).

Usage::

    python benchmarks/ddc_feature_error.py --out docs/bench/sbn_s12/feature_error.json RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wakesleep import runs
from wakesleep.algorithms.ddc_hm.learned import EncodingLearner, random_directions
from wakesleep.algorithms.ddc_hm.ridge import with_intercept


def layer_errors(algo, model, samples, directions) -> dict[str, float]:
    learner = EncodingLearner(
        algo.encoders, algo._exact_stats, 1, 1e-3, 1, 10, ridge=algo.grad_ridge, free_stats=algo.free_stats
    )
    layers = list(model.layers.values())
    embed = [layers[i].embed(samples[i]) for i in range(len(layers) - 1)]
    errs = learner.heldout_errors(model, samples, algo.beta, embed, directions)
    names = model.latent_names
    return {names[i]: float(e) for i, e in errs.items()}


def recognition_r2(algo, model, samples, h, n_fit: int, ridge: float = 1e-3) -> dict[str, float]:
    """Held-out R^2 of a fresh closed-form read-out (eq. 7, relative ridge ``ridge``) of each layer's random
    encoding functions from the recognition inputs ``h`` (h(x) of the trained run, with intercept), fitted on
    the first ``n_fit`` samples: how well x can tell T(z_l), free of the running statistics' lag."""
    gram = h[:n_fit].T @ h[:n_fit] / n_fit
    gram = gram + torch.diag(torch.full((gram.shape[0],), ridge * float(gram.diagonal()[:-1].mean()), dtype=gram.dtype))
    out = {}
    for i, name in enumerate(model.latent_names):
        k = algo.encoders[i].n_random
        t = algo._encode(i, samples[i])[:, :k].double()
        coef = torch.linalg.solve(gram, h[:n_fit].T @ t[:n_fit] / n_fit)
        resid = t[n_fit:] - h[n_fit:] @ coef
        out[name] = 1.0 - float(resid.pow(2).sum() / (t[n_fit:] - t[n_fit:].mean(0)).pow(2).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=12500)
    ap.add_argument("--directions", type=int, default=32)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for run_dir in args.runs:
        _, model, algo = runs.load_trained(run_dir, "cpu")
        spec, _ = runs.load_run(run_dir, device="cpu")
        start = runs.build_algorithm(spec, model)
        for trained_enc, start_enc in zip(algo.encoders, start.encoders, strict=True):
            start_enc.standardize.load_state_dict(trained_enc.standardize.state_dict())
            if trained_enc.stats_standardize is not None:
                start_enc.stats_standardize.load_state_dict(trained_enc.stats_standardize.state_dict())
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            samples = model.sample(args.samples, generator=gen)
        directions = random_directions(model, args.directions, gen)
        with torch.no_grad():
            h = with_intercept(algo.recognizer.features(samples[-1])).double()
        results[str(run_dir)] = {
            "trained": layer_errors(algo, model, samples, directions),
            "start": layer_errors(start, model, samples, directions),
            "recognition_r2_trained": recognition_r2(algo, model, samples, h, int(0.8 * args.samples)),
            "recognition_r2_start": recognition_r2(start, model, samples, h, int(0.8 * args.samples)),
            "learn_features": bool(getattr(algo, "learn_features", False)),
            "samples": args.samples,
            "directions": args.directions,
        }
        print(run_dir, json.dumps(results[str(run_dir)]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

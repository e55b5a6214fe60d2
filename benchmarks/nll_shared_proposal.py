"""NLL of trained SBN models, all through the same kind of evaluation-only proposal (docs/RESULTS.md, "Session 4").

``wakesleep experiment sbn`` estimates the NLL of a model with its own trained proposal when it has one (VIMCO,
RWS, wake-sleep) and with :func:`wakesleep.eval.fit_proposal` otherwise (DDC-HM), so its NLL column mixes two
estimators. This script gives every model named by ``--labels`` a fresh ``fit_proposal`` proposal (model
frozen), trained in stages (``--stages``, cumulative Adam steps) and evaluated after each stage on the first
``--points`` test images with ``--k`` particles, and finally through the model's own proposal when it has one.
One JSON line per evaluation on stdout, after one line describing the model: the Frobenius norm of its
observation weights and the mean entropy of p(x | z1) over 2000 prior samples (how certain its pixels are).

Usage (``DIR`` is the output folder of a finished ``wakesleep experiment sbn`` run)::

    python benchmarks/nll_shared_proposal.py --run DIR/fashion_mnist --labels ddc_hm vimco_k50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from wakesleep.eval import fit_proposal, log_likelihood
from wakesleep.experiments.entries import load_finished as _load_finished
from wakesleep.runs import load_data
from wakesleep.runtime import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="folder holding one run directory per label")
    ap.add_argument("--labels", nargs="+", required=True)
    ap.add_argument("--stages", type=int, nargs="+", default=[2000, 8000, 20000])
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--k", type=int, default=1000)
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    for label in args.labels:
        run = args.run / label
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        model, algo = _load_finished(cfg, run / "checkpoint")
        with torch.no_grad():
            torch.manual_seed(0)
            zs = model.sample(2000)
            layers = list(model.layers.values())
            p = torch.sigmoid(layers[-1].natural_params(layers[-2].embed(zs[-2])).squeeze(-1)).double()
            entropy = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)).sum(1).mean()
            weight = float(layers[-1].link.weight.norm())
        print(json.dumps({"label": label, "obs_weight_norm": weight, "entropy_x_given_z1": float(entropy)}))
        data = load_data(cfg, model)
        train, test = data.train.to(model.dtype), data.test[: args.points].to(model.dtype)
        q, done, t0 = None, 0, time.perf_counter()
        for steps in sorted(args.stages):
            q = fit_proposal(model, train, steps=steps - done, proposal=q, seed=done)
            done = steps
            res = log_likelihood(model, test, q, k=args.k, seed=0)
            row = {"label": label, "proposal": f"fit_proposal {steps} steps", "nll": res.nll, "sem": res.sem}
            row |= {"ess_median": float(res.ess.double().median()), "seconds": time.perf_counter() - t0}
            print(json.dumps(row), flush=True)
        own = getattr(algo, "proposal", None)
        if own is not None and hasattr(own, "sample"):
            res = log_likelihood(model, test, own, k=args.k, seed=0)
            row = {"label": label, "proposal": "own", "nll": res.nll, "sem": res.sem}
            print(json.dumps(row | {"ess_median": float(res.ess.double().median())}), flush=True)


if __name__ == "__main__":
    main()

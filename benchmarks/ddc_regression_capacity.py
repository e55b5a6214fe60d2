"""Can DDC-HM's gradient regressions express a trained model's wake gradient? (issue 16, diagnostics)

For a trained run, the wake gradient that DDC-HM would compute with a **perfect recognition** (the reference
posterior's E[T(z_l) | x] in place of r_l(x); ``algo.wake_gradient(x, representation=...)``) is compared, per
layer, with reference gradients, for several settings of the parts that the recognition does not touch: the
number of encoding functions K, the sleep samples N, the exact sufficient statistics among the encoding
functions, and beta (eqs. 31-35). What is left between that cosine and the references' agreement is the error of
the regressions themselves (the encoding functions' span and the sleep samples' noise), which no recognition can
remove.

The references are computed **once** (``--repeats`` independent AIS runs for a sigmoid belief network,
importance sampling from the prior otherwise) and reused for every setting: the oracle gradient of reference i is
compared with reference i + 1. Each setting builds a fresh DDC-HM for the trained model (seeded) and runs
``--sleeps`` sleep phases at the trained parameters.

Usage::

    nice python benchmarks/ddc_regression_capacity.py --run DIR --out FILE.json [--points 50]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from wakesleep import runs
from wakesleep.algorithms import build_algorithm
from wakesleep.eval import ais_log_likelihood
from wakesleep.eval.references import cosine, family_name

SETTINGS: dict[str, dict] = {
    "run's settings": {},
    "N 10000": {"sleep_samples": 10000},
    "K 1000": {"features": 1000},
    "sufficient stats": {"extra_stats": "sufficient"},
    "beta conditional": {"beta": "conditional"},
    "sufficient, beta conditional": {"extra_stats": "sufficient", "beta": "conditional"},
    "sufficient, beta conditional, N 10000": {
        "extra_stats": "sufficient",
        "beta": "conditional",
        "sleep_samples": 10000,
    },
    "sufficient, beta conditional, N 10000, K 1000": {
        "extra_stats": "sufficient",
        "beta": "conditional",
        "sleep_samples": 10000,
        "features": 1000,
    },
}


def references(model, x, repeats: int, chains: int, temperatures: int, importance: int) -> list[dict]:
    """Per reference: particles (top first; ``[C, B, D]`` for AIS, ``[S, D]`` shared for importance sampling),
    normalised weights ``[C or S, B]`` and the gradient E[grad log p(x, z) | x] averaged over the points."""
    md = copy.deepcopy(model).double()
    xd = x.double()
    binary = all(family_name(layer) == "bernoulli" for layer in list(md.layers.values())[:-1])
    out = []
    for r in range(repeats):
        torch.manual_seed(100 + r)
        if binary:
            res = ais_log_likelihood(
                model, x, chains=chains, temperatures=temperatures, seed=100 + r, return_samples=True
            )
            w = torch.softmax(res.log_weights.double(), 0)
            zs = [z.double() for z in res.samples]
            xs = xd.expand(zs[0].shape[0], -1, -1)
        else:
            with torch.no_grad():
                zs = [z.double() for z in md.sample(importance)[:-1]]
                lw = md.log_joint(
                    xd.expand(importance, -1, -1), [z[:, None].expand(-1, xd.shape[0], -1) for z in zs], per_layer=True
                )[-1]
            w = torch.softmax(lw, 0)
            zs = [z[:, None].expand(-1, xd.shape[0], -1) for z in zs]
            xs = xd.expand(importance, -1, -1)
        md.zero_grad()
        ((md.log_joint(xs, zs) * w).sum() / xd.shape[0]).backward()
        grads = {k: p.grad.detach().clone() for k, p in md.named_parameters() if p.grad is not None}
        out.append({"particles": zs, "weights": w, "grads": grads})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--temperatures", type=int, default=1000)
    ap.add_argument("--importance", type=int, default=50000)
    ap.add_argument("--sleeps", type=int, default=1)
    ap.add_argument("--settings", default=";".join(SETTINGS), help="labels separated by ;")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec, model = runs.load_run(args.run)
    data = runs.load_data(spec, model)
    pool = data.draw_train() if hasattr(data, "draw_train") else data
    x = pool[: args.points].to(model.dtype)
    t0 = time.perf_counter()
    refs = references(model, x, args.repeats, args.chains, args.temperatures, args.importance)
    ref_seconds = time.perf_counter() - t0
    layer_names = list(model.layers)
    names = list(model.latent_names)

    def layer_cos(a: dict, b: dict, layer: str) -> float:
        keys = [k for k in b if k.startswith(f"layers.{layer}.") and k in a]
        return cosine(torch.cat([a[k].flatten() for k in keys]), torch.cat([b[k].flatten() for k in keys]))

    agreement = {n: layer_cos(refs[0]["grads"], refs[1]["grads"], n) for n in layer_names}
    results = {
        "run": str(args.run),
        "points": args.points,
        "reference_seconds": ref_seconds,
        "reference_agreement": agreement,
        "settings": {},
    }
    print("references agree:", " ".join(f"{n} {v:.3f}" for n, v in agreement.items()), flush=True)
    base = {k: v for k, v in vars(spec.algorithm.options).items()}
    for label in args.settings.split(";"):
        opts = {**base, **SETTINGS[label]}
        torch.manual_seed(0)
        t0 = time.perf_counter()
        algo = build_algorithm("ddc_hm", model, **opts)
        for _ in range(args.sleeps):
            algo.sleep()
        row = {}
        for i, ref in enumerate(refs):
            other = refs[(i + 1) % len(refs)]
            with torch.no_grad():
                rep = []
                for li, n in enumerate(names):
                    t = algo.encoding_functions(ref["particles"][li], n).double()
                    rep.append(torch.einsum("cb,cbk->bk", ref["weights"], t).to(model.dtype))
            g = {k: v.detach().double() for k, v in algo.wake_gradient(x, representation=rep).items()}
            for n in layer_names:
                row.setdefault(n, []).append(layer_cos(g, other["grads"], n))
        row = {n: sum(v) / len(v) for n, v in row.items()}
        results["settings"][label] = {
            "options": SETTINGS[label],
            "cosine_perfect_recognition": row,
            "seconds": time.perf_counter() - t0,
        }
        print(f"{label}: " + " ".join(f"{n} {v:.3f}" for n, v in row.items()), flush=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

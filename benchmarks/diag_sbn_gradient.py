"""DDC-HM's wake gradient and posterior means on a trained sigmoid belief network, against annealed importance
sampling (docs/RESULTS.md, "Session 8": why DDC-HM's SBN has the lower test likelihood).

For the first ``--points`` training images (binarised as in training) the script compares, at the trained
parameters of a DDC-HM entry of ``wakesleep experiment sbn`` (``--run DIR/<dataset>/ddc_hm``: its config.yaml and
checkpoint/), after ``--sleeps`` sleep phases at those parameters (``--set`` changes the entry's config first,
e.g. ``algorithm.sleep_samples``):

* DDC-HM's wake gradient (the mean over the images, as one wake phase computes it) with the reference
  grad log p(x) = E[grad log p(x, z) | x], from the final states of ``--chains`` AIS chains per image weighted by
  their normalised AIS weights (:func:`wakesleep.eval.ais_log_likelihood` with ``return_samples``, Gibbs sweeps,
  ``--temperatures`` temperatures; ``--repeats`` independent runs, averaged). Per parameter block: cosine,
  relative error, the two norms, and the reference's component along DDC-HM's direction (the
  log-likelihood's slope along the step DDC-HM takes); with two or more runs also the cosine between two
  runs' references, which says how far the reference itself can be trusted.
* DDC-HM's posterior means E_q[z_l | x] (its read-out, eq. 5) with the AIS posterior means, per latent layer:
  mean absolute error, and for scale the error of the data-independent guess (the AIS means averaged over the
  images) and the difference between two AIS runs.

Usage::

    python benchmarks/diag_sbn_gradient.py --run DIR/fashion_mnist/ddc_hm --points 100 --chains 16
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import yaml

from wakesleep.config import parse_overrides
from wakesleep.eval import ais_log_likelihood
from wakesleep.experiments.entries import load_finished as _load_finished
from wakesleep.runs import load_data
from wakesleep.runtime import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained ddc_hm entry of an sbn run")
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--temperatures", type=int, default=1000)
    ap.add_argument("--sleeps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="independent AIS runs (seeds seed, seed + 1, ...)")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the entry's config, e.g. algorithm.sleep_samples=10000 (the sleep phases run with it)",
    )
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    for key, value in parse_overrides(args.set):
        section, _, name = key.partition(".")
        cfg[section][name] = value
    model, algo = _load_finished(cfg, args.run / "checkpoint")
    data = load_data(cfg, model)
    x = (data.draw_train() if hasattr(data, "draw_train") else data)[: args.points].to(model.dtype)
    torch.manual_seed(args.seed)
    for _ in range(args.sleeps):
        algo.sleep()
    est = {k: v.double() for k, v in algo.wake_gradient(x).items()}
    with torch.no_grad():
        q_means = {k: v.double() for k, v in algo.posterior_mean(x).items()}

    md = copy.deepcopy(model).double()
    xd = x.double()
    names = list(model.latent_names)
    refs, means, nlls, ess = [], [], [], []
    for r in range(args.repeats):  # independent AIS runs: their agreement is the reference's own accuracy
        res = ais_log_likelihood(
            model, x, chains=args.chains, temperatures=args.temperatures, seed=args.seed + r, return_samples=True
        )
        w = torch.softmax(res.log_weights, 0)  # [C, B]
        zs = [z.double() for z in res.samples]
        md.zero_grad()
        ((md.log_joint(xd.expand(args.chains, -1, -1), zs) * w).sum() / xd.shape[0]).backward()
        refs.append({k: p.grad.clone() for k, p in md.named_parameters() if p.grad is not None})
        means.append({n: torch.einsum("cb,cbd->bd", w, z) for n, z in zip(names, zs, strict=True)})
        nlls.append(res.nll)
        ess.append(float(res.ess.median()))
    out: dict = {
        "run": str(args.run),
        "points": args.points,
        "chains": args.chains,
        "temperatures": args.temperatures,
        "repeats": args.repeats,
        "overrides": args.set,
        "ais_nll": nlls,
        "ais_ess_median": ess,
        "blocks": {},
        "posterior_means": {},
    }
    print(f"AIS: NLL {nlls} on these images, ESS median {ess} of {args.chains} chains, {args.repeats} runs")

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))

    for k in refs[0]:
        if k not in est:
            continue
        a = est[k].flatten()
        r = torch.stack([ref[k].flatten() for ref in refs]).mean(0)  # the mean of the runs
        row = {
            "cosine": cosine(a, r),
            "relative_error": float((a - r).norm() / r.norm()),
            "norm_ddc": float(a.norm()),
            "norm_reference": float(r.norm()),
            "reference_along_ddc": float(a @ r / a.norm()),
        }
        if args.repeats > 1:  # two runs' references against each other, and DDC-HM against each
            row["cosine_reference_runs"] = cosine(refs[0][k].flatten(), refs[1][k].flatten())
            row["cosine_per_run"] = [cosine(a, ref[k].flatten()) for ref in refs]
        out["blocks"][k] = row
        print(
            f"{k}: cosine {row['cosine']:.3f}"
            + (
                f" (per run {', '.join(f'{c:.3f}' for c in row['cosine_per_run'])}; run 1 vs run 2 "
                f"{row['cosine_reference_runs']:.3f})"
                if args.repeats > 1
                else ""
            )
            + f", relative error {row['relative_error']:.3f}, norm DDC-HM {row['norm_ddc']:.3g} reference "
            f"{row['norm_reference']:.3g}, reference along DDC-HM's direction {row['reference_along_ddc']:.3g}"
        )
    for name in names:
        ais_mean = torch.stack([m[name] for m in means]).mean(0)
        guess = ais_mean.mean(0, keepdim=True).expand_as(ais_mean)
        row = {
            "mae_ddc": float((q_means[name] - ais_mean).abs().mean()),
            "mae_constant_guess": float((guess - ais_mean).abs().mean()),
            "ddc_outside_0_1": float(((q_means[name] < 0) | (q_means[name] > 1)).double().mean()),
        }
        if args.repeats > 1:
            row["mae_reference_runs"] = float((means[0][name] - means[1][name]).abs().mean())
        out["posterior_means"][name] = row
        print(
            f"E[{name} | x]: mean |DDC-HM - AIS| {row['mae_ddc']:.3f}, data-independent guess "
            f"{row['mae_constant_guess']:.3f}"
            + (f", run 1 vs run 2 {row['mae_reference_runs']:.3f}" if args.repeats > 1 else "")
            + f", DDC-HM means outside [0, 1]: {100 * row['ddc_outside_0_1']:.1f} %"
        )
    out["seconds"] = time.perf_counter() - t0
    print(f"{out['seconds']:.0f} s")
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""DDC-HM's wake gradient on the eq. 13 patch model against an importance-sampling reference (docs/RESULTS.md,
"Session 4", the (10, 10) architecture).

For the first ``--points`` training patches the script compares DDC-HM's wake gradient (eq. 36) with a
self-normalised importance-sampling estimate of grad log p(x): per patch, ``--particles`` draws of z1 from a
Gaussian around the least-squares posterior (mean (L^T P L)^-1 L^T P x, covariance 4 (L^T P L)^-1, P = Psi^-1)
and z2 from its prior, then 2000 draws resampled by weight and differentiated. It prints, per parameter block,
the cosine, the relative error and the component of each gradient along the parameter itself ("radial": the
sign says whether the gradient grows or shrinks the block), the read-out's E[z1] and E[z1^2] against the
reference for a few patches, and the sizes of the bottom-up messages of data and of sleep samples.

``--reference ais`` replaces the importance-sampling reference by annealed importance sampling
(:func:`wakesleep.eval.ais_log_likelihood` with ``return_samples``: ``--chains`` chains per patch,
``--temperatures`` temperatures; the chains' final states weighted by their normalised AIS weights), for
trained models at D1 >= 50, where the Gaussian proposal's ESS is about 1.

The model is the initial one of ``wakesleep experiment patches`` for the architecture (seeded as the experiment
seeds it), or with ``--run DIR`` the trained DDC-HM entry ``DIR`` of a patches run (its config.yaml and
checkpoint/). ``--set key=value`` overrides experiment config keys (e.g. ``algorithm.sleep_samples=10000``);
``--sleeps`` sleep phases are run at fixed parameters before the comparison (the running statistics fill up).

Usage::

    python benchmarks/diag_patches_gradient.py --arch 10 10 --set algorithm.recognition_input=message --sleeps 100
    python benchmarks/diag_patches_gradient.py --run DIR/d50_2/ddc_hm --reference ais --chains 64
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import yaml

from wakesleep.config import parse_overrides
from wakesleep.experiments import experiment_config
from wakesleep.experiments.entries import algorithm_entries
from wakesleep.experiments.entries import load_finished as _load_finished
from wakesleep.experiments.patches import architecture_config
from wakesleep.runs import build_algorithm as build_algorithm_from_config
from wakesleep.runs import build_model as build_model_from_config
from wakesleep.runs import load_data
from wakesleep.runtime import keep_freed_memory


def reference_gradient(model, x: torch.Tensor, particles: int, seed: int = 1):
    """Self-normalised IS estimate of grad log p(x) (mean over rows), E[z1], E[z1^2] and the ESS per row."""
    md = copy.deepcopy(model).double()
    lam = md.layers["x"].link.weight.detach()
    psi = md.layers["x"].log_var.detach().exp()
    cov = torch.linalg.inv(lam.T @ (lam / psi[:, None]))
    mu = (x.double() / psi) @ lam @ cov
    gen = torch.Generator().manual_seed(seed)
    grads = {k: torch.zeros_like(p) for k, p in md.named_parameters() if p.requires_grad}
    ez, ez2, ess = [], [], []
    for b in range(x.shape[0]):
        z2 = md.layers["z2"].sample(particles, generator=gen)
        q = torch.distributions.MultivariateNormal(mu[b], covariance_matrix=4 * cov)
        z1 = q.sample((particles,))
        with torch.no_grad():
            w = torch.softmax(md.log_joint(x[b : b + 1].double().expand(particles, -1), [z2, z1]) - q.log_prob(z1), 0)
        ess.append(float(1 / (w**2).sum()))
        ez.append(w @ z1)
        ez2.append(w @ z1**2)
        idx = torch.multinomial(w, 2000, replacement=True, generator=gen)
        md.zero_grad()
        md.log_joint(x[b : b + 1].double().expand(2000, -1), [z2[idx], z1[idx]]).mean().backward()
        for k, p in md.named_parameters():
            if p.requires_grad and p.grad is not None:
                grads[k] += p.grad / x.shape[0]
    return grads, torch.stack(ez), torch.stack(ez2), torch.tensor(ess)


def ais_reference_gradient(model, x: torch.Tensor, chains: int, temperatures: int, seed: int = 1):
    """The same quantities from AIS posterior samples: grad log p(x) = E[grad log p(x, z) | x] with the chains'
    final states weighted by their normalised AIS weights; the ESS is that of the AIS weights."""
    from wakesleep.eval import ais_log_likelihood

    md = copy.deepcopy(model).double()
    x = x.double()
    res = ais_log_likelihood(md, x, chains=chains, temperatures=temperatures, seed=seed, return_samples=True)
    w = torch.softmax(res.log_weights, 0)  # [C, B]
    z2, z1 = res.samples
    md.zero_grad()
    ((md.log_joint(x.expand(chains, -1, -1), [z2, z1]) * w).sum() / x.shape[0]).backward()
    grads = {k: p.grad.clone() for k, p in md.named_parameters() if p.requires_grad and p.grad is not None}
    ez = torch.einsum("cb,cbd->bd", w, z1)
    ez2 = torch.einsum("cb,cbd->bd", w, z1 * z1)
    return grads, ez, ez2, res.ess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs=2, default=[10, 10], metavar=("D1", "D2"))
    ap.add_argument("--run", type=Path, default=None, help="a trained ddc_hm entry of a patches run")
    ap.add_argument("--set", action="append", default=[], help="experiment config override key=value")
    ap.add_argument("--sleeps", type=int, default=1)
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--particles", type=int, default=20000)
    ap.add_argument("--reference", choices=("is", "ais"), default="is")
    ap.add_argument("--chains", type=int, default=64, help="AIS chains per patch (--reference ais)")
    ap.add_argument("--temperatures", type=int, default=500, help="AIS temperatures (--reference ais)")
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    if args.run is not None:
        cfg = yaml.safe_load((args.run / "config.yaml").read_text())
        for key, value in parse_overrides(args.set):
            section, _, name = key.partition(".")
            cfg[section][name] = value
        model, algo = _load_finished(cfg, args.run / "checkpoint")
    else:
        exp = experiment_config("patches", overrides=args.set)
        cfg = next(iter(algorithm_entries(architecture_config(exp, *args.arch), "diag").values()))
        torch.manual_seed(cfg["train"]["seed"])
        model = build_model_from_config(cfg)
        algo = build_algorithm_from_config(cfg, model)
    x = load_data(cfg, model).train[: args.points]
    for _ in range(args.sleeps):
        algo.sleep()
    est = algo.wake_gradient(x.to(model.dtype))
    if args.reference == "ais":
        ref, ez, ez2, ess = ais_reference_gradient(model, x, args.chains, args.temperatures)
        print(f"reference: AIS, ESS median {ess.median():.1f} of {args.chains} chains, {args.temperatures} steps")
    else:
        ref, ez, ez2, ess = reference_gradient(model, x, args.particles)
        print(f"reference ESS median {ess.median():.1f} of {args.particles}")
    for k, r in ref.items():
        a, r = est[k].double().flatten(), r.flatten()
        p = dict(model.named_parameters())[k].detach().double().flatten()
        cos = float(a @ r / (a.norm() * r.norm()))
        radial = (
            f"radial DDC-HM {float(a @ p / p.norm()):.3g} reference {float(r @ p / p.norm()):.3g}"
            if float(p.norm()) > 0
            else "radial n/a (parameter is 0)"
        )
        print(f"{k}: cosine {cos:.3f}, relative error {float((a - r).norm() / r.norm()):.3f}, {radial}")
    with torch.no_grad():
        xm = x.to(model.dtype)
        e1 = algo.expectation(xm, "z1", lambda z: z).double()
        e2 = algo.expectation(xm, "z1", lambda z: z * z).double()
        for b in range(3):
            print(f"patch {b}: E[z1] DDC-HM {e1[b, :4].numpy().round(4)} reference {ez[b, :4].numpy().round(4)}")
            print(f"patch {b}: E[z1^2] DDC-HM {e2[b, :4].numpy().round(4)} reference {ez2[b, :4].numpy().round(4)}")
        if hasattr(algo, "bottom_up_message") and algo.recognition_input in ("message", "message_only"):
            md, ms = algo.bottom_up_message(xm), algo.bottom_up_message(model.sample(5000)[-1])
            data_norm, sleep_norm = float(md.norm(dim=1).median()), float(ms.norm(dim=1).median())
            print(f"message norm median: data {data_norm:.3g}, sleep {sleep_norm:.3g}")


if __name__ == "__main__":
    main()

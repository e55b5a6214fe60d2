"""Pyro models against the same models written in YAML: learning under ``al_ws`` and ``rws`` (issue 19).

The paper's eq. 13 model (``configs/synthetic.yaml``) and a 2-3-4 sigmoid belief network are written both ways
with the same initial parameters; each is trained from the same seed on the same data, and a third run of the
YAML model from another seed gives the Monte Carlo scale. Per row:

- ``|pyro - yaml|``: largest absolute difference of the learned parameters, Pyro vs YAML, same seed;
- ``|seed - seed|``: the same between two seeds of the YAML model (the Monte Carlo error of the learning);
- the metric of each learned model on held-out data: exact mean log-likelihood by enumeration (SBN, higher is
  better) or the unbiased MMD^2 between 2000 model samples and the held-out data (eq. 13, lower is better).

Pyro's Bernoulli draws from torch's RNG exactly as the library's family does, so the SBN rows with the
library's proposal are the same run bit for bit; eq. 13's Laplace and mixture draw in another order, so there
the two ways see different samples and agree within Monte Carlo error. The ``pyro guide`` rows train the Pyro
model with a Pyro guide (``PyroGuide``) that is the library's layered proposal of the same options written in
Pyro (eq. 13: Gaussian factors with one tanh layer of 32 units; SBN: affine Bernoulli factors), and compare with
the YAML model under the library's proposal.

Usage::

    python benchmarks/pyro_vs_yaml.py --iters 300 --out docs/bench/pyro_vs_yaml.txt
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import platform
import sys
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
import yaml

import wakesleep
from wakesleep.eval import mmd
from wakesleep.models import from_pyro
from wakesleep.models.pyro_models import PyroGuide
from wakesleep.training import Trainer

DT = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBN_LAYERS = [
    {"name": "z2", "family": "bernoulli", "dim": 2},
    {"name": "z1", "family": "bernoulli", "dim": 3, "link": "linear"},
    {"name": "x", "family": "bernoulli", "dim": 4, "link": "linear"},
]
NAMES = {
    "eq13": {"B": "layers.z1.link.weight", "log_psi": "layers.x.log_var", "Lambda": "layers.x.link.weight"},
    "sbn": {
        "b2": "layers.z2.link.value",
        "W1": "layers.z1.link.weight",
        "c1": "layers.z1.link.bias",
        "W0": "layers.x.link.weight",
        "c0": "layers.x.link.bias",
    },
}


# --- the models, both ways -----------------------------------------------------------------------------
def yaml_model(which: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if which == "eq13":
        with open(os.path.join(ROOT, "configs", "synthetic.yaml")) as f:
            return wakesleep.build_model(yaml.safe_load(f)["model"])
    model = wakesleep.build_model({"layers": copy.deepcopy(SBN_LAYERS), "dtype": "float64"})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (2.0 if seed >= 100 else 0.1))
    return model


def pyro_twin(which: str, lib: torch.nn.Module):
    """The same model as a Pyro program, with ``lib``'s parameter values."""
    init = {k: dict(lib.named_parameters())[v].detach().clone() for k, v in NAMES[which].items()}
    if which == "eq13":
        prior = lib.layers.z2.prior
        logits, means, std = prior.logits.clone(), prior.means.clone(), prior.log_std.exp()

        def eq13():
            B = pyro.param("B", init["B"])
            log_psi = pyro.param("log_psi", init["log_psi"])
            Lam = pyro.param("Lambda", init["Lambda"])
            mix = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(means, std).to_event(1))
            z2 = pyro.sample("z2", mix)
            z1 = pyro.sample("z1", dist.Laplace(0.0, F.softplus(F.linear(z2, B))).to_event(1))
            pyro.sample("x", dist.Normal(F.linear(z1, Lam), torch.exp(0.5 * log_psi)).to_event(1))

        return from_pyro(eq13, observed="x", dtype=DT)

    def sbn():
        b2 = pyro.param("b2", init["b2"])
        W1, c1 = pyro.param("W1", init["W1"]), pyro.param("c1", init["c1"])
        W0, c0 = pyro.param("W0", init["W0"]), pyro.param("c0", init["c0"])
        z2 = pyro.sample("z2", dist.Bernoulli(logits=b2).to_event(1))
        z1 = pyro.sample("z1", dist.Bernoulli(logits=F.linear(z2, W1, c1)).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=F.linear(z1, W0, c0)).to_event(1))

    return from_pyro(sbn, observed="x", dtype=DT)


def pyro_guide(which: str, model) -> PyroGuide:
    """An amortised bottom-up Pyro guide q(z1 | x) q(z2 | z1) (networks registered with pyro.module): the
    library's layered proposal of the same options written in Pyro (same architecture and initialisation)."""
    if which == "eq13":  # Gaussian factors, one tanh hidden layer of 32; last layer scaled by 0.1, bias 0
        enc1 = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).double()
        enc2 = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
        with torch.no_grad():
            for enc in (enc1, enc2):
                enc[-1].weight.mul_(0.1)
                enc[-1].bias.zero_()

        def guide(x):
            pyro.module("enc1", enc1)
            pyro.module("enc2", enc2)
            loc1, log_s1 = enc1(x).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc1, log_s1.clamp(-9, 5).exp()).to_event(1))
            loc2, log_s2 = enc2(z1).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc2, log_s2.clamp(-9, 5).exp()).to_event(1))

        return PyroGuide(model, guide)

    enc1, enc2 = torch.nn.Linear(4, 3).double(), torch.nn.Linear(3, 2).double()

    def guide(x):
        pyro.module("enc1", enc1)
        pyro.module("enc2", enc2)
        z1 = pyro.sample("z1", dist.Bernoulli(logits=enc1(x)).to_event(1))
        pyro.sample("z2", dist.Bernoulli(logits=enc2(z1)).to_event(1))

    return PyroGuide(model, guide)


# --- training and metrics ------------------------------------------------------------------------------
ALGORITHMS = {
    "al_ws": {"sleep_samples": 500, "kernel": "exact", "select_every": 25, "seed": 3},
    "rws": {"k": 10},
}
PROPOSAL_HIDDEN = {"eq13": [32], "sbn": 0}  # rws's layered proposal (and the guide that mirrors it)


def train(which: str, model, algorithm: str, data, iters: int, seed: int, proposal=None) -> float:
    options = dict(ALGORITHMS[algorithm])
    if algorithm == "rws":
        options["proposal_hidden"] = PROPOSAL_HIDDEN[which]
    if proposal is not None:
        options["proposal"] = proposal
    torch.manual_seed(seed)  # the library proposal's initial weights
    algo = wakesleep.build_algorithm(algorithm, model, **options)
    t0 = time.perf_counter()
    Trainer(
        algo,
        epochs=10_000,
        batch_size=100,
        lr=1e-2,
        recognition_lr=1e-2,
        seed=seed,
        max_iters=iters,
        progress=False,
        monitor_samples=0,
        log_every=10_000,
    ).fit(data)
    return time.perf_counter() - t0


def params(which: str, model) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    if hasattr(model, "parameter_name"):
        return {k: model.param(k).detach().clone() for k in NAMES[which]}
    return {k: named[v].detach().clone() for k, v in NAMES[which].items()}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def as_library(which: str, model) -> torch.nn.Module:
    """A YAML model holding ``model``'s parameter values (the metrics are computed by the same code)."""
    if not hasattr(model, "parameter_name"):
        return model
    lib = yaml_model(which, 0)
    named = dict(lib.named_parameters())
    with torch.no_grad():
        for k, v in NAMES[which].items():
            named[v].copy_(model.param(k))
    return lib


def metric(which: str, model, test) -> tuple[float, float]:
    """(mean log-likelihood of the held-out data, MMD^2 of 2000 model samples against it)."""
    samples = model.sample(2000, generator=torch.Generator().manual_seed(123))[-1]
    m2 = float(mmd(samples, test, seed=0))
    lib = as_library(which, model)
    with torch.no_grad():
        if which == "sbn":  # exact: 32 latent configurations
            configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=DT)
            lj = lib.log_joint(test, [configs[:, None, :2], configs[:, None, 2:]])
            return float(torch.logsumexp(lj, 0).mean()), m2
        # eq. 13: importance sampling from the prior, K = 20000 (in chunks; the same draws for every model)
        gen, chunks = torch.Generator().manual_seed(321), []
        for _ in range(10):
            zs = lib.sample(2000, generator=gen)[:-1]
            chunks.append(lib.layers.x.log_prob(test, zs[-1][:, None, :]))  # log p(x | z1) [2000, B]
        lw = torch.cat(chunks, 0)
        return float((torch.logsumexp(lw, 0) - torch.log(torch.tensor(float(lw.shape[0])))).mean()), m2


def row(which: str, algorithm: str, guide: bool, data, test, iters: int, cache: dict) -> dict:
    key = (which, algorithm)
    if key not in cache:  # the YAML model: seeds 0 and 1
        out = {}
        for seed in (0, 1):
            lib = yaml_model(which, 0)
            secs = train(which, lib, algorithm, data, iters, seed)
            out[seed] = (params(which, lib), metric(which, lib, test), secs)
        cache[key] = out
    yaml_runs = cache[key]
    pm = pyro_twin(which, yaml_model(which, 0))
    proposal = None
    if guide:
        torch.manual_seed(0)
        proposal = pyro_guide(which, pm)
    secs = train(which, pm, algorithm, data, iters, 0, proposal)
    p_pyro = params(which, pm)
    return {
        "model": which,
        "algorithm": algorithm + (" (pyro guide)" if guide else " (library proposal)" if algorithm == "rws" else ""),
        "way": max_diff(p_pyro, yaml_runs[0][0]),
        "seed": max_diff(yaml_runs[1][0], yaml_runs[0][0]),
        "yaml": yaml_runs[0][1],
        "yaml_seed1": yaml_runs[1][1],
        "pyro": metric(which, pm, test),
        "secs_yaml": yaml_runs[0][2],
        "secs_pyro": secs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300, help="training iterations per run (batch 100)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, cache = [], {}
    for which in ("eq13", "sbn"):
        true = yaml_model(which, 100)
        torch.manual_seed(7)
        data, test = true.sample(2000)[-1], true.sample(1000)[-1]
        for algorithm, guide in (("al_ws", False), ("rws", False), ("rws", True)):
            rows.append(row(which, algorithm, guide, data, test, args.iters, cache))
            print(rows[-1], file=sys.stderr, flush=True)
    header = [
        "# benchmarks/pyro_vs_yaml.py: Pyro models vs the same models in YAML, learned from the same seed",
        f"# command: python benchmarks/pyro_vs_yaml.py --iters {args.iters} --threads {args.threads}",
        f"# machine: {platform.platform()}, {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}, "
        f"pyro {pyro.__version__}, float64",
        f"# {args.iters} Adam steps (lr 1e-2, batch 100) on 2000 points from a true model; metrics on 1000 held-out "
        "points",
        "# |pyro - yaml|: largest learned-parameter difference, same seed; |seed - seed|: YAML seed 0 vs seed 1",
        "# (the Monte Carlo scale); loglik: mean held-out log-likelihood (sbn: exact by enumeration; eq13: prior",
        "# importance sampling, K = 20000); mmd2: unbiased MMD^2 of 2000 model samples against the held-out data",
        "",
    ]
    cols = (
        "model",
        "algorithm",
        "|pyro - yaml|",
        "|seed - seed|",
        "loglik yaml",
        "loglik yaml seed 1",
        "loglik pyro",
        "mmd2 yaml",
        "mmd2 pyro",
        "s yaml",
        "s pyro",
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['algorithm']} | {r['way']:.2e} | {r['seed']:.2e} | {r['yaml'][0]:.4f} | "
            f"{r['yaml_seed1'][0]:.4f} | {r['pyro'][0]:.4f} | {r['yaml'][1]:.5f} | {r['pyro'][1]:.5f} | "
            f"{r['secs_yaml']:.1f} | {r['secs_pyro']:.1f} |"
        )
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

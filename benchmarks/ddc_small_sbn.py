"""Does DDC-HM learn to use an upper latent layer where maximum likelihood does? A small SBN with exact answers.

Issue 16: on 60000 Fashion-MNIST images DDC-HM's SBN hardly uses z2 (x explains 1 % of it against VIMCO's 12 %)
and ends 6 nats behind VIMCO. This benchmark asks the same question where everything is exact: a teacher SBN
z2 (4) -> z1 (10) -> x (32) with strong links draws the data; students of the same shape are trained by exact
maximum likelihood (the gradient of log p(x) by enumerating all 2^14 latent configurations), VIMCO, RWS and
DDC-HM settings, and DDC-HM with a perfect recognition (the exact E[T(z_l) | x] in every wake gradient, which
leaves only the gradient regressions between it and the exact gradient); each is scored by its exact test
log-likelihood and by how much of each latent layer's variance x explains under the student's own model,
1 - E_x[Var(z_l | x)] / Var(z_l), from exact posteriors of ``--usage-points`` of its samples.
Results: docs/RESULTS.md, "Session 14".

Usage::

    nice python benchmarks/ddc_small_sbn.py --out docs/bench/small_sbn_s14 [--entries a,b] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from wakesleep import runs
from wakesleep.eval.loglik import exact_log_likelihood_enumerate
from wakesleep.eval.posterior import enumerate_posterior
from wakesleep.spec import RunSpec

LAYERS = [
    {"name": "z2", "family": "bernoulli", "dim": 4},
    {"name": "z1", "family": "bernoulli", "dim": 10, "link": "linear"},
    {"name": "x", "family": "bernoulli", "dim": 32, "link": "linear"},
]
DDC = {"name": "ddc_hm", "sleep_samples": 10000, "recognition_hidden": 100, "recognition_input": "linear"}
ENTRIES: dict[str, dict] = {
    "exact": {"name": "exact"},
    "vimco_k50": {"name": "vimco", "k": 50},
    "rws_k5": {"name": "rws", "k": 5},
    # K = D_1 random encodings, as configs/sbn.yaml's 200 for 200 units
    "ddc_k10": {**DDC, "features": 10},
    "ddc_k10_sufficient": {**DDC, "features": 10, "extra_stats": "sufficient"},
    # the layers' pairwise products z_i z_j beside z (p(z1 | z2)'s gradient needs E[z1 z1^T | x] once z2 uses z1)
    "ddc_k10_quadratic": {**DDC, "features": 10, "extra_stats": "quadratic"},
    "ddc_k200": {**DDC, "features": 200},
    "ddc_k200_sufficient": {**DDC, "features": 200, "extra_stats": "sufficient"},
    # the recognition: 10x the random ReLU units of the read-out, or trained networks (recognition: mlp / deep)
    "ddc_k10_sufficient_m1000": {**DDC, "features": 10, "extra_stats": "sufficient", "recognition_hidden": 1000},
    "ddc_k10_sufficient_xx": {**DDC, "features": 10, "extra_stats": "sufficient", "recognition_input": "quadratic"},
    "ddc_k10_sufficient_mlp": {**DDC, "features": 10, "extra_stats": "sufficient", "recognition": "mlp"},
    "ddc_k10_sufficient_deep": {**DDC, "features": 10, "extra_stats": "sufficient", "recognition": "deep"},
    "ddc_k200_sufficient_deep": {**DDC, "features": 200, "extra_stats": "sufficient", "recognition": "deep"},
    # session 15: the deep recognition's r read out of its networks' features by a regression on each phase's samples
    "ddc_k10_sufficient_deep_cal": {
        **DDC,
        "features": 10,
        "extra_stats": "sufficient",
        "recognition": "deep",
        "recognition_calibrate": "features",
    },
    # session 16: the exact posterior depends on x only through the bottom-up message c(x) W (10 numbers here), so
    # the read-out's random ReLU layer reads the message instead of x (recognition_input: message_only)
    "ddc_k10_sufficient_msg": {**DDC, "features": 10, "extra_stats": "sufficient", "recognition_input": "message_only"},
    # a sleep phase every 5 or 20 wake steps (on the 784-pixel SBN every step was 18 nats worse than every 20)
    "ddc_k10_sufficient_every5": {**DDC, "features": 10, "extra_stats": "sufficient", "train": {"sleep_every": 5}},
    "ddc_k10_sufficient_every20": {**DDC, "features": 10, "extra_stats": "sufficient", "train": {"sleep_every": 20}},
    "ddc_k10_sufficient_every100": {**DDC, "features": 10, "extra_stats": "sufficient", "train": {"sleep_every": 100}},
    "ddc_k200_sufficient_every100": {
        **DDC,
        "features": 200,
        "extra_stats": "sufficient",
        "train": {"sleep_every": 100},
    },
    # a sleep phase (new samples, gradient regressions) every step, the recognition refitted every 20th phase only
    "ddc_k10_sufficient_recognition_every20": {
        **DDC,
        "features": 10,
        "extra_stats": "sufficient",
        "recognition_every": 20,
    },
    "ddc_k10_sufficient_recognition_every100": {
        **DDC,
        "features": 10,
        "extra_stats": "sufficient",
        "recognition_every": 100,
    },
    "ddc_k10_sufficient_msg_every100": {
        **DDC,
        "features": 10,
        "extra_stats": "sufficient",
        "recognition_input": "message_only",
        "train": {"sleep_every": 100},
    },
    "ddc_k10_sufficient_msg_every20": {
        **DDC,
        "features": 10,
        "extra_stats": "sufficient",
        "recognition_input": "message_only",
        "train": {"sleep_every": 20},
    },
    # session 17: x and the factorised (mean-field) posterior means of z1 given x in the read-out
    "ddc_k10_sufficient_mf": {**DDC, "features": 10, "extra_stats": "sufficient", "recognition_input": "mean_field"},
    "ddc_k200_sufficient_mf": {**DDC, "features": 200, "extra_stats": "sufficient", "recognition_input": "mean_field"},
    "ddc_k10_sufficient_mf_every20": {
        **DDC,
        "features": 10,
        "extra_stats": "sufficient",
        "recognition_input": "mean_field",
        "train": {"sleep_every": 20},
    },
    # a perfect recognition: the wake gradient with the exact E[T(z_l) | x] in place of r_l(x), so only the gradient
    # regressions (eqs. 31-35) stand between DDC-HM and the exact gradient
    "ddc_k10_sufficient_oracle": {**DDC, "features": 10, "extra_stats": "sufficient", "oracle": True},
    "ddc_k10_quadratic_oracle": {**DDC, "features": 10, "extra_stats": "quadratic", "oracle": True},
    "ddc_k200_sufficient_oracle": {**DDC, "features": 200, "extra_stats": "sufficient", "oracle": True},
    "ddc_k10_sufficient_deep_cal_every20": {
        **DDC,
        "features": 10,
        "extra_stats": "sufficient",
        "recognition": "deep",
        "recognition_calibrate": "features",
        "train": {"sleep_every": 20},
    },
    "ddc_k10_sufficient_oracle_every20": {
        **DDC,
        "features": 10,
        "extra_stats": "sufficient",
        "oracle": True,
        "train": {"sleep_every": 20},
    },
}


def teacher(seed: int) -> torch.nn.Module:
    """The data's SBN: strong links, biases centring each unit's input."""
    from wakesleep.models import build_model

    model = build_model({"layers": LAYERS, "dtype": "float64"})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("z1", "x"):
            link = model.layers[name].link
            w = 3.0 * torch.randn(link.weight.shape, generator=g, dtype=torch.float64)
            link.weight.copy_(w)
            link.bias.copy_(-0.5 * w.sum(1))
        model.layers["z2"].link.value.zero_()
    return model


def exact_fit(model: torch.nn.Module, x: torch.Tensor, iters: int, lr: float, batch: int, seed: int) -> None:
    """Adam on the exact mean log-likelihood, log p(x) = log sum_z1 p(z1) p(x | z1), p(z1) = sum_z2 p(z2) p(z1 | z2)."""
    top, mid, obs = model.layers["z2"], model.layers["z1"], model.layers["x"]
    bits = torch.tensor([0.0, 1.0], dtype=torch.float64)
    z2, z1 = (torch.cartesian_prod(*[bits] * int(layer.dim)) for layer in (top, mid))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(iters):
        xb = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
        log_z1 = torch.logsumexp(top.log_prob(z2)[:, None] + mid.log_prob(z1[None], top.embed(z2)[:, None]), 0)
        lj = log_z1[:, None] + obs.log_prob(xb[None], mid.embed(z1)[:, None])  # [C1, B]
        loss = -torch.logsumexp(lj, 0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def perfect_recognition(algo: torch.nn.Module, model: torch.nn.Module) -> None:
    """Make ``algo.wake_gradient(x)`` use the exact E[T(z_l) | x] (enumeration) instead of the recognition's r_l(x)."""
    plain = algo.wake_gradient

    def wake_gradient(x: torch.Tensor, **kwargs: object):  # noqa: ANN202 - the algorithm's WakeGradient
        post = enumerate_posterior(model, x)
        p = post.probs.to(model.dtype)
        rep = [p @ algo.encoding_functions(z, n) for z, n in zip(post.configs, model.latent_names, strict=True)]
        return plain(x, representation=rep)

    algo.wake_gradient = wake_gradient


def slow_recognition(algo: torch.nn.Module, every: int) -> None:
    """Refit the recognition at every ``every``-th sleep phase only (its statistics skip the others' samples); the
    gradient regressions are refitted at every phase as before. A diagnostic, not an algorithm option."""
    plain = algo.recognizer.fit
    calls = [0]

    def fit(*args: object, **kwargs: object) -> dict:
        calls[0] += 1
        return plain(*args, **kwargs) if (calls[0] - 1) % every == 0 else {}

    algo.recognizer.fit = fit


def usage(model: torch.nn.Module, n: int, seed: int) -> dict[str, float]:
    """Share of each latent layer's variance that x explains under the model, from exact posteriors."""
    torch.manual_seed(seed)
    with torch.no_grad():
        samples = model.sample(n)
    zs, x = samples[:-1], samples[-1]
    means = [enumerate_posterior(model, x[i : i + 100]).marginals() for i in range(0, n, 100)]
    out = {}
    for j, (name, z) in enumerate(zip(model.latent_names, zs, strict=True)):
        m = torch.cat([mm[j] for mm in means])
        z = z.double()
        out[name] = float(m.var(0).sum() / z.var(0).sum())
    return out


def run_entry(entry: dict, data: Path, seed: int, args: argparse.Namespace) -> dict:
    algo = dict(entry)
    exact = algo.get("name") == "exact"
    oracle = algo.pop("oracle", False)
    recognition_every = algo.pop("recognition_every", 1)
    train = algo.pop("train", {})  # train settings of this entry (e.g. sleep_every)
    spec = RunSpec.from_mapping(
        {
            "model": {"layers": LAYERS, "dtype": "float64"},
            "algorithm": {"name": "rws"} if exact else algo,
            "train": {
                "max_iters": 1 if exact else args.iters,
                "epochs": 10**6,
                "batch_size": args.batch,
                "lr": args.lr,
                "seed": seed,
                "log_every": 10**6,
                "threads": 1,
                **train,
            },
            "data": {"source": "file", "path": str(data)},
        }
    )
    t0 = time.perf_counter()
    run = runs.prepare(spec)
    if exact:
        torch.manual_seed(seed)
        exact_fit(run.model, run.data.train, args.iters, args.lr, args.batch, seed)
    else:
        if oracle:
            perfect_recognition(run.algorithm, run.model)
        if recognition_every > 1:
            slow_recognition(run.algorithm, recognition_every)
        run.fit(progress=False)
    seconds = time.perf_counter() - t0
    x_test = torch.as_tensor(np.load(data)["x_test"])
    ll = exact_log_likelihood_enumerate(run.model, x_test)
    return {
        "train_seconds": seconds,
        "test_nll": float(-ll.mean()),
        "test_nll_per_point": (-ll).tolist(),
        "usage": usage(run.model, args.usage_points, seed + 1000),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--entries", default=",".join(ENTRIES))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--usage-points", type=int, default=20000)
    ap.add_argument("--table-only", action="store_true", help="print the table of --out's results.json")
    args = ap.parse_args()
    unknown = sorted(set(args.entries.split(",")) - set(ENTRIES))
    if unknown:
        ap.error(f"--entries: unknown {', '.join(unknown)}; known: {', '.join(ENTRIES)}")
    torch.set_num_threads(1)
    path = args.out / "results.json"
    if args.table_only and not path.is_file():
        ap.error(f"--table-only: {path} does not exist")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data.npz"
    t = teacher(0)
    if not data.exists() and not args.table_only:
        torch.manual_seed(12345)
        with torch.no_grad():
            x = t.sample(args.n + args.n_test)[-1].numpy()
        np.savez(data, x=x[: args.n], x_test=x[args.n :])
    results = json.loads(path.read_text()) if path.exists() else {}
    if "teacher" not in results:
        x_test = torch.as_tensor(np.load(data)["x_test"])
        ll = exact_log_likelihood_enumerate(t, x_test)
        results["teacher"] = [
            {"test_nll": float(-ll.mean()), "test_nll_per_point": (-ll).tolist(), "usage": usage(t, 20000, 1)}
        ]
        path.write_text(json.dumps(results, indent=1))
    for label in [] if args.table_only else args.entries.split(","):
        have = results.get(label, [])
        for seed in range(len(have), args.seeds):
            have.append(run_entry(ENTRIES[label], data, seed, args))
            results[label] = have
            path.write_text(json.dumps(results, indent=1))
            r = have[-1]
            print(label, seed, f"{r['train_seconds']:.0f}s nll {r['test_nll']:.3f} usage {r['usage']}", flush=True)

    def per_point(label: str) -> np.ndarray:  # mean over seeds, per test point
        return np.mean([r["test_nll_per_point"] for r in results[label]], axis=0)

    ref = per_point("exact") if "exact" in results else per_point("teacher")
    lines = [
        "| model | train s | exact test NLL | minus exact ML, paired | x explains z2 / z1 (%) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, reps in results.items():
        nll = np.mean([r["test_nll"] for r in reps])
        d = per_point(label) - ref
        secs = np.mean([r.get("train_seconds", 0.0) for r in reps])
        use = " / ".join(f"{100 * np.mean([r['usage'][k] for r in reps]):.1f}" for k in reps[0]["usage"])
        seeds = "" if label == "teacher" else f" ({len(reps)} seeds)"
        lines.append(
            f"| {label}{seeds} | {secs:.0f} | {nll:.3f} | {d.mean():+.3f} +- {d.std(ddof=1) / np.sqrt(d.size):.3f} "
            f"| {use} |"
        )
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

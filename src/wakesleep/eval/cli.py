"""``wakesleep evaluate --run DIR``: evaluate a trained run and write ``DIR/eval.json`` and plots.

Metrics (``--metrics``, comma-separated; default ``mmd,nll,plots``):

* ``mmd``: unbiased MMD^2 (Gaussian kernel, median-heuristic bandwidth unless ``--bandwidth``) between the
  reference data and as many model samples (at most ``--n-samples``), with its H1 variance.
* ``nll``: negative log-likelihood of ``--nll-points`` reference points drawn at random without replacement
  (seeded by ``--seed``: the same points for every run with the same reference data), plus the exact value where
  the model is tractable (small binary, or linear-Gaussian), by the estimator ``--nll-method``:

  - ``proposal`` (default, any model, binary latents included): importance sampling with ``--k`` particles from
    an evaluation-only proposal trained for ``--proposal-steps`` steps with the model frozen
    (:func:`fit_proposal`);
  - ``gaussian`` (observation layer Gaussian with a linear link): importance sampling with ``--k`` particles
    from :class:`GaussianPosteriorProposal` (no training);
  - ``ais`` (real-valued latents, moved by block HMC; or sigmoid belief networks, moved by single-site Gibbs
    sweeps; for models where a proposal's ESS is low, e.g. the patches models): annealed importance sampling
    (:func:`ais_log_likelihood`) with ``--ais-chains`` chains per point, ``--ais-temperatures`` temperatures and
    (HMC) ``--ais-leapfrog`` leapfrog steps per HMC move.

  ``eval.json``'s ``nll`` entry records the method and its settings, ``nll``, ``sem``, ``ess_mean``,
  ``ess_median`` (of the importance weights, or of the AIS weights over the chains), ``log_px`` per point (in the
  order drawn, for paired comparisons of runs evaluated with the same ``--seed``) and, for AIS, its
  ``kernel`` (``hmc`` or ``gibbs``) and per latent layer (top first) the mean HMC acceptance rate, or with Gibbs
  sweeps the mean fraction of units changed per sweep (``acceptance_mean``).
* ``plots``: ``samples.png`` (model samples beside data), ``learning_curves.png`` (from ``metrics.jsonl``).
* ``posterior``: NUTS posterior of the first reference point (real-valued latents only), ``posterior.png``.

Reference data: ``--data FILE.npz`` (array ``x``, or the file's only array), else the run's own data (its test
set when it has one).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError

METRICS = ("mmd", "nll", "plots", "posterior")
NLL_METHODS = ("proposal", "gaussian", "ais")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the options of ``wakesleep evaluate``."""
    p.add_argument("--run", required=True, help="run directory written by 'wakesleep train'")
    p.add_argument("--data", help="reference data .npz (array 'x'); default: the run's data (test set if any)")
    p.add_argument("--metrics", default="mmd,nll,plots", help=f"comma-separated, from {', '.join(METRICS)}")
    p.add_argument("--n-samples", type=int, default=10000, help="model samples (and data points) for MMD")
    p.add_argument("--bandwidth", default="median", help="MMD bandwidth: a number, 'median' or 'power'")
    p.add_argument(
        "--nll-points",
        type=int,
        default=1000,
        help="reference points scored by the NLL (drawn at random, seeded by --seed)",
    )
    p.add_argument("--k", type=int, default=1000, help="importance samples per point for the NLL")
    p.add_argument("--proposal-steps", type=int, default=2000, help="training steps of the evaluation proposal")
    p.add_argument(
        "--nll-method",
        choices=NLL_METHODS,
        default="proposal",
        help=(
            "NLL estimator: 'proposal' (IS with a fitted proposal, any model), 'gaussian' (IS with the Gaussian "
            "posterior proposal, Gaussian-linear observation layer), 'ais' (annealed IS, real-valued latents or "
            "sigmoid belief networks)"
        ),
    )
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per point (--nll-method ais)")
    p.add_argument("--ais-temperatures", type=int, default=1000, help="AIS temperatures (--nll-method ais)")
    p.add_argument(
        "--ais-leapfrog", type=int, default=10, help="leapfrog steps per HMC move (--nll-method ais, real latents)"
    )
    p.add_argument("--posterior-samples", type=int, default=1000, help="NUTS samples for 'posterior'")
    p.add_argument(
        "--image-shape", help="HxW to draw samples as images (default: 28x28 when the data have 784 columns)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: the run's)")


def _parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        if m not in METRICS:
            raise WakesleepError(f"--metrics: unknown metric {m!r} (known: {', '.join(METRICS)})")
    if not names:
        raise WakesleepError("--metrics: empty")
    return names


def _parse_shape(text: str | None, dim: int) -> tuple[int, int] | None:
    if text is None:
        return (28, 28) if dim == 784 else None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise WakesleepError(f"--image-shape: expected HxW like 28x28, got {text!r}") from None
    if h * w != dim:
        raise WakesleepError(f"--image-shape: {h}x{w} = {h * w} pixels, the data have {dim} columns")
    return h, w


def _bandwidth(text: str) -> float | str:
    if text in ("median", "power"):
        return text
    try:
        return float(text)
    except ValueError:
        raise WakesleepError(f"--bandwidth: must be a number, 'median' or 'power', got {text!r}") from None


def _reference_data(args: argparse.Namespace, config: dict, model: torch.nn.Module) -> tuple[torch.Tensor, Any]:
    """Reference data ``[N, Dx]`` in the model's dtype, and an image shape hint."""
    from wakesleep.io import load_npz
    from wakesleep.train import load_data, validate_data

    if args.data:
        arrays = load_npz(args.data)
        if "x" in arrays:
            x = arrays["x"]
        elif len(arrays) == 1:
            x = next(iter(arrays.values()))
        else:
            raise WakesleepError(f"--data: {args.data} has arrays {sorted(arrays)}; expected one named 'x'")
        x = validate_data(x, int(model.obs_dim), f"--data {args.data}")
        return torch.as_tensor(x).to(dtype=model.dtype, device=model.device), None
    data = load_data(config, model)
    if isinstance(data, torch.Tensor):
        return data, None
    ref = data.test if getattr(data, "test", None) is not None else data.train
    return ref.to(dtype=model.dtype, device=model.device), getattr(data, "image_shape", None)


def _model_samples(model: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        return model.sample(n, generator=gen)[-1]


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.run``; write ``eval.json`` (and plots) into it."""
    from wakesleep import eval as ev
    from wakesleep.io import save_json
    from wakesleep.train import load_run

    metrics = _parse_metrics(args.metrics)
    for name in ("n_samples", "nll_points", "k", "posterior_samples", "ais_chains", "ais_temperatures", "ais_leapfrog"):
        if getattr(args, name) <= 0:
            raise WakesleepError(f"--{name.replace('_', '-')}: must be a positive integer, got {getattr(args, name)}")
    if args.proposal_steps < 0:
        raise WakesleepError(f"--proposal-steps: must be >= 0, got {args.proposal_steps}")
    bandwidth = _bandwidth(args.bandwidth)
    run_dir = Path(args.run)
    config, model = load_run(run_dir, device=args.device)
    model.eval()
    nll_method = args.nll_method
    gaussian_q = None
    if "nll" in metrics:  # fail on an unsuitable model before any expensive work
        if nll_method == "gaussian":
            try:
                gaussian_q = ev.GaussianPosteriorProposal(model, seed=args.seed)
            except WakesleepError as exc:
                raise WakesleepError(f"--nll-method gaussian: {exc}") from None
        elif nll_method == "ais":
            from wakesleep.eval.ais import ais_kernel

            try:
                ais_kernel(model, "ais_log_likelihood")
            except WakesleepError as exc:
                raise WakesleepError(f"--nll-method ais: {exc}") from None
    x, shape_hint = _reference_data(args, config, model)
    shape = _parse_shape(args.image_shape, x.shape[1]) if args.image_shape or shape_hint is None else shape_hint
    gen = torch.Generator().manual_seed(args.seed)
    result: dict[str, Any] = {"run": str(run_dir), "data": args.data or "run", "n_data": int(x.shape[0])}
    t_all = time.perf_counter()

    if "mmd" in metrics:
        t0 = time.perf_counter()
        n = min(args.n_samples, x.shape[0])
        ref = x[torch.randperm(x.shape[0], generator=gen)[:n].to(x.device)]
        samples = _model_samples(model, n, args.seed)
        s = ev.mmd_statistics(ref, samples, bandwidth, seed=args.seed)
        result["mmd"] = {
            "mmd2": s.mmd2,
            "variance": s.variance,
            "std": math.sqrt(max(s.variance, 0.0)),
            "bandwidth": s.bandwidth,
            "n_data": s.m,
            "n_model": s.n,
            "seconds": time.perf_counter() - t0,
        }

    if "nll" in metrics:
        t0 = time.perf_counter()
        n = min(args.nll_points, x.shape[0])
        pts = x[torch.randperm(x.shape[0], generator=gen)[:n].to(x.device)]
        entry: dict[str, Any] = {"method": nll_method, "n_points": n}
        try:
            entry["exact_nll"] = -float(ev.exact_log_likelihood(model, pts).mean())
        except WakesleepError as exc:
            entry["exact"] = f"not tractable: {exc}"
        if nll_method == "ais":
            try:
                res = ev.ais_log_likelihood(
                    model,
                    pts,
                    chains=args.ais_chains,
                    temperatures=args.ais_temperatures,
                    leapfrog=args.ais_leapfrog,
                    seed=args.seed,
                )
            except WakesleepError as exc:
                raise WakesleepError(f"--nll-method ais: {exc}") from None
            hmc = res.kernel == "hmc"
            entry.update({"chains": args.ais_chains, "temperatures": res.temperatures, "kernel": res.kernel})
            if hmc:
                entry["leapfrog"] = args.ais_leapfrog
            entry["proposal"] = (
                f"AIS from the prior: {res.temperatures} temperatures (sigmoid schedule), {args.ais_chains} chains "
                "per point, "
                + (f"block HMC with {args.ais_leapfrog} leapfrog steps" if hmc else "single-site Gibbs sweeps")
            )
            entry["acceptance_mean"] = res.acceptance.mean(0).tolist()  # Gibbs: fraction of units changed per sweep
            if hmc:
                entry["step_size_median"] = res.step_size.median(0).values.tolist()
        else:
            if nll_method == "gaussian":
                q = gaussian_q
                entry["proposal"] = (
                    f"GaussianPosteriorProposal(seed={args.seed}): Gaussian posterior of z_1 under a moment-matched "
                    "prior, defensive mixture, no training"
                )
            else:
                q = ev.fit_proposal(model, x, steps=args.proposal_steps, seed=args.seed)
                entry["proposal_steps"] = args.proposal_steps
                entry["proposal"] = f"fit_proposal(steps={args.proposal_steps}), model frozen"
            entry["k"] = args.k
            res = ev.log_likelihood(model, pts, q, k=args.k, seed=args.seed)
        entry.update(
            {
                "nll": res.nll,
                "sem": res.sem,
                "ess_mean": float(res.ess.mean()),
                "ess_median": float(res.ess.median()),
                "seconds": time.perf_counter() - t0,
                "log_px": res.log_px.tolist(),  # per point, in the order drawn: paired comparisons between runs
            }
        )
        result["nll"] = entry

    if "plots" in metrics:
        samples = _model_samples(model, min(2000, max(x.shape[0], 1)), args.seed + 1)
        ref = x[: samples.shape[0]]
        files = [str(ev.plot_samples(samples.cpu(), run_dir / "samples.png", data=ref.cpu(), image_shape=shape))]
        if (run_dir / "metrics.jsonl").is_file():
            files.append(str(ev.plot_learning_curves(run_dir / "metrics.jsonl", run_dir / "learning_curves.png")))
        result["plots"] = files

    if "posterior" in metrics:
        t0 = time.perf_counter()
        draws = ev.nuts_posterior(
            model,
            x[0],
            num_samples=args.posterior_samples,
            warmup=max(50, args.posterior_samples // 2),
            seed=args.seed,
        )
        flat = torch.cat([d.reshape(d.shape[0], -1) for d in draws], dim=1).numpy()
        labels = [f"{n}[{i}]" for n, d in zip(model.latent_names, draws, strict=True) for i in range(d.shape[-1])]
        path = ev.plot_posterior_corner({"model": flat}, run_dir / "posterior.png", labels=labels)
        result["posterior"] = {
            "file": str(path),
            "mean": flat.mean(0).tolist(),
            "std": flat.std(0).tolist(),
            "seconds": time.perf_counter() - t0,
        }

    result["seconds"] = time.perf_counter() - t_all
    save_json(run_dir / "eval.json", _finite(result))
    parts = []
    if "mmd" in result:
        parts.append(f"MMD^2 {result['mmd']['mmd2']:.3g}")
    if "nll" in result:
        parts.append(f"NLL {result['nll']['nll']:.3f} nats ({result['nll']['method']})")
    print(f"wrote {run_dir / 'eval.json'}" + (f" ({', '.join(parts)})" if parts else ""))
    return 0


def _finite(obj: Any) -> Any:
    """NaN/inf -> None so that eval.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating) and not math.isfinite(float(obj)):
        return None
    return obj

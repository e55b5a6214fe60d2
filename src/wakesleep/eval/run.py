"""Evaluate a trained run: :func:`evaluate_run` writes ``RUN/eval.json`` (and plots) from typed settings.

Metrics (:attr:`EvalSettings.metrics`; default ``mmd``, ``nll``, ``plots``):

* ``mmd``: unbiased MMD^2 (Gaussian kernel, median-heuristic bandwidth unless ``bandwidth``) between the
  reference data and as many model samples (at most ``n_samples``), with its H1 variance.
* ``nll``: negative log-likelihood of ``nll_points`` reference points drawn at random without replacement
  (seeded by ``seed``: the same points for every run with the same reference data), plus the exact value where
  the model is tractable (small binary, or linear-Gaussian), by the estimator ``nll_method``:

  - ``proposal`` (any model, binary latents included): importance sampling with ``k`` particles from an
    evaluation-only proposal trained for ``proposal_steps`` steps with the model frozen (:func:`fit_proposal`);
  - ``gaussian`` (observation layer Gaussian with a linear link): importance sampling with ``k`` particles
    from :class:`GaussianPosteriorProposal` (no training);
  - ``ais`` (real-valued latents, moved by block HMC; or sigmoid belief networks, moved by single-site Gibbs
    sweeps): annealed importance sampling (:func:`ais_log_likelihood`) with ``ais_chains`` chains per point,
    ``ais_temperatures`` temperatures and (HMC) ``ais_leapfrog`` leapfrog steps per move.

  ``eval.json``'s ``nll`` entry records the method and its settings, ``nll``, ``sem``, ``ess_mean``,
  ``ess_median``, ``log_px`` per point (in the order drawn, for paired comparisons of runs evaluated with the
  same seed) and, for AIS, its ``kernel`` (``hmc`` or ``gibbs``) and per latent layer (top first) the mean HMC
  acceptance rate, or with Gibbs sweeps the mean fraction of units changed per sweep (``acceptance_mean``).
* ``plots``: ``samples.png`` (model samples beside data), ``learning_curves.png`` (from ``metrics.jsonl``).
* ``posterior``: NUTS posterior of the first reference point (real-valued latents only), ``posterior.png``.

Reference data: ``data`` (an ``.npz`` with array ``x`` or a single array, or an array), checked against the
model's observation layer (:func:`~wakesleep.data.check_observations`); else the data the run trained on: its
test set when it has one, else its training set; a run whose data were drawn from the model
(``data: {source: model}``) gets them drawn again exactly as training drew them (the initial model built with
``train.seed``, ``data.n`` points drawn with ``data.seed``), not from the trained model.

Everything is computed before anything is written; the plots and ``eval.json`` are then written into a hidden
directory in the run and moved into place (``eval.json`` last), so a failed evaluation leaves the run as it was.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError, setting_error

__all__ = ["METRICS", "NLL_METHODS", "EvalSettings", "evaluate_run", "reference_data", "training_data"]

METRICS = ("mmd", "nll", "plots", "posterior")
NLL_METHODS = ("proposal", "gaussian", "ais")


@dataclass(frozen=True)
class EvalSettings:
    """What :func:`evaluate_run` computes, and how (see the module docstring).

    Attributes
    ----------
    metrics : tuple of str
        From :data:`METRICS`.
    n_samples : int
        Model samples (and reference points) of the MMD.
    bandwidth : float or {"median", "power"}
        The MMD kernel's bandwidth.
    nll_points, k, proposal_steps : int
        Reference points scored by the NLL; importance samples per point; steps of the evaluation proposal.
    nll_method : {"proposal", "gaussian", "ais"}
        The NLL estimator.
    ais_chains, ais_temperatures, ais_leapfrog : int
        AIS chains per point, temperatures, leapfrog steps per HMC move.
    posterior_samples : int
        NUTS samples of ``posterior``.
    image_shape : (int, int) or None
        Draw samples as images of this shape (default: the data's own, or 28 x 28 for 784 columns).
    seed : int
        Seeds the reference points drawn, the model samples and the estimators.
    """

    metrics: tuple[str, ...] = ("mmd", "nll", "plots")
    n_samples: int = 10000
    bandwidth: float | str = "median"
    nll_points: int = 1000
    k: int = 1000
    proposal_steps: int = 2000
    nll_method: str = "proposal"
    ais_chains: int = 16
    ais_temperatures: int = 1000
    ais_leapfrog: int = 10
    posterior_samples: int = 1000
    image_shape: tuple[int, int] | None = None
    seed: int = 0

    def validate(self) -> EvalSettings:
        """Check every value; return ``self``.

        Raises
        ------
        WakesleepError
            One line naming the first bad setting (``exc.setting``).
        """
        if not self.metrics:
            raise setting_error("metrics", "empty")
        for m in self.metrics:
            if m not in METRICS:
                raise setting_error("metrics", f"unknown metric {m!r} (known: {', '.join(METRICS)})")
        for name in ("n_samples", "nll_points", "k", "posterior_samples", "ais_chains", "ais_temperatures"):
            _integer(self, name, 1)
        _integer(self, "ais_leapfrog", 1)
        _integer(self, "proposal_steps", 0)
        _integer(self, "seed", 0)
        if self.nll_method not in NLL_METHODS:
            raise setting_error("nll_method", f"must be one of {', '.join(NLL_METHODS)}, got {self.nll_method!r}")
        bw = self.bandwidth
        if isinstance(bw, str):
            if bw not in ("median", "power"):
                raise setting_error("bandwidth", f"must be a number, 'median' or 'power', got {bw!r}")
        elif isinstance(bw, bool) or not isinstance(bw, int | float) or not (math.isfinite(bw) and bw > 0):
            raise setting_error("bandwidth", f"must be a positive number, 'median' or 'power', got {bw!r}")
        if self.image_shape is not None:
            shape = self.image_shape
            if len(shape) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
                raise setting_error("image_shape", f"must be two positive integers (H, W), got {shape!r}")
        return self


def _integer(settings: EvalSettings, name: str, minimum: int) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise setting_error(name, f"must be {what}, got {value!r}")


# --------------------------------------------------------------------------------------------------------
# reference data
# --------------------------------------------------------------------------------------------------------
def training_data(run_dir: str | os.PathLike, model: torch.nn.Module) -> tuple[torch.Tensor, Any, str]:
    """The data a run trained on, as its training drew or loaded them (its test set when it has one).

    ``data: {source: model}`` runs are drawn again as :func:`wakesleep.runs.prepare` drew them: the initial
    model built after ``torch.manual_seed(train.seed)`` (from the run's ``config.yaml``, ``model.init``
    included), ``data.n`` points drawn at ``data.true_params`` or the initial parameters with ``data.seed``, on
    the training device when it is available here (else on ``model``'s: the same distribution, other draws).
    The global random state is left as it was.

    Parameters
    ----------
    run_dir : path
        A run directory written by ``wakesleep train``.
    model : torch.nn.Module
        The trained model (its device and dtype are those of the result).

    Returns
    -------
    (torch.Tensor, tuple or None, str)
        The data ``[N, Dx]``, an image shape hint, and a description for ``eval.json``.
    """
    from wakesleep import runs
    from wakesleep.config import torch_device
    from wakesleep.spec import RunSpec

    spec = RunSpec.load(Path(run_dir) / "config.yaml")
    if spec.data.source != "model":
        data = runs.load_data(spec, model)
        if isinstance(data, torch.Tensor):
            return data, None, f"run ({spec.data.source})"
        if getattr(data, "test", None) is not None and data.n_test > 0:
            ref, what = data.test, "test set"
        else:
            ref, what = data.draw_train(), "training set"
        return ref.to(dtype=model.dtype, device=model.device), data.image_shape, f"run ({spec.data.source}, {what})"
    try:
        torch_device(spec.train.device)
        exact = True
    except WakesleepError:  # trained on a device this machine lacks: draw on the evaluation device
        spec = spec.replace(train=dataclasses.replace(spec.train, device=str(model.device)))
        exact = False
    init = spec.model.settings.get("init")
    if isinstance(init, str) and not Path(init).is_file():
        raise WakesleepError(
            f"{Path(run_dir) / 'config.yaml'}: model.init {init} not found: the run's training data "
            "(data.source: model) cannot be drawn again without it; give the reference data as a file"
        )
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda), runs.threads(spec.train):
        torch.manual_seed(spec.train.seed)
        initial = runs.build_model(spec)
        x = runs.load_data(spec, initial)
    s = spec.data.settings
    how = "" if exact else f", drawn on {model.device} (trained on another device: other draws)"
    what = f"run (source model: {s['n']} points drawn again with data.seed {s['seed']}{how})"
    return x.to(dtype=model.dtype, device=model.device), None, what


def reference_data(
    data: str | os.PathLike | np.ndarray | torch.Tensor, model: torch.nn.Module
) -> tuple[torch.Tensor, str]:
    """Reference data given by the caller: an ``.npz`` file (array ``x``, or its only array) or an array.

    Checked with :func:`wakesleep.runs.check_data` (numeric, ``[N, Dx]``, finite, in the observation
    layer's support); errors name the file.

    Returns
    -------
    (torch.Tensor, str)
        The data in the model's dtype and device, and a description for ``eval.json``.
    """
    from wakesleep import runs
    from wakesleep.io import load_npz

    if isinstance(data, str | os.PathLike):
        arrays = load_npz(data)
        if "x" in arrays:
            x = arrays["x"]
        elif len(arrays) == 1:
            x = next(iter(arrays.values()))
        else:
            raise WakesleepError(f"{data}: has arrays {sorted(arrays)}; expected one named 'x'")
        where, label = str(data), str(data)
    else:
        x, where, label = data, "reference data", "array"
    x = runs.check_data(x, model, where)
    return torch.as_tensor(x).to(dtype=model.dtype, device=model.device), label


def _image_shape(settings: EvalSettings, hint: Any, dim: int) -> tuple[int, ...] | None:
    if settings.image_shape is not None:
        h, w = settings.image_shape
        if h * w != dim:
            raise setting_error("image_shape", f"{h}x{w} = {h * w} pixels, the data have {dim} columns")
        return h, w
    if hint is not None:
        return tuple(hint)
    return (28, 28) if dim == 784 else None


# --------------------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------------------
def _model_samples(model: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        return model.sample(n, generator=gen)[-1]


def _check_nll_method(model: torch.nn.Module, settings: EvalSettings) -> Any:
    """Fail now on a model the NLL estimator cannot handle; returns the Gaussian proposal (method gaussian)."""
    from wakesleep import eval as ev
    from wakesleep.eval.ais import ais_kernel

    method = settings.nll_method
    try:
        if method == "gaussian":
            return ev.GaussianPosteriorProposal(model, seed=settings.seed)
        if method == "ais":
            ais_kernel(model, "ais_log_likelihood")
    except WakesleepError as exc:
        raise setting_error("nll_method", str(exc), value=method) from None
    return None


def _mmd(model: torch.nn.Module, x: torch.Tensor, settings: EvalSettings, gen: torch.Generator) -> dict[str, Any]:
    from wakesleep import eval as ev

    t0 = time.perf_counter()
    n = min(settings.n_samples, x.shape[0])
    ref = x[torch.randperm(x.shape[0], generator=gen)[:n].to(x.device)]
    samples = _model_samples(model, n, settings.seed)
    s = ev.mmd_statistics(ref, samples, settings.bandwidth, seed=settings.seed)
    return {
        "mmd2": s.mmd2,
        "variance": s.variance,
        "std": math.sqrt(max(s.variance, 0.0)),
        "bandwidth": s.bandwidth,
        "n_data": s.m,
        "n_model": s.n,
        "seconds": time.perf_counter() - t0,
    }


def _nll(
    model: torch.nn.Module, x: torch.Tensor, settings: EvalSettings, gen: torch.Generator, gaussian_q: Any
) -> dict[str, Any]:
    from wakesleep import eval as ev

    t0 = time.perf_counter()
    method, seed = settings.nll_method, settings.seed
    n = min(settings.nll_points, x.shape[0])
    pts = x[torch.randperm(x.shape[0], generator=gen)[:n].to(x.device)]
    entry: dict[str, Any] = {"method": method, "n_points": n}
    try:
        entry["exact_nll"] = -float(ev.exact_log_likelihood(model, pts).mean())
    except WakesleepError as exc:
        entry["exact"] = f"not tractable: {exc}"
    if method == "ais":
        chains, leapfrog = settings.ais_chains, settings.ais_leapfrog
        try:
            res = ev.ais_log_likelihood(
                model, pts, chains=chains, temperatures=settings.ais_temperatures, leapfrog=leapfrog, seed=seed
            )
        except WakesleepError as exc:
            raise setting_error("nll_method", str(exc), value=method) from None
        hmc = res.kernel == "hmc"
        entry.update({"chains": chains, "temperatures": res.temperatures, "kernel": res.kernel})
        if hmc:
            entry["leapfrog"] = leapfrog
        entry["proposal"] = (
            f"AIS from the prior: {res.temperatures} temperatures (sigmoid schedule), {chains} chains per point, "
            + (f"block HMC with {leapfrog} leapfrog steps" if hmc else "single-site Gibbs sweeps")
        )
        entry["acceptance_mean"] = res.acceptance.mean(0).tolist()  # Gibbs: fraction of units changed per sweep
        if hmc:
            entry["step_size_median"] = res.step_size.median(0).values.tolist()
    else:
        if method == "gaussian":
            q = gaussian_q
            entry["proposal"] = (
                f"GaussianPosteriorProposal(seed={seed}): Gaussian posterior of z_1 under a moment-matched "
                "prior, defensive mixture, no training"
            )
        else:
            q = ev.fit_proposal(model, x, steps=settings.proposal_steps, seed=seed)
            entry["proposal_steps"] = settings.proposal_steps
            entry["proposal"] = f"fit_proposal(steps={settings.proposal_steps}), model frozen"
        entry["k"] = settings.k
        res = ev.log_likelihood(model, pts, q, k=settings.k, seed=seed)
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
    return entry


def evaluate_run(
    run_dir: str | os.PathLike,
    settings: EvalSettings | None = None,
    *,
    data: str | os.PathLike | np.ndarray | torch.Tensor | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` and write ``eval.json`` (and the plots asked for) into it.

    Parameters
    ----------
    run_dir : path
        A run directory written by ``wakesleep train``. A parameter holding NaN or inf is an error naming
        the tensor (:func:`wakesleep.runs.load_run`).
    settings : EvalSettings, optional
        What to compute (default: ``EvalSettings()``).
    data : path or array, optional
        Reference data (:func:`reference_data`); default: the data the run trained on (:func:`training_data`).
    device : str, optional
        Torch device (default: the run's ``train.device``).

    Returns
    -------
    dict
        The content of ``eval.json`` (NaN and inf as None): ``run``, ``data``, ``n_data``, one entry per
        metric, ``seconds``.

    Raises
    ------
    WakesleepError
        A bad setting (``exc.setting`` names it), run, data file, or a model the NLL method cannot handle;
        nothing is written then.
    """
    from wakesleep import eval as ev
    from wakesleep import runs

    settings = (settings or EvalSettings()).validate()
    metrics = settings.metrics
    run_dir = Path(run_dir)
    _, model = runs.load_run(run_dir, device=device)
    model.eval()
    gaussian_q = _check_nll_method(model, settings) if "nll" in metrics else None
    if data is not None:
        x, label = reference_data(data, model)
        hint, source = None, label
    else:
        x, hint, source = training_data(run_dir, model)
        label = "run"
    shape = _image_shape(settings, hint, int(x.shape[1]))
    gen = torch.Generator().manual_seed(settings.seed)
    result: dict[str, Any] = {"run": str(run_dir), "data": label, "data_source": source, "n_data": int(x.shape[0])}
    t_all = time.perf_counter()
    if "mmd" in metrics:
        result["mmd"] = _mmd(model, x, settings, gen)
    if "nll" in metrics:
        result["nll"] = _nll(model, x, settings, gen, gaussian_q)
    draws = None
    if "posterior" in metrics:
        t0 = time.perf_counter()
        n_post = settings.posterior_samples
        draws = ev.nuts_posterior(model, x[0], num_samples=n_post, warmup=max(50, n_post // 2), seed=settings.seed)
        posterior_seconds = time.perf_counter() - t0
    plot_samples = None
    if "plots" in metrics:
        samples = _model_samples(model, min(2000, max(x.shape[0], 1)), settings.seed + 1)
        plot_samples = (samples.cpu(), x[: samples.shape[0]].cpu())

    # everything is computed: write the files aside, then move them into the run (eval.json last)
    stage = Path(tempfile.mkdtemp(prefix=".eval-", dir=run_dir))
    try:
        written: list[str] = []
        if plot_samples is not None:
            ev.plot_samples(plot_samples[0], stage / "samples.png", data=plot_samples[1], image_shape=shape)
            written.append("samples.png")
            if (run_dir / "metrics.jsonl").is_file():
                ev.plot_learning_curves(run_dir / "metrics.jsonl", stage / "learning_curves.png")
                written.append("learning_curves.png")
            result["plots"] = [str(run_dir / name) for name in written]
        if draws is not None:
            flat = torch.cat([d.reshape(d.shape[0], -1) for d in draws], dim=1).numpy()
            labels = _latent_labels(model.latent_names, draws)
            ev.plot_posterior_corner({"model": flat}, stage / "posterior.png", labels=labels)
            written.append("posterior.png")
            result["posterior"] = {
                "file": str(run_dir / "posterior.png"),
                "mean": flat.mean(0).tolist(),
                "std": flat.std(0).tolist(),
                "seconds": posterior_seconds,
            }
        result["seconds"] = time.perf_counter() - t_all
        result = _finite(result)
        from wakesleep.io import save_json

        save_json(stage / "eval.json", result)
        for name in [*written, "eval.json"]:
            os.replace(stage / name, run_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result


def _latent_labels(names: Sequence[str], draws: Sequence[torch.Tensor]) -> list[str]:
    return [f"{n}[{i}]" for n, d in zip(names, draws, strict=True) for i in range(d.shape[-1])]


def _finite(obj: Any) -> Any:
    """NaN/inf -> None so that eval.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating) and not math.isfinite(float(obj)):
        return None
    return obj

"""How accurate is a trained algorithm's wake gradient, and its posterior read-out? (``wakesleep diagnose``)

For a trained model and algorithm (a run directory, or the objects), at the trained parameters and after a few
sleep phases there, :func:`diagnose` compares on a batch of points ``x``:

* the algorithm's wake gradient (the estimate of grad_theta (1/B) sum_b log p(x_b), for DDC-HM eq. 36) with a
  reference E_{p(z | x)}[grad_theta log p(x, z)], per model layer (all parameter blocks of one conditional
  together) and per parameter block: cosine, relative error, norms;
* its posterior means E_q[z_l | x] (DDC-HM's read-out, eq. 5) with the reference posterior means: mean absolute
  error, with the error of the data-independent guess (the reference means averaged over the points) for scale;
* the fraction of invalid expectations: a Bernoulli (or other bounded) mean outside the support, a negative
  mean of a non-negative latent, a negative variance E_q[z^2] - E_q[z]^2.

References (``reference="auto"`` picks the first that applies):

* ``enumerate``: every latent layer Bernoulli or categorical and at most 2^16 joint latent configurations: the
  exact posterior, by enumeration (one reference, exact);
* ``ais``: a sigmoid belief network (all latents Bernoulli): the final states of AIS chains
  (:func:`wakesleep.eval.ais_log_likelihood` with ``return_samples``), weighted by their normalised AIS
  weights; ``repeats`` independent runs;
* ``importance``: any model: self-normalised importance sampling with the prior as proposal (weights
  p(x | z_1)), ``importance_samples`` draws per reference and ``repeats`` independent references. Accurate only
  for small models (the ESS per point is reported).

With two or more independent references their agreement (the cosine between the first two, the mean absolute
difference of their posterior means) is reported: it says how far the reference itself can be trusted, and a
layer whose references disagree says nothing about the algorithm.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError

__all__ = ["Diagnosis", "REFERENCES", "diagnose", "reference_posterior"]

REFERENCES = ("auto", "enumerate", "ais", "importance")
MAX_CONFIGURATIONS = 2**16  # exact enumeration up to this many joint latent configurations
_CHUNK_ELEMENTS = 2**22  # configurations x points x widest layer per chunk of an enumeration / IS pass


@dataclass
class Diagnosis:
    """What :func:`diagnose` measured (``to_dict()`` is JSON-ready; ``lines()`` a printable summary).

    Attributes
    ----------
    reference : str
        ``enumerate``, ``ais`` or ``importance``.
    points : int
        Points in the batch.
    settings : dict
        The settings used (chains, temperatures, repeats, importance samples, sleeps, seed).
    layers : dict
        Per model layer (``z3``, ..., ``x``): ``cosine`` (against the mean of the references), ``cosine_per_reference``,
        ``reference_agreement`` (cosine between the first two references; 1.0 for an exact reference; None with
        one), ``relative_error``, ``norm_estimate``, ``norm_reference``.
    blocks : dict
        The same per parameter block (``layers.x.link.weight``, ...).
    posterior : dict
        Per latent layer: ``mae`` (|E_q[z | x] - reference| averaged over points and units), ``mae_constant_guess``,
        ``mae_reference_agreement`` (between two references; None with one), ``invalid_fraction`` (of the
        point-unit expectations that are impossible: a Bernoulli mean outside [0, 1], a negative mean of a
        non-negative latent, a negative variance), ``invalid_fraction_beyond_0.01`` (impossible by more than
        0.01) and ``invalid_max_excess`` (the largest distance from a possible value); None values where the
        algorithm has no posterior read-out.
    reference_nll : list of float or None
        Per reference, the mean NLL of the points it implies (AIS, enumeration, importance sampling).
    reference_ess : list of float
        Per reference, the median effective sample size per point (chains or importance samples).
    seconds : float
        Wall-clock seconds.
    """

    reference: str
    points: int
    settings: dict[str, Any]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    posterior: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference_nll: list[float] | None = None
    reference_ess: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready values."""
        return asdict(self)

    def lines(self) -> list[str]:
        """A printable summary, one line per layer and latent layer."""
        out = [
            f"reference: {self.reference} on {self.points} points"
            + (f", NLL {', '.join(f'{v:.2f}' for v in self.reference_nll)}" if self.reference_nll else "")
            + (f", median ESS {', '.join(f'{v:.1f}' for v in self.reference_ess)}" if self.reference_ess else "")
        ]
        for name, row in self.layers.items():
            agree = row["reference_agreement"]
            out.append(
                f"grad {name}: cosine {row['cosine']:.3f}"
                + (f" (references agree at {agree:.3f})" if agree is not None else "")
                + f", relative error {row['relative_error']:.3f}, norms {row['norm_estimate']:.3g} vs "
                f"{row['norm_reference']:.3g}"
            )
        for name, row in self.posterior.items():
            if row["mae"] is None:
                out.append(f"E[{name} | x]: the algorithm has no posterior read-out")
                continue
            agree = row["mae_reference_agreement"]
            out.append(
                f"E[{name} | x]: mean |error| {row['mae']:.3f}, constant guess {row['mae_constant_guess']:.3f}"
                + (f", references differ by {agree:.3f}" if agree is not None else "")
                + f"; invalid expectations {100 * row['invalid_fraction']:.1f} % "
                f"({100 * row['invalid_fraction_beyond_0.01']:.1f} % by more than 0.01, at most "
                f"{row['invalid_max_excess']:.3g})"
            )
        out.append(f"{self.seconds:.0f} s")
        return out


@dataclass
class _Reference:
    grads: dict[str, Tensor]  # float64, keyed by parameter name
    means: list[Tensor]  # E[z_l | x], top first, [B, D_l]
    nll: float | None
    ess: float


def _cosine(a: Tensor, b: Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else math.nan


def _family(layer: nn.Module) -> str:
    fam = getattr(layer, "family", None)
    return getattr(fam, "name", "mog") if fam is not None else "mog"


def _configurations(model: nn.Module) -> Tensor | None:
    """Every joint latent configuration ``[C, sum D_l]`` (top first), or None when not enumerable."""
    layers = list(model.layers.values())[:-1]
    values: list[list[float]] = []
    for layer in layers:
        name = _family(layer)
        if name == "bernoulli":
            values += [[0.0, 1.0]] * int(layer.dim)
        elif name == "categorical":
            values += [[float(c) for c in range(int(layer.family.categories))]] * int(layer.dim)
        else:
            return None
    if math.prod(len(v) for v in values) > MAX_CONFIGURATIONS:
        return None
    return torch.tensor(list(itertools.product(*values)), dtype=torch.float64)


def _split(configs: Tensor, dims: list[int]) -> list[Tensor]:
    return list(torch.split(configs, dims, dim=-1))


def _weighted_reference(
    md: nn.Module, x: Tensor, particles: list[Tensor], proposal_is_prior: bool, chunk: int
) -> _Reference:
    """Posterior expectations under self-normalised weights of particles shared by all points.

    ``particles``: ``[S, D_l]`` per latent layer (top first). The weight of particle s for point b is
    p(x_b, z_s) (enumeration: every configuration once) or p(x_b | z_1s) (prior draws).
    """
    s_total, b = particles[0].shape[0], x.shape[0]

    def log_weights(lo: int, hi: int) -> Tensor:
        zs = [p[lo:hi, None, :].expand(-1, b, -1) for p in particles]
        xs = x.expand(hi - lo, -1, -1)
        if proposal_is_prior:
            return md.log_joint(xs, zs, per_layer=True)[-1]
        return md.log_joint(xs, zs)

    with torch.no_grad():
        lw = torch.cat([log_weights(lo, min(lo + chunk, s_total)) for lo in range(0, s_total, chunk)])  # [S, B]
    log_norm = torch.logsumexp(lw, 0)
    w = torch.exp(lw - log_norm)  # [S, B]
    ess = float((1.0 / (w * w).sum(0)).median())
    nll = float(-(log_norm - (math.log(s_total) if proposal_is_prior else 0.0)).mean())
    means = [w.T @ p for p in particles]
    md.zero_grad()
    for lo in range(0, s_total, chunk):
        hi = min(lo + chunk, s_total)
        zs = [p[lo:hi, None, :].expand(-1, b, -1) for p in particles]
        ((md.log_joint(x.expand(hi - lo, -1, -1), zs) * w[lo:hi]).sum() / b).backward()
    grads = {k: p.grad.detach().clone() for k, p in md.named_parameters() if p.grad is not None}
    return _Reference(grads, means, nll, ess)


def reference_posterior(
    model: nn.Module,
    x: Tensor,
    kind: str = "auto",
    *,
    chains: int = 16,
    temperatures: int = 1000,
    importance_samples: int = 100_000,
    seed: int = 1,
) -> tuple[str, dict[str, Tensor], list[Tensor], float | None, float]:
    """One reference for the wake gradient and the posterior means of ``x`` (module docstring).

    Parameters
    ----------
    model : nn.Module
        A wakesleep :class:`~wakesleep.models.HierarchicalModel`.
    x : Tensor
        ``[B, D_x]`` points.
    kind : {"auto", "enumerate", "ais", "importance"}
        The reference (``auto``: enumeration where at most 2^16 latent configurations, AIS for a sigmoid belief
        network, else importance sampling from the prior).
    chains, temperatures : int
        AIS chains per point and intermediate distributions.
    importance_samples : int
        Prior draws (``importance``).
    seed : int
        Seed of the reference's randomness (the global RNG is restored afterwards).

    Returns
    -------
    (kind, grads, means, nll, ess)
        The kind used; E_{p(z|x)}[grad_theta log p(x, z)] averaged over the points (float64, keyed by parameter
        name; the exact or estimated gradient of (1/B) sum_b log p(x_b)); E[z_l | x] per latent layer (top first,
        ``[B, D_l]``); the mean NLL of the points the reference implies; the median effective sample size.
    """
    if kind not in REFERENCES:
        raise WakesleepError(f"reference: must be one of {', '.join(REFERENCES)}, got {kind!r}")
    md = copy.deepcopy(model).double()
    xd = x.detach().to(device=next(md.parameters()).device, dtype=torch.float64)
    dims = [int(d) for d in md.dims[:-1]]
    configs = _configurations(md) if kind in ("auto", "enumerate") else None
    if kind == "enumerate" and configs is None:
        raise WakesleepError(
            f"reference: enumerate needs Bernoulli or categorical latents with at most {MAX_CONFIGURATIONS} joint "
            "configurations"
        )
    if kind == "auto":
        if configs is not None:
            kind = "enumerate"
        elif all(_family(layer) == "bernoulli" for layer in list(md.layers.values())[:-1]):
            kind = "ais"
        else:
            kind = "importance"
    chunk_rows = max(1, _CHUNK_ELEMENTS // max(1, xd.shape[0] * max(int(md.obs_dim), *dims)))
    if kind == "enumerate":
        ref = _weighted_reference(md, xd, _split(configs.to(xd.device), dims), False, chunk_rows)
        return kind, ref.grads, ref.means, ref.nll, ref.ess
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind == "importance":
            with torch.no_grad():
                particles = md.sample(int(importance_samples))[:-1]
            particles = [p.reshape(p.shape[0], -1).double() for p in particles]
            ref = _weighted_reference(md, xd, particles, True, chunk_rows)
            return kind, ref.grads, ref.means, ref.nll, ref.ess
        from wakesleep.eval import ais_log_likelihood

        res = ais_log_likelihood(
            model, x.to(model.dtype), chains=chains, temperatures=temperatures, seed=seed, return_samples=True
        )
    finally:
        torch.set_rng_state(state)
    w = torch.softmax(res.log_weights.double(), 0).to(xd.device)  # [C, B]
    zs = [z.double().to(xd.device) for z in res.samples]
    md.zero_grad()
    ((md.log_joint(xd.expand(chains, -1, -1), zs) * w).sum() / xd.shape[0]).backward()
    grads = {k: p.grad.detach().clone() for k, p in md.named_parameters() if p.grad is not None}
    means = [torch.einsum("cb,cbd->bd", w, z) for z in zs]
    return kind, grads, means, float(res.nll), float(res.ess.median())


def _load(run_dir: str | os.PathLike, device: str | None) -> tuple[nn.Module, Any, Any]:
    """Model, algorithm (with its checkpointed state) and training data of a run directory."""
    from wakesleep import runs

    spec, model = runs.load_run(run_dir, device=device)
    torch.manual_seed(spec.train.seed)
    algo = runs.build_algorithm(spec, model)
    ckpt_dir = Path(run_dir) / "checkpoint"
    if ckpt_dir.is_dir():
        from wakesleep.training import read_checkpoint

        state = read_checkpoint(ckpt_dir).algorithm
        if state:
            try:
                algo.load_state_dict({k: v.to(model.device) if isinstance(v, Tensor) else v for k, v in state.items()})
            except (RuntimeError, KeyError, ValueError, IndexError) as exc:
                detail = str(exc).strip().splitlines()
                raise WakesleepError(
                    f"{ckpt_dir}: the algorithm state does not fit the algorithm the run's config builds "
                    f"({detail[-1].strip() if detail else type(exc).__name__})"
                ) from None
    data = runs.load_data(spec, model)
    return model, algo, data


def _invalid(name: str, mean: Tensor, second: Tensor | None) -> Tensor:
    """Per (point, unit): how far E_q[z] and E_q[z^2] are from possible values for the family ``name`` (0 where
    they are possible): the distance of a Bernoulli mean outside [0, 1], of a non-negative latent's mean below
    0, of a variance E_q[z^2] - E_q[z]^2 below 0."""
    excess = torch.zeros_like(mean)
    if name == "bernoulli":
        excess = torch.maximum(excess, torch.maximum(-mean, mean - 1))
    if name in ("poisson", "gamma", "categorical"):
        excess = torch.maximum(excess, -mean)
    if second is not None and name != "bernoulli":
        excess = torch.maximum(excess, mean * mean - second)
    return excess.clamp_min(0)


def diagnose(
    source: str | os.PathLike | tuple[nn.Module, Any],
    x: Tensor | None = None,
    *,
    points: int = 100,
    reference: str = "auto",
    chains: int = 16,
    temperatures: int = 1000,
    repeats: int = 2,
    importance_samples: int = 100_000,
    sleeps: int = 1,
    seed: int = 1,
    device: str | None = None,
) -> Diagnosis:
    """Wake-gradient and posterior-read-out accuracy of a trained algorithm against references (module docstring).

    Parameters
    ----------
    source : path or (model, algorithm)
        A run directory written by ``wakesleep train`` (its ``config.yaml``, ``model.safetensors`` and, when
        present, the algorithm state of ``checkpoint/``), or a model and an algorithm built for it.
    x : Tensor, optional
        ``[B, D_x]`` points; default (a run directory only): the first ``points`` training points.
    points : int
        Points taken from the run's data when ``x`` is not given.
    reference : {"auto", "enumerate", "ais", "importance"}
        The reference posterior (:func:`reference_posterior`).
    chains, temperatures : int
        AIS chains per point and intermediate distributions.
    repeats : int
        Independent references (seeds ``seed``, ``seed + 1``, ...); ignored by the exact enumeration.
    importance_samples : int
        Prior draws per importance-sampling reference.
    sleeps : int
        Sleep phases run at the trained parameters before the wake gradient is taken (DDC-HM: eq. 7 and the
        regressions of eqs. 31-35 are refitted there; the algorithm's state moves on, as in training).
    seed : int
        Seeds the sleep phases (torch's global RNG) and the references.
    device : str, optional
        Device to load a run onto (default: the run's).

    Returns
    -------
    Diagnosis
        Per layer and block the wake gradient's cosine against the references, per latent layer the
        posterior-mean error and the fraction of invalid expectations.

    Raises
    ------
    WakesleepError
        A missing or unfit run, bad settings, or a model no reference supports.
    """
    t0 = time.perf_counter()
    for name, value in (
        ("points", points),
        ("chains", chains),
        ("temperatures", temperatures),
        ("repeats", repeats),
        ("importance_samples", importance_samples),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WakesleepError(f"diagnose: {name} must be a positive integer, got {value!r}")
    if isinstance(sleeps, bool) or not isinstance(sleeps, int) or sleeps < 0:
        raise WakesleepError(f"diagnose: sleeps must be a non-negative integer, got {sleeps!r}")
    if reference not in REFERENCES:
        raise WakesleepError(f"diagnose: reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if isinstance(source, (str, os.PathLike)):
        model, algo, data = _load(source, device)
        if x is None:
            pool = data.draw_train() if hasattr(data, "draw_train") else data
            x = pool[:points]
    else:
        try:
            model, algo = source
        except (TypeError, ValueError):
            raise WakesleepError("diagnose: source must be a run directory or a (model, algorithm) pair") from None
        if x is None:
            raise WakesleepError("diagnose: x is needed with a (model, algorithm) pair")
    if not hasattr(model, "layers") or not hasattr(model, "latent_names"):
        raise WakesleepError("diagnose: needs a wakesleep hierarchical model (wakesleep.build_model)")
    x = torch.as_tensor(x).to(device=model.device, dtype=model.dtype)
    if x.ndim != 2 or x.shape[1] != model.obs_dim:
        raise WakesleepError(f"diagnose: x must be [points, {model.obs_dim}], got {tuple(x.shape)}")
    torch.manual_seed(seed)
    for _ in range(sleeps):
        algo.sleep()
    est = {k: v.detach().double() for k, v in algo.wake_gradient(x).items()}
    names = list(model.latent_names)
    q_means: dict[str, Tensor] | None = None
    q_second: dict[str, Tensor] = {}
    if hasattr(algo, "posterior_mean"):
        with torch.no_grad():
            q_means = {k: v.double() for k, v in algo.posterior_mean(x).items()}
            if hasattr(algo, "expectation"):
                q_second = {n: algo.expectation(x, n, lambda z: z * z).double() for n in names}

    refs: list[tuple[dict[str, Tensor], list[Tensor], float | None, float]] = []
    kind = reference
    for r in range(repeats):
        kind, grads, means, nll, ess = reference_posterior(
            model,
            x,
            kind,
            chains=chains,
            temperatures=temperatures,
            importance_samples=importance_samples,
            seed=seed + r,
        )
        refs.append((grads, means, nll, ess))
        if kind == "enumerate":
            break  # exact: one is enough
    exact = kind == "enumerate"
    out = Diagnosis(
        reference=kind,
        points=int(x.shape[0]),
        settings={
            "chains": chains,
            "temperatures": temperatures,
            "repeats": len(refs),
            "importance_samples": importance_samples,
            "sleeps": sleeps,
            "seed": seed,
        },
        reference_nll=[r[2] for r in refs] if all(r[2] is not None for r in refs) else None,
        reference_ess=[r[3] for r in refs],
    )

    def compare(keys: list[str]) -> dict[str, Any] | None:
        keys = [k for k in keys if k in refs[0][0] and k in est]
        if not keys:
            return None
        a = torch.cat([est[k].flatten().to(refs[0][0][k].device) for k in keys])
        per = [torch.cat([g[k].flatten() for k in keys]) for g, *_ in refs]
        ref = torch.stack(per).mean(0)
        agree = 1.0 if exact else (_cosine(per[0], per[1]) if len(per) > 1 else None)
        return {
            "cosine": _cosine(a, ref),
            "cosine_per_reference": [_cosine(a, p) for p in per],
            "reference_agreement": agree,
            "relative_error": float((a - ref).norm() / ref.norm()) if float(ref.norm()) > 0 else math.nan,
            "norm_estimate": float(a.norm()),
            "norm_reference": float(ref.norm()),
        }

    for layer_name in model.layers:
        row = compare([k for k in refs[0][0] if k.startswith(f"layers.{layer_name}.")])
        if row is not None:
            out.layers[layer_name] = row
    for k in refs[0][0]:
        row = compare([k])
        if row is not None:
            out.blocks[k] = row
    layers = list(model.layers.values())
    for i, name in enumerate(names):
        ref_mean = torch.stack([m[i] for _, m, _, _ in refs]).mean(0)
        guess = ref_mean.mean(0, keepdim=True).expand_as(ref_mean)
        row: dict[str, Any] = {
            "invalid_fraction_beyond_0.01": None,
            "invalid_max_excess": None,
            "mae": None,
            "mae_constant_guess": float((guess - ref_mean).abs().mean()),
            "mae_reference_agreement": (
                0.0 if exact else float((refs[0][1][i] - refs[1][1][i]).abs().mean()) if len(refs) > 1 else None
            ),
            "invalid_fraction": None,
        }
        if q_means is not None:
            qm = q_means[name].reshape(ref_mean.shape).to(ref_mean.device)
            row["mae"] = float((qm - ref_mean).abs().mean())
            second = q_second.get(name)
            second = second.reshape(qm.shape).to(qm.device) if second is not None else None
            excess = _invalid(_family(layers[i]), qm, second)
            row["invalid_fraction"] = float((excess > 0).double().mean())
            row["invalid_fraction_beyond_0.01"] = float((excess > 0.01).double().mean())
            row["invalid_max_excess"] = float(excess.max())
        out.posterior[name] = row
    out.seconds = time.perf_counter() - t0
    return out

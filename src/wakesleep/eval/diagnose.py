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

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError
from wakesleep.eval.references import REFERENCES, cosine, family_name, reference_posterior

__all__ = ["Diagnosis", "REFERENCES", "diagnose", "reference_posterior"]


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
        Per model layer (``z3``, ..., ``x``): ``cosine`` (against the mean of the references),
        ``cosine_exact_recognition`` (DDC-HM: the cosine of the wake gradient computed with one reference's
        expectations E[T(z_l) | x] in place of the recognition's r_l(x), against another reference; it isolates
        the error of the gradient regressions, eqs. 31-35, from the recognition's; None for other algorithms),
        ``cosine_per_reference``,
        ``reference_agreement`` (cosine between the first two references; 1.0 for an exact reference; None with
        one), ``relative_error``, ``norm_estimate``, ``norm_reference``.
    blocks : dict
        The same per parameter block (``layers.x.link.weight``, ...).
    posterior : dict
        Per latent layer: ``mae`` (|E_q[z | x] - reference| averaged over points and units), ``mae_constant_guess``,
        ``mae_reference_agreement`` (between two references; None with one), ``invalid_fraction`` (of the
        point-unit expectations that are impossible: a Bernoulli mean outside [0, 1], a negative mean of a
        non-negative latent, a negative variance), ``invalid_fraction_beyond_0.01`` (impossible by more than
        0.01), ``invalid_max_excess`` (the largest distance from a possible value) and
        ``recognition_unexplained`` (DDC-HM: sum |r_l(x) - E_ref[T(z_l) | x]|^2 over the points and encoding
        functions, divided by the reference expectations' spread around their mean over the points: the
        recognition's error on these data points, the reference's own noise included); None values where the
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
                + (
                    f", with a perfect recognition {row['cosine_exact_recognition']:.3f}"
                    if row.get("cosine_exact_recognition") is not None
                    else ""
                )
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
                + (
                    f"; recognition leaves {100 * row['recognition_unexplained']:.1f} % of E[T | x] unexplained"
                    if row.get("recognition_unexplained") is not None
                    else ""
                )
            )
        out.append(f"{self.seconds:.0f} s")
        return out


def _load(run_dir: str | os.PathLike, device: str | None) -> tuple[nn.Module, Any, Any]:
    """Model, algorithm (with its checkpointed state) and training data of a run directory."""
    from wakesleep import runs

    spec, model, algo = runs.load_trained(run_dir, device=device)
    return model, algo, runs.load_data(spec, model)


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

    # DDC-HM: the references' expectations of the encoding functions, E[T(z_l) | x], give the wake gradient with a
    # perfect recognition, which splits its error into the recognition's and the gradient regressions'
    encode = getattr(algo, "encoding_functions", None)
    statistics = [lambda z, n=n: encode(z, n).double() for n in names] if callable(encode) else None
    refs: list[tuple[dict[str, Tensor], list[Tensor], float | None, float]] = []
    expectations: list[list[Tensor]] = []
    kind = reference
    for r in range(repeats):
        kind, grads, means, nll, ess, *rest = reference_posterior(
            model,
            x,
            kind,
            chains=chains,
            temperatures=temperatures,
            importance_samples=importance_samples,
            seed=seed + r,
            statistics=statistics,
        )
        refs.append((grads, means, nll, ess))
        if rest:
            expectations.append(rest[0])
        if kind == "enumerate":
            break  # exact: one is enough
    exact = kind == "enumerate"
    oracle: list[dict[str, Tensor]] = []
    if expectations:
        for e in expectations:
            g = algo.wake_gradient(x, representation=[t.to(model.dtype) for t in e])
            oracle.append({k: v.detach().double() for k, v in g.items()})
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
        agree = 1.0 if exact else (cosine(per[0], per[1]) if len(per) > 1 else None)
        exact_recognition = None
        if oracle:
            # a perfect recognition's gradient from reference i against reference j != i (independent noise)
            pick = [(0, 0)] if len(per) == 1 else [(i, (i + 1) % len(per)) for i in range(min(len(per), len(oracle)))]
            exact_recognition = sum(
                cosine(torch.cat([oracle[i][k].flatten().to(per[j].device) for k in keys]), per[j]) for i, j in pick
            ) / len(pick)
        return {
            "cosine": cosine(a, ref),
            "cosine_exact_recognition": exact_recognition,
            "cosine_per_reference": [cosine(a, p) for p in per],
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
            "recognition_unexplained": None,
        }
        if expectations:
            # the recognition on these points against the reference's E[T(z_l) | x]: the fraction of the
            # expectations' variance over points that r_l(x) leaves unexplained (reference noise included)
            target = torch.stack([e[i] for e in expectations]).mean(0)[:, :-1]
            got = algo.recognise(x)[i][:, :-1].double().to(target.device)
            spread = (target - target.mean(0)).pow(2).sum()
            row["recognition_unexplained"] = float((got - target).pow(2).sum() / spread) if spread > 0 else None
        if q_means is not None:
            qm = q_means[name].reshape(ref_mean.shape).to(ref_mean.device)
            row["mae"] = float((qm - ref_mean).abs().mean())
            second = q_second.get(name)
            second = second.reshape(qm.shape).to(qm.device) if second is not None else None
            excess = _invalid(family_name(layers[i]), qm, second)
            row["invalid_fraction"] = float((excess > 0).double().mean())
            row["invalid_fraction_beyond_0.01"] = float((excess > 0.01).double().mean())
            row["invalid_max_excess"] = float(excess.max())
        out.posterior[name] = row
    out.seconds = time.perf_counter() - t0
    return out

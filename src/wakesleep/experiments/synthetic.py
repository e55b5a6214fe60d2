"""The paper's synthetic experiment (Vertes & Sahani, section 7, eq. 13; Fig. 1).

Model (D2 = 1, D1 = 2, Dx = 2)::

    p(z2)      = 1/2 N(z2 | m, s^2) + 1/2 N(z2 | -m, s^2)        m = 3, s = 0.1, fixed
    p(z1 | z2) = Laplace(z1 | 0, softplus(B z2))
    p(x | z1)  = N(x | Lambda z1, diag(Psi))

True parameters, drawn with ``experiment.true_seed`` (+ i for data set i) from a ``torch.Generator``:

- ``B`` (D1 x D2): ``B[j] = s_j u_j`` with ``u_j ~ U(0.5, 1.5)`` and alternating signs ``s = (+1, -1, ...)``,
  so that each mixture component of z2 makes one z1 unit broad (scale ~ softplus(3 u) in [1.7, 4.5]) and the
  other sparse (scale ~ softplus(-3 u) in [0.01, 0.2]): the data are a heavy-tailed "cross";
- ``Lambda`` (Dx x D1): entries ``N(0, 1)``, redrawn until its condition number is below 10;
- ``Psi``: variances ``U(0.01, 0.1)``.

N = 10000 training points are drawn from the true model (``data.seed``). Every algorithm in
``experiment.algorithms`` starts at the true parameters and trains with Adam (lr 1e-4, 1000 epochs in the
paper). The default list is the comparison of Fig. 1: DDC-HM, the VAE, and the IWAE with k = 5 and k = 50, the
last three with recognition networks of two hidden layers of 100 units producing a factorised Gaussian
posterior (the IWAE's proposal), as in the paper (``proposal_hidden: [100, 100]``), on ``experiment.datasets``
data sets (25 in the paper). Reported for every data set and algorithm: the unbiased MMD^2 (Gaussian kernel)
between the training data and ``experiment.mmd_samples`` model samples (saved, with their path in
``results.json``), next to the MMD^2 of as many samples from the *true* model (the floor set by sampling
noise), and the parameter drift; across data sets a histogram of log MMD^2 per algorithm (``mmd_hist.png``,
Fig. 1 right) and a summary table (median MMD^2, how often each algorithm is best, DDC-HM against each other
algorithm with a two-sided sign test): :mod:`wakesleep.experiments.synthetic_report`.

``--quick`` (``experiment.quick``) keeps the model, the data size (N = 10000) and the algorithms' settings
(DDC-HM: 200 sleep samples, K1 = K2 = 100, recognition hidden 100; VAE/IWAE: 2 x 100 recognition), and cuts
the run to 2 data sets and ``max_iters: 1500`` iterations (15 of the 1000 epochs) per algorithm at a learning
rate of 1e-3 instead of the paper's 1e-4, so that it runs in a few minutes on 2 CPU cores. At lr 1e-4 so few
iterations move the parameters too little to show anything; at 1e-3 each method travels towards the fixed point
its gradient estimate defines, and the separation of Fig. 1 (VAE and IWAE drift from the true parameters and
lose the heavy-tailed "cross", DDC-HM stays near them) already shows. The full run uses the paper's settings.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config
from wakesleep.errors import WakesleepError
from wakesleep.experiments import synthetic_report
from wakesleep.experiments.base import Experiment, ExperimentContext
from wakesleep.experiments.entries import algorithm_entries, algorithm_labels, check_buildable
from wakesleep.schema import SEED_MAX, option


@dataclass(frozen=True)
class Options:
    """The ``experiment:`` section (values: ``configs/synthetic.yaml``)."""

    true_seed: int = option(minimum=0, maximum=SEED_MAX, doc="seed of the true parameters of data set 0 (+ i: i)")
    datasets: int = option(minimum=1, doc="number of data sets (true-parameter draws)")
    algorithms: list[str | dict] | str = option(doc="names, or mappings {name, label, options...}")
    algorithm_options: dict = option(doc="name -> options, for plain-name entries other than algorithm.name")
    mmd_samples: int = option(minimum=2, doc="model samples compared with the training data")
    mmd_bandwidth: str | float = option(doc="median, power or a positive number")

    def validate(self, prefix: str) -> None:
        """Entries known and labelled distinctly; a bandwidth rule or a positive width."""
        algorithm_labels(self.algorithms)
        bw = self.mmd_bandwidth
        if bw not in ("median", "power") and not (isinstance(bw, float) and bw > 0):
            raise WakesleepError(f"{prefix}.mmd_bandwidth must be median, power or a positive number, got {bw!r}")


# --------------------------------------------------------------------------------------------------------
# true parameters
# --------------------------------------------------------------------------------------------------------
def _check_model(model: torch.nn.Module) -> None:
    names = dict(model.named_parameters())
    layers = list(model.layers.values())
    ok = (
        len(layers) == 3
        and getattr(layers[0], "family", None) is None  # the mixture-of-Gaussians top prior
        and layers[1].family.name == "laplace"
        and layers[2].family.name == "gaussian"
    )
    z1, x = model.layer_names[1], model.layer_names[2]
    needed = [f"layers.{z1}.link.weight", f"layers.{x}.link.weight", f"layers.{x}.log_var"]
    if not ok or any(n not in names for n in needed):
        raise WakesleepError(
            "experiment synthetic: the model must be mog -> laplace (softplus_linear) -> gaussian (linear, "
            "learned variance), as in configs/synthetic.yaml"
        )


def draw_true_params(model: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Draw ``B``, ``Lambda``, ``Psi`` as described in the module docstring; keyed by parameter name.

    Biases (if the config has them) are zero.
    """
    _check_model(model)
    g = torch.Generator().manual_seed(int(seed))
    z1, x = model.layer_names[1], model.layer_names[2]
    d2, d1, dx = model.dims
    u = 0.5 + torch.rand(d1, d2, generator=g, dtype=torch.float64)
    signs = torch.tensor([1.0 if j % 2 == 0 else -1.0 for j in range(d1)], dtype=torch.float64)[:, None]
    B = signs * u
    for _ in range(1000):
        Lam = torch.randn(dx, d1, generator=g, dtype=torch.float64)
        if torch.linalg.cond(Lam) < 10:
            break
    psi = 0.01 + 0.09 * torch.rand(dx, generator=g, dtype=torch.float64)
    params = {f"layers.{z1}.link.weight": B, f"layers.{x}.link.weight": Lam, f"layers.{x}.log_var": psi.log()}
    out = {}
    for name, p in model.named_parameters():
        value = params.get(name, torch.zeros(p.shape, dtype=torch.float64))
        out[name] = value.numpy()
    return out


# --------------------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------------------
def _local_mmd2(x: torch.Tensor, y: torch.Tensor, bw: float, chunk: int = 2048) -> float:
    """Unbiased MMD^2 with a Gaussian kernel (fallback when wakesleep.eval.mmd is not importable)."""

    def ksum(a, b, same):
        total = 0.0
        for i in range(0, a.shape[0], chunk):
            for j in range(0, b.shape[0], chunk):
                d = torch.cdist(a[i : i + chunk], b[j : j + chunk]).pow(2)
                total += float(torch.exp(-d / (2 * bw * bw)).sum())
        if same:
            total -= a.shape[0]
        return total

    m, n = x.shape[0], y.shape[0]
    return ksum(x, x, True) / (m * (m - 1)) + ksum(y, y, True) / (n * (n - 1)) - 2 * ksum(x, y, False) / (m * n)


def mmd2(data: torch.Tensor, samples: torch.Tensor, bandwidth: str | float, seed: int = 0) -> dict[str, Any]:
    """Unbiased MMD^2 between ``data`` and ``samples``: ``{"mmd2", "std", "bandwidth", "implementation"}``."""
    data, samples = data.double().cpu(), samples.double().cpu()
    try:
        from wakesleep.eval.mmd import median_bandwidth, mmd_statistics
    except ImportError:
        mmd_statistics = None
    if mmd_statistics is not None:
        bw = median_bandwidth(data, seed=seed) if bandwidth == "median" else bandwidth
        st = mmd_statistics(data, samples, bw, seed=seed)
        return {
            "mmd2": st.mmd2,
            "std": math.sqrt(max(st.variance, 0.0)),
            "bandwidth": st.bandwidth,
            "implementation": "wakesleep.eval.mmd",
        }
    if bandwidth == "power":
        raise WakesleepError("experiment.mmd_bandwidth: 'power' needs wakesleep.eval.mmd")
    if bandwidth == "median":
        sub = data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))[:1000]]
        d = torch.pdist(sub)
        bw = float(d.median())
    else:
        bw = float(bandwidth)
    return {
        "mmd2": _local_mmd2(data, samples, bw),
        "std": None,
        "bandwidth": bw,
        "implementation": "local fallback (wakesleep.eval.mmd missing)",
    }


def _log(v: float) -> float | None:
    return math.log(v) if v > 0 else None


# --------------------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------------------
class Synthetic(Experiment):
    """Fig. 1: every algorithm from the true parameters of each data set; MMD^2 to the data, parameter drift."""

    name = "synthetic"
    Options = Options

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Train every algorithm on every data set (see the module docstring)."""
        from wakesleep.runs import build_model
        from wakesleep.spec import ModelSpec

        opts, config, out_dir = ctx.options, ctx.config, ctx.out_dir
        entries = algorithm_entries(config, "experiment synthetic")
        check_buildable(entries.values())
        section = {k: v for k, v in ctx.spec.model.to_dict().items() if k != "init"}
        base_spec = ctx.spec.replace(model=ModelSpec(section))  # the model, at its initial parameters
        datasets = []
        first_panels: dict[str, np.ndarray] = {}
        first_data = None
        log_mmd: dict[str, list[float | None]] = {name: [] for name in entries}
        log_mmd["true model"] = []
        mmd_impl = None
        for i in range(opts.datasets):
            # --- true parameters and data
            model = build_model(base_spec)
            true = draw_true_params(model, opts.true_seed + i)
            wio.save_npz(out_dir / f"true_params_{i}.npz", **true)
            wio.load_params_npz(model, out_dir / f"true_params_{i}.npz")
            gen = torch.Generator(device=model.device).manual_seed(int(config["data"]["seed"]) + 1000 * i)
            with torch.no_grad():
                data = model.sample(int(config["data"]["n"]), generator=gen)[-1]
                ref = model.sample(opts.mmd_samples, generator=gen)[-1]
            wio.save_npz(out_dir / f"data_{i}.npz", x=data)
            wio.save_npz(out_dir / f"true_model_samples_{i}.npz", x=ref)
            floor = mmd2(data, ref, opts.mmd_bandwidth, seed=i)
            floor["samples"] = f"true_model_samples_{i}.npz"
            mmd_impl = floor["implementation"]
            log_mmd["true model"].append(_log(floor["mmd2"]))
            entry: dict[str, Any] = {
                "index": i,
                "true_seed": opts.true_seed + i,
                "true_params": {k: v.tolist() for k, v in true.items()},
                "true_model": floor,
                "algorithms": {},
            }
            if i == 0:
                first_data = data.cpu().numpy()
                first_panels["true model"] = ref.cpu().numpy()
            # --- each algorithm, from the true parameters, on the same data
            for name, cfg in entries.items():
                run_cfg = copy.deepcopy(cfg)
                run_cfg["model"]["init"] = f"../true_params_{i}.npz"  # relative to the run directory
                run_cfg["data"] = {"source": "file", "path": f"../data_{i}.npz"}
                run_dir = out_dir / f"{name}_{i}"
                run_dir.mkdir()
                abs_cfg = copy.deepcopy(run_cfg)
                abs_cfg["model"]["init"] = str(out_dir / f"true_params_{i}.npz")
                t0 = time.perf_counter()
                e = ctx.train(abs_cfg, run_dir.name, data=data)
                wio.write_text(run_dir / "config.yaml", dump_config(run_cfg))  # `wakesleep train` reruns it
                seconds = time.perf_counter() - t0
                gen_s = torch.Generator(device=e.model.device).manual_seed(10_000 + i)
                with torch.no_grad():
                    samples = e.model.sample(opts.mmd_samples, generator=gen_s)[-1]
                wio.save_npz(run_dir / "mmd_samples.npz", x=samples)
                m = mmd2(data, samples, opts.mmd_bandwidth, seed=i)
                learnt = {n: p.detach().cpu().double().numpy() for n, p in e.model.named_parameters()}
                num = math.sqrt(sum(float(((learnt[n] - true[n]) ** 2).sum()) for n in learnt))
                den = math.sqrt(sum(float((true[n] ** 2).sum()) for n in learnt)) or 1.0
                entry["algorithms"][name] = {
                    "mmd": m,
                    "samples": f"{name}_{i}/mmd_samples.npz",  # relative to the output directory
                    "parameter_drift": num / den,
                    "learnt_params": {n: v.tolist() for n, v in learnt.items()},
                    "iterations": e.info["iterations"],
                    "epochs": e.info["epochs"],
                    "seconds": seconds,
                    "final_metrics": e.info["final_metrics"],
                }
                log_mmd[name].append(_log(m["mmd2"]))
                if i == 0:
                    first_panels[name] = samples.cpu().numpy()
            datasets.append(entry)

        # --- outputs
        panels = {k: v for k, v in first_panels.items() if k != "true model"}
        panels["true model"] = first_panels["true model"]
        synthetic_report.plot_samples(out_dir / "samples.png", first_data, panels)
        if opts.datasets > 1:
            synthetic_report.plot_histogram(out_dir / "mmd_hist.png", log_mmd)
        first = datasets[0]
        summary = (
            ", ".join(f"{name} MMD^2 {r['mmd']['mmd2']:.3g}" for name, r in first["algorithms"].items())
            + f" (true model {first['true_model']['mmd2']:.3g})"
        )
        reference = "ddc_hm" if "ddc_hm" in entries else next(iter(entries))
        return {
            "n_datasets": opts.datasets,
            "seconds": ctx.seconds(),
            "iterations": max(r["iterations"] for d in datasets for r in d["algorithms"].values()),
            "iters_per_epoch": math.ceil(int(config["data"]["n"]) / int(config["train"]["batch_size"])),
            "summary": summary,
            "mmd_implementation": mmd_impl,
            "log_mmd2": log_mmd,
            "fig1": synthetic_report.fig1_summary(datasets, reference=reference),
            "datasets": datasets,
        }

    report = staticmethod(synthetic_report.report)


EXPERIMENT = Synthetic()

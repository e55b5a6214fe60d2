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
algorithm with a two-sided sign test).

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config
from wakesleep.errors import WakesleepError

DEFAULT_CONFIG = """\
# The paper's synthetic experiment (section 7, eq. 13): `wakesleep experiment synthetic --out DIR [--quick]`.
# The same file works with `wakesleep train` (then the data come from the model at its random initial
# parameters instead of the experiment's drawn true parameters).
model:
  layers:                # top latent first, observation last
    - {name: z2, family: mog, dim: 1, means: [[3.0], [-3.0]], std: 0.1, learn: false}
    - {name: z1, family: laplace, dim: 2, link: softplus_linear, bias: false}   # scale softplus(B z2)
    - {name: x,  family: gaussian, dim: 2, link: linear, bias: false}           # mean Lambda z1, variance Psi
  dtype: float64
algorithm: {name: ddc_hm, sleep_samples: 200, features: 100, recognition_hidden: 100}
train: {epochs: 1000, batch_size: 100, lr: 1.0e-4, seed: 0, device: cpu, log_every: 500, threads: 1}
data: {source: model, n: 10000, seed: 1}
experiment:
  true_seed: 0           # seed of the true parameters (B, Lambda, Psi) of data set 0; data set i uses true_seed + i
  datasets: 25           # number of data sets (true-parameter draws); the paper's Fig. 1 histogram uses 25
  # Fig. 1: DDC-HM against the VAE and the IWAE (k = 5, 50), whose recognition networks have 2 hidden layers
  # of 100 units and output a factorised Gaussian posterior (the IWAE's proposal), as in the paper
  algorithms:
    - ddc_hm
    - {name: vae, proposal_hidden: [100, 100]}
    - {name: iwae, label: iwae_k5, k: 5, proposal_hidden: [100, 100]}
    - {name: iwae, label: iwae_k50, k: 50, proposal_hidden: [100, 100]}
  algorithm_options: {}  # name -> options, for plain-name entries of `algorithms` other than algorithm.name
  mmd_samples: 10000     # model samples compared with the training data
  mmd_bandwidth: median  # Gaussian-kernel width: median (median heuristic on the training data) or power
  quick: {experiment.datasets: 2, train.max_iters: 1500, train.lr: 1.0e-3, train.log_every: 250}
"""

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "true_seed": 0,
    "datasets": 1,
    "algorithms": ["ddc_hm"],
    "algorithm_options": {},
    "mmd_samples": 10000,
    "mmd_bandwidth": "median",
    "quick": {},
}


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


# --------------------------------------------------------------------------------------------------------
# plots and report
# --------------------------------------------------------------------------------------------------------
def _plot_samples(path: Path, data: np.ndarray, panels: dict[str, np.ndarray], n_show: int = 3000) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(panels)
    fig, axes = plt.subplots(1, cols, figsize=(3.3 * cols, 3.4), sharex=True, sharey=True, squeeze=False)
    lo, hi = np.percentile(data, [0.5, 99.5], axis=0)
    pad = 0.1 * (hi - lo)
    for ax, (title, arr) in zip(axes[0], [("training data", data), *panels.items()], strict=True):
        ax.scatter(
            arr[:n_show, 0],
            arr[:n_show, 1],
            s=1.5,
            alpha=0.4,
            color="k" if title == "training data" else "C0",
            rasterized=True,
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_xlabel("$x_1$")
    axes[0][0].set_ylabel("$x_2$")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_histogram(path: Path, log_mmd: dict[str, list[float | None]]) -> None:
    """Fig. 1 (right): histogram of log MMD^2 per algorithm on shared bins. Non-positive unbiased estimates
    (indistinguishable from 0) have no logarithm; the legend says how many data sets each histogram holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = {name: [v for v in vals if v is not None and math.isfinite(v)] for name, vals in log_mmd.items()}
    everything = [v for vals in finite.values() for v in vals]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if everything:
        lo, hi = min(everything), max(everything)
        n_bins = max(8, min(30, len(everything) // 3))
        bins = np.linspace(lo - 0.05 * (hi - lo + 1), hi + 0.05 * (hi - lo + 1), n_bins + 1)
        for name, vals in finite.items():
            if vals:
                floor = name == "true model"
                style = {"histtype": "step", "color": "k", "linestyle": "--"} if floor else {"alpha": 0.5}
                ax.hist(vals, bins=bins, label=f"{name} ({len(vals)}/{len(log_mmd[name])})", **style)
    ax.set_xlabel("log MMD$^2$ (training data vs model samples)")
    ax.set_ylabel("data sets")
    ax.set_title("Fig. 1 (right): fits from the true parameters", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _sign_test(wins: int, n: int) -> float:
    """Two-sided exact sign test: P(|W - n/2| >= |wins - n/2|) for W ~ Binomial(n, 1/2)."""
    if n == 0:
        return 1.0
    k = min(wins, n - wins)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def fig1_summary(datasets: list[dict[str, Any]], reference: str = "ddc_hm") -> dict[str, Any]:
    """Across data sets: per algorithm the median/mean MMD^2, the median log MMD^2 (positive estimates), the
    number of data sets where it has the lowest MMD^2 and its median drift; and ``reference`` (DDC-HM)
    against every other algorithm: on how many data sets its MMD^2 is lower, with a two-sided sign test."""
    names = list(datasets[0]["algorithms"]) if datasets else []
    per: dict[str, Any] = {}
    for name in names:
        vals = np.array([d["algorithms"][name]["mmd"]["mmd2"] for d in datasets], dtype=float)
        pos = vals[vals > 0]
        drift = np.array([d["algorithms"][name]["parameter_drift"] for d in datasets], dtype=float)
        best = sum(1 for d in datasets if min(d["algorithms"], key=lambda a: d["algorithms"][a]["mmd"]["mmd2"]) == name)
        per[name] = {
            "median_mmd2": float(np.median(vals)),
            "mean_mmd2": float(vals.mean()),
            "median_log_mmd2": float(np.median(np.log(pos))) if pos.size else None,
            "n_positive": int(pos.size),
            "best_on": int(best),
            "median_drift": float(np.median(drift)),
        }
    floor = np.array([d["true_model"]["mmd2"] for d in datasets], dtype=float)
    per["true model"] = {
        "median_mmd2": float(np.median(floor)) if floor.size else None,
        "mean_mmd2": float(floor.mean()) if floor.size else None,
    }
    versus: dict[str, Any] = {}
    if reference in names:
        for name in names:
            if name == reference:
                continue
            wins = sum(
                1 for d in datasets if d["algorithms"][reference]["mmd"]["mmd2"] < d["algorithms"][name]["mmd"]["mmd2"]
            )
            versus[name] = {"reference_lower": wins, "n": len(datasets), "sign_test_p": _sign_test(wins, len(datasets))}
    return {"reference": reference, "algorithms": per, "versus": versus}


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _report(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        "# Synthetic experiment (paper section 7, eq. 13)",
        "",
        f"{'Quick run' if results['quick'] else 'Run'}: {results['iterations']} iterations "
        f"({results['iterations'] / results['iters_per_epoch']:.0f} epochs"
        + (f" of the configured {cfg['train']['epochs']}" if cfg["train"]["max_iters"] else "")
        + f"), batch {cfg['train']['batch_size']}, Adam lr {cfg['train']['lr']:g}, "
        f"N = {cfg['data']['n']} training points, {results['n_datasets']} data set(s); "
        f"total {results['seconds']:.0f} s.",
        "",
        "MMD^2: unbiased estimate, Gaussian kernel "
        f"({cfg['experiment']['mmd_bandwidth']} bandwidth), training data vs {cfg['experiment']['mmd_samples']} "
        "samples. The *true model* row is the floor set by sampling noise (samples from the parameters that "
        "generated the data); a learnt model that matches the data has an MMD^2 of the same size.",
        "",
        "| data set | model | MMD^2 | +- (1 sd) | parameter drift | iterations | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ds in results["datasets"]:
        lines.append(
            f"| {ds['index']} | true model | {_fmt(ds['true_model']['mmd2'])} | "
            f"{_fmt(ds['true_model']['std'])} | 0 | | |"
        )
        for name, r in ds["algorithms"].items():
            lines.append(
                f"| {ds['index']} | {name} | {_fmt(r['mmd']['mmd2'])} | {_fmt(r['mmd']['std'])} | "
                f"{_fmt(r['parameter_drift'])} | {r['iterations']} | {r['seconds']:.0f} |"
            )
    lines += [
        "",
        "Parameter drift: |theta - theta_true| / |theta_true| over all learnt parameters (the model starts at "
        "theta_true; an unbiased learner stays near it).",
        "",
    ]
    fig1 = results.get("fig1")
    if fig1 and fig1["algorithms"]:
        n = results["n_datasets"]
        lines += [
            f"## Fig. 1: summary over {n} data set(s)",
            "",
            "| model | median MMD^2 | mean MMD^2 | median log MMD^2 (positive estimates) | lowest MMD^2 on | "
            "median drift |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in fig1["algorithms"].items():
            if name == "true model":
                continue
            lines.append(
                f"| {name} | {_fmt(r['median_mmd2'])} | {_fmt(r['mean_mmd2'])} | "
                f"{_fmt(r['median_log_mmd2'])} ({r['n_positive']}/{n}) | {r['best_on']}/{n} | "
                f"{_fmt(r['median_drift'])} |"
            )
        tm = fig1["algorithms"]["true model"]
        lines.append(f"| true model | {_fmt(tm['median_mmd2'])} | {_fmt(tm['mean_mmd2'])} | | | 0 |")
        lines.append("")
        for name, v in fig1["versus"].items():
            lines.append(
                f"- {fig1['reference']} has a lower MMD^2 than {name} on {v['reference_lower']}/{v['n']} "
                f"data sets (two-sided sign test p = {v['sign_test_p']:.3g})."
            )
        lines.append("")
    lines += ["![data and model samples](samples.png)", ""]
    if results["n_datasets"] > 1:
        lines += ["![log MMD histogram](mmd_hist.png)", ""]
    lines += [
        f"MMD implementation: {results['mmd_implementation']}.",
        "",
        "Files: `results.json` (all numbers; `datasets[i].algorithms.<name>.samples` is the path of the samples "
        "the MMD was computed on), `true_params_<i>.npz`, `data_<i>.npz`, `true_model_samples_<i>.npz`, and one "
        "run directory per algorithm and data set (`<algorithm>_<i>/`: config.yaml, metrics.jsonl, "
        "model.safetensors, samples.npz, mmd_samples.npz; `wakesleep train --config <algorithm>_<i>/config.yaml` "
        "reruns it).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------------------
def _validate(exp: dict[str, Any]) -> None:
    from wakesleep.algorithms import ALGORITHMS

    for key in ("true_seed", "datasets", "mmd_samples"):
        v = exp[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "true_seed" else 1):
            kind = "non-negative" if key == "true_seed" else "positive"
            raise WakesleepError(f"config: experiment.{key} must be a {kind} integer, got {v!r}")
    if exp["mmd_samples"] < 2:
        raise WakesleepError("config: experiment.mmd_samples must be at least 2")
    algos = exp["algorithms"]
    if isinstance(algos, str):
        algos = exp["algorithms"] = [algos]
    if not isinstance(algos, list) or not algos:
        raise WakesleepError("config: experiment.algorithms must be a non-empty list of algorithm names")
    labels = []
    for entry in algos:
        if isinstance(entry, dict):
            name = entry.get("name")
            label = entry.get("label", name)
        else:
            name = label = entry
        if name not in ALGORITHMS:
            raise WakesleepError(f"config: experiment.algorithms: unknown algorithm {name!r}")
        if not isinstance(label, str) or label in labels:
            raise WakesleepError(f"config: experiment.algorithms: labels must be distinct strings, got {label!r} twice")
        labels.append(label)
    if not isinstance(exp["algorithm_options"], dict):
        raise WakesleepError("config: experiment.algorithm_options must be a mapping name -> options")
    bw = exp["mmd_bandwidth"]
    if bw not in ("median", "power") and not (isinstance(bw, int | float) and bw > 0):
        raise WakesleepError(f"config: experiment.mmd_bandwidth must be median, power or a positive number, got {bw!r}")


def _algorithm_config(config: dict[str, Any], entry: str | dict) -> tuple[str, dict[str, Any]]:
    """``(label, run config)`` of an ``experiment.algorithms`` entry.

    An entry is a name (the config's own ``algorithm`` section when it names the same algorithm, else
    ``experiment.algorithm_options[name]``) or a mapping ``{name: iwae, label: iwae_k5, k: 5}``.
    """
    from wakesleep.config import resolve_config

    exp = config["experiment"]
    if isinstance(entry, dict):
        algo = {k: v for k, v in entry.items() if k != "label"}
        label = entry.get("label", entry["name"])
    elif entry == config["algorithm"]["name"]:
        algo, label = dict(config["algorithm"]), entry
    else:
        algo, label = {"name": entry, **(exp["algorithm_options"].get(entry) or {})}, entry
    raw = {k: copy.deepcopy(config[k]) for k in ("model", "train", "data")}
    raw["algorithm"] = algo
    return label, resolve_config(raw, source="experiment synthetic", check_model=False)


def run(config: dict[str, Any], out_dir: Path, progress: bool | None = None) -> dict[str, Any]:
    """Run the experiment described by a resolved config, writing into ``out_dir``; return the results."""
    from wakesleep.train import config_threads

    _validate(config["experiment"])
    with config_threads(config):
        return _run(config, out_dir, progress)


def _run(config: dict[str, Any], out_dir: Path, progress: bool | None) -> dict[str, Any]:
    from wakesleep.train import build_model_from_config, train_from_config

    exp = config["experiment"]
    algo_configs = dict(_algorithm_config(config, entry) for entry in exp["algorithms"])
    for cfg in algo_configs.values():  # fail early on a bad option, before any training
        from wakesleep.train import build_algorithm_from_config

        build_algorithm_from_config(cfg, build_model_from_config(cfg))

    t_start = time.perf_counter()
    datasets = []
    first_panels: dict[str, np.ndarray] = {}
    first_data = None
    log_mmd: dict[str, list[float]] = {name: [] for name in algo_configs}
    log_mmd["true model"] = []
    mmd_impl = None
    for i in range(exp["datasets"]):
        # --- true parameters and data
        base_cfg = copy.deepcopy(config)
        base_cfg["model"].pop("init", None)
        model = build_model_from_config(base_cfg)
        true = draw_true_params(model, exp["true_seed"] + i)
        wio.save_npz(out_dir / f"true_params_{i}.npz", **true)
        wio.load_params_npz(model, out_dir / f"true_params_{i}.npz")
        gen = torch.Generator(device=model.device).manual_seed(int(config["data"]["seed"]) + 1000 * i)
        with torch.no_grad():
            data = model.sample(int(config["data"]["n"]), generator=gen)[-1]
            ref = model.sample(int(exp["mmd_samples"]), generator=gen)[-1]
        wio.save_npz(out_dir / f"data_{i}.npz", x=data)
        wio.save_npz(out_dir / f"true_model_samples_{i}.npz", x=ref)
        floor = mmd2(data, ref, exp["mmd_bandwidth"], seed=i)
        floor["samples"] = f"true_model_samples_{i}.npz"
        mmd_impl = floor["implementation"]
        log_mmd["true model"].append(math.log(floor["mmd2"]) if floor["mmd2"] > 0 else None)
        entry: dict[str, Any] = {
            "index": i,
            "true_seed": exp["true_seed"] + i,
            "true_params": {k: v.tolist() for k, v in true.items()},
            "true_model": floor,
            "algorithms": {},
        }
        if i == 0:
            first_data = data.cpu().numpy()
            first_panels["true model"] = ref.cpu().numpy()
        # --- each algorithm, from the true parameters, on the same data
        for name, cfg in algo_configs.items():
            run_cfg = copy.deepcopy(cfg)
            run_cfg["model"]["init"] = f"../true_params_{i}.npz"  # relative to the run directory
            run_cfg["data"] = {"source": "file", "path": f"../data_{i}.npz"}
            run_dir = out_dir / f"{name}_{i}"
            run_dir.mkdir()
            abs_cfg = copy.deepcopy(run_cfg)
            abs_cfg["model"]["init"] = str(out_dir / f"true_params_{i}.npz")
            t0 = time.perf_counter()
            fitted, _, trainer, _ = train_from_config(abs_cfg, run_dir, progress=progress, data=data)
            wio.write_text(run_dir / "config.yaml", dump_config(run_cfg))
            seconds = time.perf_counter() - t0
            gen_s = torch.Generator(device=fitted.device).manual_seed(10_000 + i)
            with torch.no_grad():
                samples = fitted.sample(int(exp["mmd_samples"]), generator=gen_s)[-1]
            wio.save_npz(run_dir / "mmd_samples.npz", x=samples)
            m = mmd2(data, samples, exp["mmd_bandwidth"], seed=i)
            learnt = {n: p.detach().cpu().double().numpy() for n, p in fitted.named_parameters()}
            num = math.sqrt(sum(float(((learnt[n] - true[n]) ** 2).sum()) for n in learnt))
            den = math.sqrt(sum(float((true[n] ** 2).sum()) for n in learnt)) or 1.0
            entry["algorithms"][name] = {
                "mmd": m,
                "samples": f"{name}_{i}/mmd_samples.npz",  # relative to the output directory
                "parameter_drift": num / den,
                "learnt_params": {n: v.tolist() for n, v in learnt.items()},
                "iterations": trainer.n_iter_,
                "epochs": trainer.epochs_,
                "seconds": seconds,
                "final_metrics": trainer.history_[-1] if trainer.history_ else {},
            }
            log_mmd[name].append(math.log(m["mmd2"]) if m["mmd2"] > 0 else None)
            if i == 0:
                first_panels[name] = samples.cpu().numpy()
        datasets.append(entry)

    # --- outputs
    panels = {k: v for k, v in first_panels.items() if k != "true model"}
    panels["true model"] = first_panels["true model"]
    _plot_samples(out_dir / "samples.png", first_data, panels)
    if exp["datasets"] > 1:
        _plot_histogram(out_dir / "mmd_hist.png", log_mmd)
    seconds = time.perf_counter() - t_start
    first = datasets[0]
    summary = (
        ", ".join(f"{name} MMD^2 {r['mmd']['mmd2']:.3g}" for name, r in first["algorithms"].items())
        + f" (true model {first['true_model']['mmd2']:.3g})"
    )
    results = {
        "experiment": "synthetic",
        "quick": bool(exp.get("quick_run", False)),
        "n_datasets": exp["datasets"],
        "seconds": seconds,
        "iterations": max(r["iterations"] for d in datasets for r in d["algorithms"].values()),
        "iters_per_epoch": math.ceil(int(config["data"]["n"]) / int(config["train"]["batch_size"])),
        "summary": summary,
        "mmd_implementation": mmd_impl,
        "log_mmd2": log_mmd,
        "fig1": fig1_summary(datasets, reference="ddc_hm" if "ddc_hm" in algo_configs else next(iter(algo_configs))),
        "datasets": datasets,
        "config": config,
    }
    wio.save_json(out_dir / "results.json", results)
    wio.write_text(out_dir / "report.md", _report(results))
    wio.write_text(out_dir / "config.yaml", dump_config(config))
    return results

"""Sigmoid belief network on binarised images (Vertes & Sahani, section 7): DDC-HM against VIMCO, RWS, wake-sleep.

Model: three layers of 200 binary units above 784 binary pixels (p(z3) factorised Bernoulli with learnt
logits, p(z_l | z_{l+1}) and p(x | z1) logistic with learnt weights and biases). Data: binarised Fashion-MNIST
(Debian's ``dataset-fashion-mnist``; ``data.binarize``, default one fixed Bernoulli draw ``fixed-seed0``), and
MNIST too when ``experiment.mnist_root`` names a folder holding its four IDX files (the paper's data set;
see ``wakesleep.data.download_mnist``).

Algorithms (``experiment.algorithms``): DDC-HM with K = 200 encoding functions per layer and a recognition
hidden layer of 300 units (the paper's "sigmoidal" layer is, in this library, the random ReLU layer of eq. 8
followed by closed-form read-outs; ``recognition_input: none``, eq. 8 as printed: the read-outs see the 300
hidden units only; ``linear``, used here, also feeds them the 784 pixels; ``message`` the model's bottom-up
message W^T x, 200 numbers through which alone the exact posterior depends on x, a third of the cost, but
unstable over a full run), 1000 sleep samples; VIMCO with K = 50
particles (logistic layered proposal, Mnih & Rezende 2016); reweighted wake-sleep (K = 5, wake + sleep q
updates); classic wake-sleep.

Evaluation, on the binarised test set:

* relative MMD test (Bounliphone et al. 2015) of every other algorithm (``y``) against the candidate
  (``z``, DDC-HM), with ``experiment.mmd_samples`` test images as the reference and as many samples of each
  model; Gaussian kernel whose width is the median heuristic on the test images (one width for all
  algorithms, so their MMD^2 values are comparable). A small p-value prefers the candidate.
* importance-sampled NLL with ``experiment.nll_k`` particles on the first ``experiment.nll_points`` test
  images (``wakesleep.eval.log_likelihood``). Proposal: the algorithm's own recognition model where it has a
  sampling one (VIMCO, RWS, wake-sleep); DDC-HM's recognition gives expectations, not samples, so its model is
  evaluated with ``wakesleep.eval.fit_proposal`` (an evaluation-only proposal trained with the model frozen,
  ``experiment.proposal_steps`` Adam steps). The estimate is a stochastic lower bound on log p(x) whatever
  the proposal (so an upper bound on the NLL); the ESS is reported next to it. With DDC-HM's evaluation-only
  proposal the ESS is often about 1 and the bound loose (tens of nats), hence:
* annealed importance sampling (``wakesleep.eval.ais_log_likelihood``, single-site Gibbs sweeps over the binary
  latents, ``experiment.ais_chains`` chains and ``experiment.ais_temperatures`` temperatures) on the first
  ``experiment.ais_points`` test images, the same estimator and seed for every model; the report gives each
  model's AIS NLL and the candidate's minus each other's, paired over the same images (far tighter than either
  standard error). AIS takes minutes per model, so a resumed run reuses a saved estimate with the same settings.
* image grids of samples beside test images.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from wakesleep import io as wio
from wakesleep.config import dump_config
from wakesleep.errors import WakesleepError
from wakesleep.experiments._entries import EntryRunner
from wakesleep.experiments.patches import (
    ais_nll_cached,
    algorithm_entries,
    draw_samples,
    fmt,
    fmt_p,
    paired_nll_difference,
    positive_int,
)

DEFAULT_CONFIG = """\
# Sigmoid belief network 784-200-200-200, paper section 7: `wakesleep experiment sbn --out DIR [--quick]`.
model:
  layers:                # top latent first, observation last
    - {name: z3, family: bernoulli, dim: 200}
    - {name: z2, family: bernoulli, dim: 200, link: linear}
    - {name: z1, family: bernoulli, dim: 200, link: linear}
    - {name: x,  family: bernoulli, dim: 784, link: linear}
  dtype: float32
# recognition_input: linear appends x to the random ReLU layer of the recognition read-out: without it the DDC-HM
# learns little beyond the pixel marginals here (docs/RESULTS.md, "DDC-HM on the SBN"); `message` (W^T x) is
# cheaper but failed on the full-data run (its inputs move with theta under the running statistics)
algorithm: {name: ddc_hm, sleep_samples: 1000, features: 200, recognition_hidden: 300, recognition_input: linear}
train: {epochs: 100, batch_size: 100, lr: 1.0e-3, recognition_lr: 1.0e-3, seed: 0, device: cpu, log_every: 600,
        samples: 1000, checkpoint_every: 3000}   # checkpoints: `--resume` continues an interrupted entry
data: {source: fashion_mnist, binarize: fixed-seed0}
experiment:
  datasets: [fashion_mnist, mnist]   # mnist runs only when mnist_root holds its files
  mnist_root: null                   # folder with MNIST's four IDX files (wakesleep.data.download_mnist)
  algorithms: [ddc_hm, {name: vimco, label: vimco_k50, k: 50}, {name: rws, label: rws_k5, k: 5}, wake_sleep]
  candidate: ddc_hm      # z of every relative test; every other algorithm is a y
  algorithm_options: {}  # name -> options, for plain-name entries of `algorithms` other than algorithm.name
  train_options:         # label -> train settings for that entry only
    ddc_hm: {sleep_every: 20}   # a sleep phase every 20 wake steps (Algorithm 1: every step; 10 and 20 gave the same
                                # MMD on the full data, 20 is 1.4x faster per epoch: docs/RESULTS.md, session 4)
  mmd_samples: 10000     # test images (reference) and model samples in the relative MMD tests
  nll_k: 5000            # importance samples per test image
  nll_points: 1000       # test images in the NLL estimate
  proposal_steps: 2000   # Adam steps of the evaluation-only proposal (models without a sampling posterior)
  ais_points: 100        # the first test images also scored by annealed importance sampling (0: none)
  ais_chains: 16         # AIS chains per image (wakesleep.eval.ais_log_likelihood, Gibbs sweeps)
  ais_temperatures: 1000 # AIS intermediate distributions (sigmoid schedule); 3000 moved the NLL < 0.6 nats
  quick:
    experiment.datasets: [fashion_mnist]
    data.n: 2000
    data.n_test: 1000
    train.max_iters: 150
    train.log_every: 50
    train.threads: 1
    algorithm.sleep_samples: 500
    experiment.mmd_samples: 1000
    experiment.nll_k: 100
    experiment.nll_points: 100
    experiment.proposal_steps: 200
    experiment.ais_points: 20
    experiment.ais_temperatures: 100
"""

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "datasets": ["fashion_mnist", "mnist"],
    "mnist_root": None,
    "algorithms": [
        "ddc_hm",
        {"name": "vimco", "label": "vimco_k50", "k": 50},
        {"name": "rws", "label": "rws_k5", "k": 5},
        "wake_sleep",
    ],
    "candidate": "ddc_hm",
    "algorithm_options": {},
    "train_options": {},
    "mmd_samples": 10000,
    "nll_k": 5000,
    "nll_points": 1000,
    "proposal_steps": 2000,
    "ais_points": 100,
    "ais_chains": 16,
    "ais_temperatures": 1000,
    "quick": {},
}


# --------------------------------------------------------------------------------------------------------
# evaluation (also used by `wakesleep bench sbn`)
# --------------------------------------------------------------------------------------------------------
def nll_estimate(
    model, algo, train_x: torch.Tensor, test_x: torch.Tensor, k: int, proposal_steps: int, seed: int = 0
) -> dict[str, Any]:
    """Importance-sampled NLL of ``test_x`` (see the module docstring for the proposal), with the per-image
    estimates ``log_px``."""
    from wakesleep.eval import fit_proposal, log_likelihood

    t0 = time.perf_counter()
    proposal = getattr(algo, "proposal", None)
    kind = "own recognition model"
    if proposal is None or not hasattr(proposal, "sample"):
        proposal = fit_proposal(
            model, train_x.to(device=model.device, dtype=model.dtype), steps=int(proposal_steps), seed=seed
        )
        kind = f"fit_proposal ({proposal_steps} steps, model frozen)"
    x = test_x.to(device=model.device, dtype=model.dtype)
    res = log_likelihood(model, x, proposal, k=int(k), seed=seed)
    ess = res.ess.double()
    return {
        "nll": res.nll,
        "sem": res.sem,
        "k": int(k),
        "points": int(x.shape[0]),
        "proposal": kind,
        "ess_median": float(ess.median()),
        "ess_mean": float(ess.mean()),
        "seconds": time.perf_counter() - t0,
        "log_px": res.log_px.double().tolist(),
    }


def independent_pixels(
    train: torch.Tensor,
    test: torch.Tensor,
    n_mmd: int,
    nll_points: int,
    bandwidth: float,
    seed: int = 50_000,
    ais_points: int = 0,
) -> dict[str, float]:
    """The reference a model must beat: independent Bernoulli pixels with the training images' marginals.

    Returns its MMD^2 to the first ``n_mmd`` test images (from ``n_mmd`` samples, the same kernel as the models)
    and its exact NLL on the first ``nll_points`` test images (marginals clamped to [1e-3, 1 - 1e-3]), and on
    the first ``ais_points`` (``nll_ais_points``) when that is positive.
    """
    p = train.double().mean(0).clamp(1e-3, 1 - 1e-3)
    gen = torch.Generator().manual_seed(int(seed))
    s = torch.bernoulli(p.expand(n_mmd, -1), generator=gen)
    t = test[:nll_points].double()
    nll = -(t * p.log() + (1 - t) * (1 - p).log()).sum(1)
    out = {
        "mmd2": mmd_to(test[:n_mmd].double(), s, bandwidth),
        "nll": float(nll.mean()),
        "nll_sem": float(nll.std() / len(nll) ** 0.5),
    }
    if ais_points > 0:
        t = test[:ais_points].double()
        out["nll_ais_points"] = float(-(t * p.log() + (1 - t) * (1 - p).log()).sum(1).mean())
    return out


def mmd_to(ref: torch.Tensor, samples: torch.Tensor, bandwidth: float) -> float:
    from wakesleep.eval import mmd

    return float(mmd(ref, samples, bandwidth=bandwidth))


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------
def _report(results: dict[str, Any]) -> str:
    cfg = results["config"]
    exp, t, a = cfg["experiment"], cfg["train"], cfg["algorithm"]
    cand = exp["candidate"]
    lines = [
        "# Sigmoid belief network 784-200-200-200 (paper section 7)",
        "",
        f"{'Quick run (scaled down, see below)' if results['quick'] else 'Full run'}: {t['epochs']} epochs"
        + (f" capped at {t['max_iters']} iterations" if t.get("max_iters") else "")
        + f", batch {t['batch_size']}, Adam lr {t['lr']:g} (recognition {t['recognition_lr']:g}), {t['dtype']}, "
        f"device {t['device']}; total {results['seconds']:.0f} s.",
        "",
        f"DDC-HM: {a.get('sleep_samples')} sleep samples, K = {a.get('features')} per layer, recognition hidden "
        f"{a.get('recognition_hidden')}, recognition input {a.get('recognition_input', 'auto')}.",
        "",
    ]
    for label, opts in (exp.get("train_options") or {}).items():
        lines += [f"Train settings of {label} only: {', '.join(f'{k} = {v}' for k, v in opts.items())}.", ""]
    for ds in results["datasets"]:
        lines += [
            f"## {ds['name']} ({ds['n_train']} training images, {ds['n_test']} test images, binarisation "
            f"{ds['data']['binarize']})",
            "",
            f"MMD^2 against {ds['n_mmd']} test images ({ds['n_mmd']} samples per model; Gaussian kernel, width "
            f"{ds['bandwidth']:.3g} = median heuristic on the test images). Relative test: H0 MMD(y) <= "
            f"MMD({cand}); a small p-value prefers {cand}. NLL: importance sampling, K = {exp['nll_k']}, "
            f"{ds['nll_points']} test images (a stochastic upper bound on the true NLL).",
            "",
            f"| algorithm | MMD^2 | p-value (y = row, z = {cand}) | NLL (nats) | +- | ESS median | proposal | "
            "AIS NLL | +- | AIS NLL, " + cand + " minus row (paired) | NLL (importance sampling) on the AIS images | "
            "train s | iterations |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, r in ds["algorithms"].items():
            rel = ds["relative_tests"].get(label)
            p = fmt_p(rel["log10_p_value"]) if rel else ("(candidate)" if label == cand else "n/a")
            nll, ais = r.get("nll") or {}, r.get("ais_nll") or {}
            diff = (rel or {}).get("ais_nll_difference")
            lines.append(
                f"| {label} | {fmt(r.get('mmd2'))} | {p} | {fmt(nll.get('nll'), 5)} | {fmt(nll.get('sem'))} | "
                f"{fmt(nll.get('ess_median'))} | {nll.get('proposal', 'n/a')} | {fmt(ais.get('nll'), 5)} | "
                f"{fmt(ais.get('sem'))} | "
                + (f"{diff['mean']:+.1f} +- {diff['sem']:.1f}" if diff else "")
                + f" | {fmt(nll.get('nll_on_ais_points'), 5)} | {r['seconds']:.0f} | {r['iterations']} |"
            )
        ind = ds.get("independent_pixels")
        if ind:
            lines.append(
                f"| independent pixels (training marginals; reference) | {fmt(ind['mmd2'])} | | "
                f"{fmt(ind['nll'], 5)} (exact) | {fmt(ind['nll_sem'])} | | | "
                f"{fmt(ind.get('nll_ais_points'), 5)} (exact) | | | | | |"
            )
        if ds.get("ais_points"):
            lines += [
                "",
                f"AIS: the first {ds['ais_points']} test images, {exp['ais_chains']} chains per image, "
                f"{exp['ais_temperatures']} temperatures, single-site Gibbs sweeps over the binary latents "
                "(`wakesleep.eval.ais_log_likelihood`), the same seed for every model. Like importance sampling "
                "it is a stochastic lower bound on log p(x), so of two NLLs on the same images the smaller is the "
                f"tighter. The paired column is the mean over the AIS images of {cand}'s AIS NLL minus the row's "
                f"(+- its standard error); positive: the row's model gives the test images the higher likelihood.",
            ]
        lines += ["", f"![samples]({ds['name']}_samples.png)", ""]
    if results.get("skipped"):
        lines += [f"Skipped: {'; '.join(results['skipped'])}.", ""]
    lines += [
        "Paper (MNIST): the test preferred DDC-HM over VIMCO with p < 1e-20 (MMD 6e-4 vs 2e-3); VIMCO's NLL "
        "90.97 nats.",
        "",
    ]
    if results["quick"]:
        lines += [
            "**Quick run**: a small subset of the images, few iterations, fewer sleep samples, few MMD samples "
            f"and K = {exp['nll_k']} importance samples for the NLL on {exp['nll_points']} test images (see "
            "`config.yaml`, `experiment.quick`); the numbers show the pipeline works, not the paper's "
            "result.",
            "",
        ]
    lines += [
        "Files: `results.json` (all numbers), `config.yaml`, one run directory per data set and algorithm "
        "(`<dataset>/<label>/`: config.yaml, metrics.jsonl, model.safetensors, done.json).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------------------
def _validate(config: dict[str, Any]) -> list[str]:
    exp = config["experiment"]
    ds = exp["datasets"]
    if isinstance(ds, str):
        ds = [ds]
    if not isinstance(ds, list) or not ds or any(d not in ("fashion_mnist", "mnist") for d in ds):
        raise WakesleepError(f"config: experiment.datasets must be a list of fashion_mnist, mnist; got {ds!r}")
    for key, lo in (
        ("mmd_samples", 2),
        ("nll_k", 1),
        ("nll_points", 1),
        ("proposal_steps", 0),
        ("ais_points", 0),
        ("ais_chains", 1),
        ("ais_temperatures", 1),
    ):
        positive_int(exp, key, lo)
    if config["data"].get("source") not in ("fashion_mnist", "mnist"):
        raise WakesleepError("config: data.source must be fashion_mnist or mnist for experiment sbn")
    return ds


def _data_spec(config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``data:`` section for data set ``name``, or None when MNIST's files are not available."""
    spec = copy.deepcopy(config["data"])
    if name == spec["source"]:
        return spec
    spec["source"] = name
    spec.pop("root", None)
    if name == "mnist":
        root = config["experiment"].get("mnist_root")
        if not root or not Path(str(root)).expanduser().is_dir():
            return None
        spec["root"] = str(Path(str(root)).expanduser())
    return spec


def run(
    config: dict[str, Any], out_dir: Path, progress: bool | None = None, runner: EntryRunner | None = None
) -> dict[str, Any]:
    """Run the SBN experiment described by a resolved config, writing into ``out_dir``.

    ``runner`` trains each entry (or, continuing an interrupted run, reloads the finished ones together with
    their saved MMD and NLL); default: a fresh :class:`~wakesleep.experiments._entries.EntryRunner`.
    """
    from wakesleep.data import load_dataset
    from wakesleep.eval import median_bandwidth, plot_samples, relative_mmd_test
    from wakesleep.train import apply_threads, build_algorithm_from_config, build_model_from_config

    exp = config["experiment"]
    names = _validate(config)
    apply_threads(config)
    runner = runner if runner is not None else EntryRunner(progress=progress)
    entries = algorithm_entries(config, "experiment sbn")
    cand = exp["candidate"]
    if cand not in entries:
        raise WakesleepError(f"config: experiment.candidate {cand!r} is not a label of experiment.algorithms")
    for cfg in entries.values():  # fail early on a bad option, before any training
        build_algorithm_from_config(cfg, build_model_from_config(cfg))

    t_start = time.perf_counter()
    datasets, skipped = [], []
    for ds_name in names:
        spec = _data_spec(config, ds_name)
        if spec is None:
            skipped.append("mnist (no experiment.mnist_root folder with its IDX files)")
            continue
        dataset = load_dataset(spec, 784, dtype=torch.float32)
        if dataset.test is None:
            raise WakesleepError(f"experiment sbn: {ds_name} has no test set")
        test = dataset.test.double()
        n_mmd = min(int(exp["mmd_samples"]), test.shape[0])
        ref = test[:n_mmd]
        bw = float(median_bandwidth(ref))
        ds_dir = out_dir / ds_name
        ds_dir.mkdir(exist_ok=True)  # exists when resuming
        entry: dict[str, Any] = {
            "name": ds_name,
            "data": dataset.describe(),
            "n_train": int(dataset.train.shape[0]),
            "n_test": int(test.shape[0]),
            "n_mmd": n_mmd,
            "bandwidth": bw,
            "nll_points": min(int(exp["nll_points"]), test.shape[0]),
            "algorithms": {},
            "relative_tests": {},
        }
        ais_x = test[: min(int(exp["ais_points"]), test.shape[0])]
        ais_settings = {"chains": int(exp["ais_chains"]), "temperatures": int(exp["ais_temperatures"])}
        entry["ais_points"] = int(ais_x.shape[0])
        entry["independent_pixels"] = independent_pixels(
            dataset.train, test, n_mmd, entry["nll_points"], bw, ais_points=entry["ais_points"]
        )
        samples: dict[str, torch.Tensor] = {}
        for label, cfg in entries.items():
            run_cfg = copy.deepcopy(cfg)
            run_cfg["data"] = spec
            e = runner.run(run_cfg, ds_dir / label, dataset)
            s = draw_samples(e.model, n_mmd, seed=20_000)  # cheap and seeded: drawn again on resuming
            samples[label] = s
            if e.evaluation is None:  # MMD^2 and NLL of a finished entry come from its done.json
                n_fit = min(dataset.train.shape[0], 10_000)
                nll = nll_estimate(
                    e.model,
                    e.algorithm,
                    dataset.draw_train()[:n_fit],
                    test[: entry["nll_points"]],
                    int(exp["nll_k"]),
                    int(exp["proposal_steps"]),
                )
                e.save_evaluation({"mmd2": mmd_to(ref, s, bw), "nll": nll})
            ais = ais_nll_cached(e, ais_x, ais_settings, seed=30_000, finite=True)
            evaluation = {**e.evaluation, "ais_nll": ais}
            nll = dict(evaluation.get("nll") or {})
            if ais is not None and len(nll.get("log_px", ())) >= ais_x.shape[0]:  # runs before AIS did not save it
                nll["nll_on_ais_points"] = -sum(nll["log_px"][: ais_x.shape[0]]) / ais_x.shape[0]
                evaluation["nll"] = nll
            entry["algorithms"][label] = {**e.info, **evaluation}
        for label in entries:
            if label == cand:
                continue
            rel = relative_mmd_test(ref, samples[label], samples[cand], bandwidth=bw)
            algos = entry["algorithms"]
            # candidate minus this algorithm, on the same images
            diff = paired_nll_difference(algos[cand].get("ais_nll"), algos[label].get("ais_nll"))
            entry["relative_tests"][label] = {
                "ais_nll_difference": diff,
                "y": label,
                "z": cand,
                "mmd2_y": float(rel.mmd_xy),
                "mmd2_z": float(rel.mmd_xz),
                "p_value": float(rel.p_value),
                "log10_p_value": float(rel.log10_p_value),
                "statistic": float(rel.statistic),
            }
        plot_samples(
            {k: v.numpy() for k, v in samples.items()},
            out_dir / f"{ds_name}_samples.png",
            data=ref.numpy(),
            image_shape=(28, 28),
        )
        datasets.append(entry)

    seconds = time.perf_counter() - t_start
    summary = "; ".join(
        f"{d['name']}: "
        + ", ".join(
            f"{k} MMD^2 {fmt(v['mmd2'])} NLL {fmt(v['nll']['nll'], 4)}"
            + (f" (AIS {fmt(v['ais_nll']['nll'], 4)})" if v.get("ais_nll") else "")
            for k, v in d["algorithms"].items()
        )
        for d in datasets
    )
    results = {
        "experiment": "sbn",
        "quick": bool(exp.get("quick_run", False)),
        "seconds": seconds,
        "summary": summary,
        "skipped": skipped,
        "datasets": datasets,
        "config": config,
    }
    wio.save_json(out_dir / "results.json", results)
    wio.write_text(out_dir / "report.md", _report(results))
    wio.write_text(out_dir / "config.yaml", dump_config(config))
    return results

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from wakesleep.errors import WakesleepError
from wakesleep.eval.compare import draw_samples, independent_pixels, mmd_to, nll_estimate, paired_nll_difference
from wakesleep.experiments.base import Experiment, ExperimentContext, fmt, fmt_p, table
from wakesleep.experiments.entries import ais_nll_cached, algorithm_entries, algorithm_labels, check_buildable
from wakesleep.schema import option

DATASETS = ("fashion_mnist", "mnist")


@dataclass(frozen=True)
class Options:
    """The ``experiment:`` section (values: ``configs/sbn.yaml``)."""

    datasets: list[Literal["fashion_mnist", "mnist"]] | str = option(doc="mnist runs only when mnist_root is set")
    mnist_root: str | None = option(doc="folder with MNIST's four IDX files")
    algorithms: list[str | dict] | str = option(doc="names, or mappings {name, label, options...}")
    candidate: str = option(doc="z of every relative test; every other algorithm is a y")
    algorithm_options: dict = option(doc="name -> options, for plain-name entries other than algorithm.name")
    train_options: dict = option(doc="label -> train settings for that entry only")
    mmd_samples: int = option(minimum=2, doc="test images (reference) and model samples in the relative MMD tests")
    nll_k: int = option(minimum=1, doc="importance samples per test image")
    nll_points: int = option(minimum=1, doc="test images in the NLL estimate")
    proposal_steps: int = option(minimum=0, doc="Adam steps of the evaluation-only proposal")
    ais_points: int = option(minimum=0, doc="the first test images also scored by AIS (0: none)")
    ais_chains: int = option(minimum=1, doc="AIS chains per image")
    ais_temperatures: int = option(minimum=1, doc="AIS intermediate distributions")

    def validate(self, prefix: str) -> None:
        """Known data sets; the candidate among the entries."""
        if not self.names() or any(d not in DATASETS for d in self.names()):
            raise WakesleepError(f"{prefix}.datasets must be a list of fashion_mnist, mnist; got {self.datasets!r}")
        if self.candidate not in algorithm_labels(self.algorithms):
            raise WakesleepError(f"{prefix}.candidate {self.candidate!r} is not a label of {prefix}.algorithms")

    def names(self) -> list[str]:
        """The data sets, as a list."""
        return [self.datasets] if isinstance(self.datasets, str) else list(self.datasets)


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------
def _rows(ds: dict[str, Any], cand: str) -> list[list[Any]]:
    rows = []
    for label, r in ds["algorithms"].items():
        rel = ds["relative_tests"].get(label)
        p = fmt_p(rel["log10_p_value"]) if rel else ("(candidate)" if label == cand else "n/a")
        nll, ais = r.get("nll") or {}, r.get("ais_nll") or {}
        diff = (rel or {}).get("ais_nll_difference")
        rows.append(
            [
                label,
                fmt(r.get("mmd2")),
                p,
                fmt(nll.get("nll"), 5),
                fmt(nll.get("sem")),
                fmt(nll.get("ess_median")),
                nll.get("proposal", "n/a"),
                fmt(ais.get("nll"), 5),
                fmt(ais.get("sem")),
                f"{diff['mean']:+.1f} +- {diff['sem']:.1f}" if diff else "",
                fmt(nll.get("nll_on_ais_points"), 5),
                f"{r['seconds']:.0f}",
                r["iterations"],
            ]
        )
    ind = ds.get("independent_pixels")
    if ind:
        nll, nll_ais = f"{fmt(ind['nll'], 5)} (exact)", f"{fmt(ind.get('nll_ais_points'), 5)} (exact)"
        row = ["independent pixels (training marginals; reference)", fmt(ind["mmd2"]), "", nll, fmt(ind["nll_sem"])]
        rows.append([*row, "", "", nll_ais, "", "", "", "", ""])
    return rows


def report(results: dict[str, Any]) -> str:
    """The text of report.md."""
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
    header = ["algorithm", "MMD^2", f"p-value (y = row, z = {cand})", "NLL (nats)", "+-", "ESS median", "proposal"]
    header += ["AIS NLL", "+-", f"AIS NLL, {cand} minus row (paired)", "NLL (importance sampling) on the AIS images"]
    header += ["train s", "iterations"]
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
            *table(header, _rows(ds, cand)),
        ]
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


def _relative_test(rel: Any, y: str, z: str, diff: dict[str, float] | None) -> dict[str, Any]:
    return {
        "ais_nll_difference": diff,
        "y": y,
        "z": z,
        "mmd2_y": float(rel.mmd_xy),
        "mmd2_z": float(rel.mmd_xz),
        "p_value": float(rel.p_value),
        "log10_p_value": float(rel.log10_p_value),
        "statistic": float(rel.statistic),
    }


class Sbn(Experiment):
    """DDC-HM against VIMCO, RWS and wake-sleep on a sigmoid belief network of binarised images (resumable)."""

    name = "sbn"
    Options = Options
    resumable = True

    def check(self, config: dict[str, Any], options: Options) -> None:
        """The data must be one of the two image sets."""
        if config["data"].get("source") not in DATASETS:
            raise WakesleepError("config: data.source must be fashion_mnist or mnist for experiment sbn")

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Train every entry per data set (or reload it with its saved evaluation) and compare."""
        from wakesleep.data import load_dataset
        from wakesleep.eval import median_bandwidth, plot_samples, relative_mmd_test

        exp, config = ctx.options, ctx.config
        entries = algorithm_entries(config, "experiment sbn")
        cand = exp.candidate
        check_buildable(entries.values())  # fail early on a bad option, before any training
        datasets, skipped = [], []
        for ds_name in exp.names():
            spec = _data_spec(config, ds_name)
            if spec is None:
                skipped.append("mnist (no experiment.mnist_root folder with its IDX files)")
                continue
            dataset = load_dataset(spec, 784, dtype=torch.float32)
            if dataset.test is None:
                raise WakesleepError(f"experiment sbn: {ds_name} has no test set")
            test = dataset.test.double()
            n_mmd = min(exp.mmd_samples, test.shape[0])
            ref = test[:n_mmd]
            bw = float(median_bandwidth(ref))
            (ctx.out_dir / ds_name).mkdir(exist_ok=True)  # exists when resuming
            entry: dict[str, Any] = {
                "name": ds_name,
                "data": dataset.describe(),
                "n_train": int(dataset.train.shape[0]),
                "n_test": int(test.shape[0]),
                "n_mmd": n_mmd,
                "bandwidth": bw,
                "nll_points": min(exp.nll_points, test.shape[0]),
                "algorithms": {},
                "relative_tests": {},
            }
            ais_x = test[: min(exp.ais_points, test.shape[0])]
            ais_settings = {"chains": exp.ais_chains, "temperatures": exp.ais_temperatures}
            entry["ais_points"] = int(ais_x.shape[0])
            entry["independent_pixels"] = independent_pixels(
                dataset.train, test, n_mmd, entry["nll_points"], bw, ais_points=entry["ais_points"]
            )
            samples: dict[str, torch.Tensor] = {}
            for label, cfg in entries.items():
                run_cfg = copy.deepcopy(cfg)
                run_cfg["data"] = spec
                e = ctx.train(run_cfg, f"{ds_name}/{label}", data=dataset)
                s = draw_samples(e.model, n_mmd, seed=20_000)  # cheap and seeded: drawn again on resuming
                samples[label] = s
                if e.evaluation is None:  # MMD^2 and NLL of a finished entry come from its done.json
                    n_fit = min(dataset.train.shape[0], 10_000)
                    train_x, test_x = dataset.draw_train()[:n_fit], test[: entry["nll_points"]]
                    nll = nll_estimate(e.model, e.algorithm, train_x, test_x, exp.nll_k, exp.proposal_steps)
                    e.save_evaluation({"mmd2": mmd_to(ref, s, bw), "nll": nll})
                ais = ais_nll_cached(e, ais_x, ais_settings, seed=30_000, finite=True)
                evaluation = {**e.evaluation, "ais_nll": ais}
                nll = dict(evaluation.get("nll") or {})
                if ais is not None and len(nll.get("log_px", ())) >= ais_x.shape[0]:  # older runs did not save it
                    nll["nll_on_ais_points"] = -sum(nll["log_px"][: ais_x.shape[0]]) / ais_x.shape[0]
                    evaluation["nll"] = nll
                entry["algorithms"][label] = {**e.info, **evaluation}
            algos = entry["algorithms"]
            for label in entries:
                if label == cand:
                    continue
                rel = relative_mmd_test(ref, samples[label], samples[cand], bandwidth=bw)
                # candidate minus this algorithm, on the same images
                diff = paired_nll_difference(algos[cand].get("ais_nll"), algos[label].get("ais_nll"))
                entry["relative_tests"][label] = _relative_test(rel, label, cand, diff)
            plot_samples(
                {k: v.numpy() for k, v in samples.items()},
                ctx.out_dir / f"{ds_name}_samples.png",
                data=ref.numpy(),
                image_shape=(28, 28),
            )
            datasets.append(entry)

        summary = "; ".join(
            f"{d['name']}: "
            + ", ".join(
                f"{k} MMD^2 {fmt(v['mmd2'])} NLL {fmt(v['nll']['nll'], 4)}"
                + (f" (AIS {fmt(v['ais_nll']['nll'], 4)})" if v.get("ais_nll") else "")
                for k, v in d["algorithms"].items()
            )
            for d in datasets
        )
        return {"seconds": ctx.seconds(), "summary": summary, "skipped": skipped, "datasets": datasets}

    report = staticmethod(report)


EXPERIMENT = Sbn()

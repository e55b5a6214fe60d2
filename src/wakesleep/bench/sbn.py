"""The ``sbn`` benchmark case: the entries of the SBN experiment, checked, and one of them trained and measured.

:func:`entry_specs` turns the experiment config (``configs/sbn.yaml`` plus the settings' overrides) into one
:class:`~wakesleep.spec.RunSpec` per algorithm label; :func:`check_inputs` builds every entry's model and
algorithm once and loads the data, so that a mistake fails before anything is written; :func:`run_one` trains
one entry through :mod:`wakesleep.runs` and measures it (see :mod:`wakesleep.bench`).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from wakesleep import runs
from wakesleep.bench.flops import iteration_flops, matmul_rate, sync
from wakesleep.bench.settings import BenchSettings, setting_error
from wakesleep.spec import RunSpec

__all__ = ["bench_config", "check_inputs", "entry_specs", "independent_pixels_row", "run_one"]

#: the observation dimension of the SBN (28 x 28 images)
OBS_DIM = 784


def bench_config(settings: BenchSettings) -> dict[str, Any]:
    """The resolved SBN experiment config with the settings' overrides (``n``, ``device``, ... included).

    Parameters
    ----------
    settings : BenchSettings

    Returns
    -------
    dict
        As :func:`wakesleep.experiments.experiment_config` returns it.
    """
    from wakesleep.experiments import experiment_config

    return experiment_config("sbn", settings.config, False, settings.config_overrides())


def entry_specs(settings: BenchSettings, config: dict[str, Any] | None = None) -> dict[str, RunSpec]:
    """``{label: RunSpec}`` of the entries to run: ``settings.algorithms`` (in that order), or every entry.

    Parameters
    ----------
    settings : BenchSettings
    config : dict, optional
        :func:`bench_config`'s result, if already computed.

    Raises
    ------
    WakesleepError
        A bad config or override (naming the key), or a label that is not one of ``experiment.algorithms``
        (``exc.setting == "algorithms"``).
    """
    from wakesleep.experiments.entries import algorithm_entries

    config = bench_config(settings) if config is None else config
    entries = algorithm_entries(config, "bench sbn")
    labels = list(entries) if settings.algorithms is None else list(settings.algorithms)
    for label in labels:
        if label not in entries:
            raise setting_error(
                "algorithms", f"{label!r} is not a label of experiment.algorithms ({', '.join(entries)})"
            )
    return {label: runs.as_spec(entries[label]) for label in labels}


def check_inputs(settings: BenchSettings) -> tuple[dict[str, RunSpec], Any]:
    """Validate everything a benchmark needs before it writes anything.

    The settings, the config and overrides, every entry's device, model and algorithm (built once), and the
    data (loaded in float64, checked against the observation layer: the same data set the independent-pixels
    reference of :func:`independent_pixels_row` is computed on).

    Parameters
    ----------
    settings : BenchSettings

    Returns
    -------
    (dict, wakesleep.data.DataSet)
        :func:`entry_specs`'s result and the data set.

    Raises
    ------
    WakesleepError
        One line naming what is wrong (a missing data file included).
    """
    from wakesleep.data import load_dataset
    from wakesleep.experiments.entries import check_buildable
    from wakesleep.models.build import observation_family

    settings.validate()
    specs = entry_specs(settings)
    check_buildable(specs.values())
    first = next(iter(specs.values()))
    family = observation_family(runs.build_model(first))
    dataset = load_dataset(first.data.to_dict(), OBS_DIM, dtype=torch.float64, family=family)
    return specs, dataset


def run_one(settings: BenchSettings, label: str, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train entry ``label`` for ``settings.epochs`` epochs and measure it (call it in a fresh process).

    Parameters
    ----------
    settings : BenchSettings
    label : str
        A label of ``experiment.algorithms``.
    out_dir : path, optional
        Where ``<label>_samples.png`` (64 final samples) is written; nothing is written when None.

    Returns
    -------
    dict
        The row of ``bench.json``: times (wall and CPU, training only), memory, FLOPs per iteration and the
        matrix-multiply rates, the final MMD^2, NLL (and AIS NLL), and the MMD^2 learning curve.
    """
    from wakesleep.eval import median_bandwidth
    from wakesleep.eval.compare import draw_samples, mmd_to, model_ais_nll, nll_estimate
    from wakesleep.training import Trainer

    settings.validate()
    spec = entry_specs(dataclasses.replace(settings, algorithms=(label,)))[label]
    t = spec.train
    with runs.threads(t):
        run = runs.prepare(spec)
        model, algo, dataset = run.model, run.algorithm, run.data
        test = dataset.test.double().cpu()
        n_curve = min(settings.curve_samples, test.shape[0])
        bw = float(median_bandwidth(test[: min(settings.mmd_samples, test.shape[0])]))
        n_train = dataset.train.shape[0]
        per_epoch = -(-n_train // t.batch_size)
        total = per_epoch * settings.epochs
        eval_every = max(1, total // max(settings.evals, 1))
        curve: list[dict[str, float]] = []
        spent = {"wall": 0.0, "cpu": 0.0}
        t_wall0, t_cpu0 = [0.0], [0.0]

        def callback(trainer: Trainer, record: dict) -> None:
            w0, c0 = time.perf_counter(), time.process_time()
            if record["step"] == 0:  # training time counts from the first record (after the Trainer's set-up)
                t_wall0[0], t_cpu0[0] = w0, c0
            s = draw_samples(model, n_curve, seed=30_000 + record["step"])
            m = mmd_to(test[:n_curve], s, bw)
            curve.append(
                {
                    "step": record["step"],
                    "epoch": record["epoch"],
                    "train_seconds": (w0 - t_wall0[0]) - spent["wall"],
                    "train_cpu_seconds": (c0 - t_cpu0[0]) - spent["cpu"],
                    "mmd2": m,
                }
            )
            spent["wall"] += time.perf_counter() - w0
            spent["cpu"] += time.process_time() - c0

        trainer = runs.make_trainer(  # the benchmark runs whole epochs and writes no checkpoints
            algo,
            t,
            epochs=settings.epochs,
            max_iters=None,
            checkpoint_every=0,
            log_every=eval_every,
            progress=False,
            monitor_samples=0,
            callback=callback,
        )
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sync(model.device)
        t_wall0[0], t_cpu0[0] = time.perf_counter(), time.process_time()
        trainer.fit(dataset)
        sync(model.device)
        wall = time.perf_counter() - t_wall0[0] - spent["wall"]
        cpu = time.process_time() - t_cpu0[0] - spent["cpu"]
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda" else None

        n_mmd = min(settings.mmd_samples, test.shape[0])
        final_samples = draw_samples(model, n_mmd, seed=40_000)
        final_mmd = mmd_to(test[:n_mmd], final_samples, bw)
        if out_dir is not None:
            from wakesleep.eval.plots import plot_image_grid

            plot_image_grid(final_samples[:64], Path(out_dir) / f"{label}_samples.png", (28, 28), n=64, title=label)
        n_fit = min(n_train, 10_000)
        nll = nll_estimate(
            model,
            algo,
            dataset.draw_train()[:n_fit],
            test[: settings.nll_points],
            settings.nll_k,
            settings.proposal_steps,
        )
        ais = None
        if settings.ais_points > 0:  # the same images, chains and seed for every algorithm: paired differences
            ais_settings = {"chains": settings.ais_chains, "temperatures": settings.ais_temperatures}
            ais = model_ais_nll(model, test[: settings.ais_points].to(model.device), ais_settings, seed=30_000)
        x = dataset.draw_train()[: t.batch_size]
        flops = iteration_flops(algo, x, int(t.sleep_every))
        rate = matmul_rate(model.dtype, str(model.device))
        cpu_rate = matmul_rate(model.dtype, str(model.device), clock=time.process_time)  # FLOP per CPU second
        precision = t.precision
        # the rate of products in the lowered dtype (train.precision): the limit for the share of the work lowered
        low_rate = None if precision == "float32" else matmul_rate(getattr(torch, precision), str(model.device))
        threads = torch.get_num_threads()
    sec_iter = wall / max(trainer.n_iter_, 1)
    cpu_iter = cpu / max(trainer.n_iter_, 1)
    return {
        "label": label,
        "algorithm": spec.algorithm.name,
        "options": spec.algorithm.to_dict(),
        "sleep_every": int(t.sleep_every),
        "epochs": settings.epochs,
        "iterations": trainer.n_iter_,
        "iterations_per_epoch": per_epoch,
        "n_train": int(n_train),
        "batch_size": t.batch_size,
        "train_seconds": wall,
        "train_cpu_seconds": cpu,
        "seconds_per_epoch": wall / settings.epochs,
        "cpu_seconds_per_epoch": cpu / settings.epochs,
        "seconds_per_iteration": sec_iter,
        "peak_rss_mb": peak_rss,
        "rss_before_training_mb": rss0,
        "peak_cuda_mb": peak_cuda,
        "gflop_per_iteration": flops["flops"] / 1e9,
        "gflop_matmul": flops["matmul_flops"] / 1e9,
        "gflop_solver": flops["solver_flops"] / 1e9,
        "gflop_per_epoch": flops["flops"] * per_epoch / 1e9,
        "matmul_gflops": rate / 1e9,
        "achieved_gflops": flops["flops"] / sec_iter / 1e9,
        "fraction_of_matmul_rate": flops["flops"] / sec_iter / rate,
        "cpu_seconds_per_iteration": cpu_iter,
        "matmul_gflops_per_cpu_second": cpu_rate / 1e9,
        "cpu_fraction_of_matmul_rate": flops["flops"] / cpu_iter / cpu_rate if cpu_iter > 0 else None,
        "final_mmd2": final_mmd,
        "mmd_samples": n_mmd,
        "bandwidth": bw,
        "nll": nll,
        "ais_nll": ais,
        "curve": curve,
        "threads": threads,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "precision": precision,
        "matmul_gflops_lowered": None if low_rate is None else low_rate / 1e9,
    }


def independent_pixels_row(settings: BenchSettings, dataset: Any, row: dict[str, Any]) -> dict[str, float] | None:
    """MMD^2 and exact NLL of independent pixels with the training marginals, with the models' kernel.

    Parameters
    ----------
    settings : BenchSettings
    dataset : wakesleep.data.DataSet
        :func:`check_inputs`'s data set (float64).
    row : dict
        The row of a successful entry (its ``mmd_samples`` and ``bandwidth`` are used); empty: none succeeded.

    Returns
    -------
    dict or None
        None when ``row`` is empty.
    """
    if not row:
        return None
    from wakesleep.eval.compare import independent_pixels

    test = dataset.test.double().cpu()
    return independent_pixels(
        dataset.draw_train().cpu(),
        test,
        row["mmd_samples"],
        settings.nll_points,
        row["bandwidth"],
        ais_points=settings.ais_points,
    )

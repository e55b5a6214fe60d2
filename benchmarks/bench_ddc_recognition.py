"""DDC-HM's recognition on the sigmoid belief network 784-200-200-200: the closed-form eq. 8 read-out against
the deep recognition (``recognition: deep``) and the exact sufficient statistics (``extra_stats: sufficient``),
with VIMCO K=50 for reference (issue 16; docs/ddc_hm.md, "Deep recognition").

Every entry trains on the first ``--n`` Fashion-MNIST training images (binarised with the fixed seed 0) for
``--epochs`` epochs with ``configs/sbn.yaml``'s model, algorithm and training settings (DDC-HM with a sleep phase
every 20 wake steps), then is scored by

* :func:`wakesleep.eval.diagnose.diagnose` on the first ``--points`` training images: wake-gradient cosine per
  layer against the mean of ``--repeats`` independent AIS references (``--chains`` chains, ``--temperatures``
  temperatures; their agreement printed), posterior-mean error against AIS with the constant guess for scale,
  and the fraction of invalid expectations (Bernoulli means outside [0, 1]);
* the AIS NLL of the first ``--nll-points`` test images (``--nll-temperatures`` temperatures;
  :func:`wakesleep.eval.compare.model_ais_nll`, the same seed
  for every entry), and its paired difference with the first entry
  (:func:`wakesleep.eval.compare.paired_nll_difference`).

Runs already in ``--out`` are reused (delete a directory to retrain it). ``--out/results.json`` holds everything.

Usage::

    nice -n 10 python benchmarks/bench_ddc_recognition.py --out /tmp/ddc_rec --epochs 10
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import yaml
from ddc_small_sbn import slow_recognition

from wakesleep import runs
from wakesleep.eval.compare import model_ais_nll, paired_nll_difference
from wakesleep.eval.diagnose import diagnose
from wakesleep.runtime import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]

# DDC-HM as shipped up to session 9 (configs/sbn.yaml has since moved to 10000 sleep samples and the algorithm's
# default to beta: conditional); every DDC-HM entry starts from it, so the entries keep their meaning
SESSION9 = {"sleep_samples": 1000, "beta": "analytic"}

# label -> algorithm settings replacing configs/sbn.yaml's, and train settings
ENTRIES: dict[str, tuple[dict | None, dict]] = {
    "ddc_hm": (SESSION9, {"sleep_every": 20}),
    "ddc_stats": ({**SESSION9, "extra_stats": "sufficient"}, {"sleep_every": 20}),
    "ddc_deep": ({**SESSION9, "recognition": "deep"}, {"sleep_every": 20}),
    "ddc_deep_stats": ({**SESSION9, "recognition": "deep", "extra_stats": "sufficient"}, {"sleep_every": 20}),
    "ddc_cond": ({**SESSION9, "beta": "conditional"}, {"sleep_every": 20}),
    "ddc_cond_n10000": ({"beta": "conditional", "sleep_samples": 10000}, {"sleep_every": 20}),
    "ddc_stats_cond_n10000": (
        {"extra_stats": "sufficient", "beta": "conditional", "sleep_samples": 10000},
        {"sleep_every": 20},
    ),
    "ddc_deep_stats_cond_n10000": (
        {"recognition": "deep", "extra_stats": "sufficient", "beta": "conditional", "sleep_samples": 10000},
        {"sleep_every": 20},
    ),
    # session 16: the read-out's random ReLU layer reads the bottom-up message c(x) W to z1 instead of x; the exact
    # posterior depends on x only through it (recognition_input: message_only)
    # session 17: x and the factorised posterior means of z1 given x (recognition_input: mean_field) in the read-out
    "ddc_stats_cond_n10000_mf": (
        {
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_input": "mean_field",
        },
        {"sleep_every": 20},
    ),
    "ddc_stats_cond_n10000_msg": (
        {
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_input": "message_only",
        },
        {"sleep_every": 20},
    ),
    # and the closed-form read-out with a sleep phase every wake step (Algorithm 1 as printed; 20x the sleep cost)
    "ddc_stats_cond_n10000_every1": (
        {"extra_stats": "sufficient", "beta": "conditional", "sleep_samples": 10000},
        {"sleep_every": 1},
    ),
    # and every 50 / 100 wake steps (a staler recognition and gradient regressions; 2.5x / 5x less sleep)
    "ddc_stats_cond_n10000_every50": (
        {"extra_stats": "sufficient", "beta": "conditional", "sleep_samples": 10000},
        {"sleep_every": 50},
    ),
    "ddc_stats_cond_n10000_every100": (
        {"extra_stats": "sufficient", "beta": "conditional", "sleep_samples": 10000},
        {"sleep_every": 100},
    ),
    # and the read-out refitted only at every 10th sleep phase (every 200 wake steps; samples and gradient regressions
    # every 20): on the small SBN a read-out held fixed for longer pulled the model less towards itself
    "ddc_stats_cond_n10000_recognition_every10": (
        {"extra_stats": "sufficient", "beta": "conditional", "sleep_samples": 10000},
        {"sleep_every": 20},
    ),
    # session 14: the deep recognition trained 20x longer per sleep phase (1000 Adam steps instead of 50). With a
    # sleep phase every 20 wake steps, 10 epochs of 10000 images are 50 phases: 2500 Adam steps in all at 50,
    # against the 150000 with which it nearly matched a perfect recognition on the small SBN of ddc_small_sbn.py
    "ddc_deep_stats_cond_n10000_steps1000": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_steps": 1000,
        },
        {"sleep_every": 20},
    ),
    "ddc_deep_stats_cond_n10000_steps3000": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_steps": 3000,
        },
        {"sleep_every": 20},
    ),
    # session 15: every Adam step of the deep recognition on its own new samples from the model
    # (recognition_fresh), so that more steps cannot overfit one phase's 10000 samples
    "ddc_deep_stats_cond_n10000_fresh1000": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_steps": 1000,
            "recognition_fresh": True,
        },
        {"sleep_every": 20},
    ),
    "ddc_deep_stats_cond_n10000_fresh3000": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_steps": 3000,
            "recognition_fresh": True,
        },
        {"sleep_every": 20},
    ),
    "ddc_deep_stats_cond_n10000_fresh300": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_steps": 300,
            "recognition_fresh": True,
        },
        {"sleep_every": 20},
    ),
    # and the networks' features read out by a closed-form regression on each phase's samples (recognition_calibrate)
    "ddc_deep_stats_cond_n10000_steps1000_cal": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_steps": 1000,
            "recognition_calibrate": "features",
        },
        {"sleep_every": 20},
    ),
    "ddc_deep_stats_cond_n10000_steps1000_calres": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_steps": 1000,
            "recognition_calibrate": "residual",
        },
        {"sleep_every": 20},
    ),
    "ddc_deep_stats_cond_n10000_steps1000_calmean": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_steps": 1000,
            "recognition_calibrate": "mean",
        },
        {"sleep_every": 20},
    ),
    # session 16: as the small SBN trained it (ddc_small_sbn.py, where the deep recognition reached exact ML): a sleep
    # phase every wake step, 50 Adam steps each, calibrated (mean: the cheapest calibration, as good on 10000 images)
    "ddc_deep_stats_cond_n10000_every1_calmean": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_calibrate": "mean",
        },
        {"sleep_every": 1},
    ),
    "ddc_deep_stats_cond_n10000_cal": (
        {
            "recognition": "deep",
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "recognition_calibrate": "features",
        },
        {"sleep_every": 20},
    ),
    "ddc_cond_n10000_m1000": (
        {"beta": "conditional", "sleep_samples": 10000, "recognition_hidden": 1000},
        {"sleep_every": 20},
    ),
    "ddc_cond_n10000_direct": (
        {"beta": "conditional", "sleep_samples": 10000, "recognition": "direct"},
        {"sleep_every": 20},
    ),
    "vimco_k50": ({"name": "vimco", "k": 50, "_replace": True}, {}),
    "rws_k5": ({"name": "rws", "k": 5, "_replace": True}, {}),
    # session 11: the links between latent layers start 3 times stronger (init_std 3 / sqrt(200) instead of
    # 1 / sqrt(200)), so that z2 and z3 say something about z1 from the first step
    "ddc_cond_n10000_init3": ({"beta": "conditional", "sleep_samples": 10000}, {"sleep_every": 20}),
    # and the pixels' link too (init_std 3 / sqrt(200) for x as well)
    "ddc_cond_n10000_init3x": ({"beta": "conditional", "sleep_samples": 10000}, {"sleep_every": 20}),
    "ddc_cond_n10000_adaptive": (
        {"beta": "conditional", "sleep_samples": 10000, "recognition_memory": "adaptive"},
        {"sleep_every": 20},
    ),
    "ddc_cond_n10000_lr2e3": ({"beta": "conditional", "sleep_samples": 10000}, {"sleep_every": 20, "lr": 2e-3}),
    # session 12: learned encoding functions (issue 16 item 4)
    "ddc_cond_n10000_learn": (
        {"beta": "conditional", "sleep_samples": 10000, "learn_features": True},
        {"sleep_every": 20},
    ),
    "ddc_cond_n10000_learn10": (
        {
            "beta": "conditional",
            "sleep_samples": 10000,
            "learn_features": True,
            "feature_phases": 10,
        },
        {"sleep_every": 20},
    ),
    "ddc_cond_n10000_learn_adaptive": (
        {
            "beta": "conditional",
            "sleep_samples": 10000,
            "learn_features": True,
            "recognition_memory": "adaptive",
        },
        {"sleep_every": 20},
    ),
    # session 13: a smaller ridge on the gradient regressions (relative 1e-5 instead of 1e-3)
    "ddc_cond_n10000_gr1e5": (
        {"beta": "conditional", "sleep_samples": 10000, "grad_ridge": 1e-5},
        {"sleep_every": 20},
    ),
    "ddc_cond_n10000_adaptive_gr1e5": (
        {"beta": "conditional", "sleep_samples": 10000, "recognition_memory": "adaptive", "grad_ridge": 1e-5},
        {"sleep_every": 20},
    ),
    "ddc_cond_n10000_auto_ridge": (
        {"beta": "conditional", "sleep_samples": 10000, "grad_ridge": "auto"},
        {"sleep_every": 20},
    ),
    "ddc_cond_n10000_learn_adaptive_auto_ridge": (
        {
            "beta": "conditional",
            "sleep_samples": 10000,
            "learn_features": True,
            "recognition_memory": "adaptive",
            "grad_ridge": "auto",
        },
        {"sleep_every": 20},
    ),
    # twice the sleep samples: N was the largest lever so far (1000 -> 10000: 263.0 -> 252.4 on 10000 images)
    "ddc_cond_n20000": ({"beta": "conditional", "sleep_samples": 20000}, {"sleep_every": 20}),
    "ddc_stats_cond_n10000_learn": (
        {
            "extra_stats": "sufficient",
            "beta": "conditional",
            "sleep_samples": 10000,
            "learn_features": True,
        },
        {"sleep_every": 20},
    ),
}

# label -> refit the read-out only at every k-th sleep phase (ddc_small_sbn.slow_recognition: a diagnostic, not an
# algorithm option)
RECOGNITION_EVERY: dict[str, int] = {"ddc_stats_cond_n10000_recognition_every10": 10}


# label -> changes to configs/sbn.yaml's layers (layer name -> keys), for entries that change the model's start
MODEL_CHANGES: dict[str, dict[str, dict]] = {
    "ddc_cond_n10000_init3": {"z2": {"init_std": 0.2121}, "z1": {"init_std": 0.2121}},
    "ddc_cond_n10000_init3x": {"z2": {"init_std": 0.2121}, "z1": {"init_std": 0.2121}, "x": {"init_std": 0.2121}},
}


def entry_config(label: str, epochs: int, n: int, seed: int, init: Path | None = None) -> dict:
    """The run config of an entry: configs/sbn.yaml's model, algorithm and train settings, changed as listed;
    ``init``: a run directory whose trained weights the model starts from (``model.init``)."""
    base = yaml.safe_load((ROOT / "configs" / "sbn.yaml").read_text())
    algo_changes, train_changes = ENTRIES[label]
    algorithm = copy.deepcopy(base["algorithm"])
    if algo_changes is not None:
        changes = dict(algo_changes)
        algorithm = {} if changes.pop("_replace", False) else algorithm
        algorithm.update(changes)
    train = {**base["train"], "epochs": epochs, "seed": seed, "log_every": 100, "samples": 100, "threads": 1}
    train.update(train_changes)
    train["checkpoint_every"] = 10**9  # only the final checkpoint (the algorithm state diagnose loads)
    data = {"source": "fashion_mnist", "binarize": "fixed-seed0", "n": n}
    model = dict(base["model"])
    layer_changes = MODEL_CHANGES.get(label, {})
    model["layers"] = [{**layer, **layer_changes.get(layer["name"], {})} for layer in model["layers"]]
    if init is not None:
        model["init"] = str(Path(init) / "model.safetensors")
    return {"model": model, "algorithm": algorithm, "train": train, "data": data}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--entries", default=",".join(ENTRIES), help=f"comma-separated, from {', '.join(ENTRIES)}")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=10000, help="training images")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--init", type=Path, default=None, help="start every entry's model from this run's weights")
    ap.add_argument("--points", type=int, default=100, help="training images diagnosed (0: no diagnosis)")
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--temperatures", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nll-points", type=int, default=100, help="first test images scored by AIS")
    ap.add_argument("--nll-temperatures", type=int, default=1000, help="AIS temperatures of the test NLL")
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    labels = [s.strip() for s in args.entries.split(",") if s.strip()]
    test_x = None
    for label in labels:
        run_dir = args.out / label
        cfg = entry_config(label, args.epochs, args.n, args.seed, args.init)
        if not (run_dir / "model.safetensors").exists():
            t0 = time.perf_counter()
            run = runs.prepare(runs.as_spec(cfg))
            if label in RECOGNITION_EVERY:
                slow_recognition(run.algorithm, RECOGNITION_EVERY[label])
            run.fit(run_dir, progress=False)
            results.setdefault(label, {})["train_seconds"] = time.perf_counter() - t0
        row = results.setdefault(label, {})
        row["config"] = cfg
        if "diagnosis" not in row and cfg["algorithm"]["name"] == "ddc_hm" and args.points > 0:
            d = diagnose(
                run_dir, points=args.points, chains=args.chains, temperatures=args.temperatures, repeats=args.repeats
            )
            row["diagnosis"] = d.to_dict()
            print(f"[{label}]", *d.lines(), sep="\n  ")
        if "ais_test" not in row:
            spec, model = runs.load_run(run_dir)
            if test_x is None:
                test_x = runs.load_data(spec, model).test[: args.nll_points]
            settings = {"chains": args.chains, "temperatures": args.nll_temperatures}
            row["ais_test"] = model_ais_nll(model, test_x.to(model.dtype), settings, seed=30_000)
            print(f"[{label}] AIS NLL on {args.nll_points} test images: {row['ais_test']['nll']:.2f}")
        results_path.write_text(json.dumps(results, indent=1))
    ref = results.get(labels[0], {}).get("ais_test")
    head = (
        f"| entry | s/epoch | test AIS NLL | minus {labels[0]}, paired | grad cosine z3 / z2 / z1 / x (refs agree) "
        "| E[z1|x] err (const) | E[z2|x] err (const) | E[z3|x] err (const) | invalid means z1 / z2 / z3 |"
    )
    print(head)
    print("| --- " * 9 + "|")
    for label in labels:
        row = results[label]
        nll = row["ais_test"]
        diff = paired_nll_difference(nll, ref) if label != labels[0] else None  # NLL_label - NLL_first
        secs = row.get("train_seconds")
        cells = [label, f"{secs / args.epochs:.1f}" if secs else "", f"{nll['nll']:.2f} +- {nll['sem']:.2f}"]
        cells.append(f"{diff['mean']:+.2f} +- {diff['sem']:.2f}" if diff else "")
        d = row.get("diagnosis")
        if d:
            lay = d["layers"]
            cells.append(
                " / ".join(
                    f"{lay[k]['cosine']:.2f} ({lay[k]['reference_agreement']:.2f})" for k in ("z3", "z2", "z1", "x")
                )
            )
            post = d["posterior"]
            for k in ("z1", "z2", "z3"):
                cells.append(f"{post[k]['mae']:.3f} ({post[k]['mae_constant_guess']:.3f})")
            cells.append(" / ".join(f"{100 * post[k]['invalid_fraction']:.1f} %" for k in ("z1", "z2", "z3")))
        else:
            cells += [""] * 5
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

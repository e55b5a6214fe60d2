"""Held-out MMD^2 along training on the eq. 13 patch model (docs/RESULTS.md, "Session 8"): does either algorithm
pass through a better model than the one it ends with, so that keeping the best checkpoint would help?

Trains one algorithm entry of ``wakesleep experiment patches`` (``--label``, default ``ddc_hm``) at one
architecture (``--arch D1 D2``) exactly as the experiment would (its config, seeds and training patches; ``--set``
overrides experiment config keys), and every ``--every`` iterations computes MMD^2 between ``--samples`` model
samples and ``--val-points`` held-out patches: test patches after the first ``experiment.mmd_samples``, which the
experiment's relative MMD test uses, so selection on them would not touch the test's reference. Gaussian kernel,
median-heuristic width of the held-out patches. Writes ``--out`` (JSON: the records, the width, the seconds) and
prints one line per record.

Usage::

    python benchmarks/diag_patches_trajectory.py --arch 10 10 --label ddc_hm --out traj_ddc.json
    python benchmarks/diag_patches_trajectory.py --arch 10 10 --label iwae_k50 --out traj_iwae.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from wakesleep.data import load_dataset
from wakesleep.eval import median_bandwidth, mmd
from wakesleep.eval.compare import draw_samples
from wakesleep.experiments import experiment_config
from wakesleep.experiments.entries import algorithm_entries
from wakesleep.experiments.patches import architecture_config
from wakesleep.runs import train_from_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs=2, default=[10, 10], metavar=("D1", "D2"))
    p.add_argument("--label", default="ddc_hm", help="a label of experiment.algorithms")
    p.add_argument("--iters", type=int, default=3000, help="training iterations (Table 1: 3000)")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--val-points", type=int, default=2000)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    config = experiment_config("patches", None, False, ["train.threads=1", *args.overrides])
    n_ref = int(config["experiment"]["mmd_samples"])
    config["data"]["n_test"] = n_ref + args.val_points
    ds = load_dataset(dict(config["data"]), int(config["data"].get("size", 16)) ** 2, dtype=torch.float64)
    val = ds.test[n_ref:].double()
    bw = float(median_bandwidth(val))
    cfg = algorithm_entries(architecture_config(config, *args.arch), "diag_patches_trajectory")[args.label]
    cfg["train"].update(log_every=args.every, max_iters=args.iters, epochs=10**6)
    records = []

    def callback(trainer, rec) -> None:
        s = draw_samples(trainer.model, args.samples, seed=123)
        v = float(mmd(val, s, bandwidth=bw)) if torch.isfinite(s).all() else float("nan")
        records.append({"step": rec["step"], "val_mmd2": v, "cov_gap": rec.get("cov_gap")})
        print(json.dumps(records[-1]), flush=True)

    t0 = time.perf_counter()
    train_from_config(cfg, None, False, ds.train.to(dtype=getattr(torch, cfg["train"]["dtype"])), callback)
    out = {"arch": args.arch, "label": args.label, "bandwidth": bw, "records": records}
    out.update(seconds=time.perf_counter() - t0, config=cfg)
    with open(args.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()

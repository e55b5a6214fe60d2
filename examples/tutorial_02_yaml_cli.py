"""
Your own data and model in YAML, from the command line
======================================================

Most runs need no Python at all: the data is a file, the model and the learner are a YAML config, and
``wakesleep train``, ``evaluate`` and ``sample`` do the rest. This tutorial makes a data file of spike counts,
describes a model for it in YAML, and runs the three commands (here through :mod:`subprocess`, so that the page
shows what they print; in a terminal you type the same lines).
"""

# %%
# The data: an ``.npy`` file
# --------------------------
# 20 neurons whose firing rates are driven by 2 hidden factors, one row per trial. Any ``[N, D]`` array in
# an ``.npz``, ``.npy`` or ``.csv`` file will do; the observation family's support is checked when the run
# starts (here: non-negative integers).
import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np

SMALL = os.environ.get("WAKESLEEP_TUTORIAL_SMALL") == "1"
N = 1000 if SMALL else 5000
EPOCHS = 1 if SMALL else 20
SLEEP_SAMPLES = 300 if SMALL else 500
work = Path(tempfile.mkdtemp(prefix="wakesleep_tutorial_02_"))

rng = np.random.default_rng(0)
factors = rng.standard_normal((N, 2))
loadings = rng.normal(0.0, 0.6, size=(2, 20))
rates = np.logaddexp(0.0, 1.0 + 2.0 * factors @ loadings)  # softplus
counts = rng.poisson(rates).astype(np.float64)
np.save(work / "counts.npy", counts)
print("counts.npy:", counts.shape, "mean count", counts.mean().round(2), "max", int(counts.max()))

# %%
# The model and the learner: a YAML file
# --------------------------------------
# Layers are listed top first: two Gaussian factors, then 20 Poisson counts whose rates are the softplus of an
# affine function of the factors (a Poisson rate must be positive, so ``link: linear`` would be refused). The
# learner is the DDC Helmholtz machine. Relative paths are taken relative to the config file.
config = textwrap.dedent(
    f"""\
    model:
      layers:
        - {{name: z, family: gaussian, dim: 2}}
        - {{name: x, family: poisson, dim: 20, link: softplus_linear}}
    algorithm: {{name: ddc_hm, sleep_samples: {SLEEP_SAMPLES}, features: 100, recognition_hidden: 100}}
    train: {{epochs: {EPOCHS}, batch_size: 100, lr: 3.0e-3, seed: 0, log_every: 50, threads: 1}}
    data: {{source: file, path: counts.npy}}
    """
)
(work / "counts.yaml").write_text(config)
print(config)

# %%
# ``wakesleep train``
# -------------------
# The command-line program is installed with the package (``wakesleep``; ``python -m wakesleep`` is the same).
exe = Path(sys.executable).with_name("wakesleep")
WAKESLEEP = [str(exe)] if exe.exists() else [sys.executable, "-m", "wakesleep"]


def wakesleep(*args: str, check: bool = True) -> int:
    """Run ``wakesleep ARGS`` in the work directory and print the command and what it printed."""
    print("$ wakesleep " + " ".join(shlex.quote(a) for a in args))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread is fastest for models this small
    done = subprocess.run([*WAKESLEEP, *args], cwd=work, env=env, capture_output=True, text=True)
    print((done.stdout + done.stderr).strip() or "(no output)")
    print(f"[exit status {done.returncode}]\n")
    if check and done.returncode != 0:
        raise RuntimeError(f"wakesleep {args[0]} failed")
    return done.returncode


wakesleep("train", "--config", "counts.yaml", "--out", "runs/counts", "--no-progress")
print(sorted(p.name for p in (work / "runs/counts").iterdir()))

# %%
# ``metrics.jsonl`` has one line per logged step; ``mean_gap`` and ``cov_gap`` are the relative gaps between
# the first two moments of the data and of model samples, a cheap progress measure.
records = [json.loads(line) for line in (work / "runs/counts/metrics.jsonl").read_text().splitlines()]
shown = records[:: max(1, len(records) // 6)]
for r in shown + ([records[-1]] if records[-1] is not shown[-1] else []):
    print(f"step {r['step']:5d}  mean_gap {r['mean_gap']:.3f}  cov_gap {r['cov_gap']:.3f}")

# %%
# Options can be overridden without editing the file (``--set key=value``, the value read as YAML). A mistake
# in the config or in an override is one line naming the field, exit status 2, and nothing written (a value
# out of range, ``--set train.lr=-1``, reads ``error: config: train.lr must be a positive number``):
status = wakesleep("train", "--config", "counts.yaml", "--out", "runs/typo", "--set", "train.lrr=1e-3", check=False)

# %%
# ``wakesleep evaluate``
# ----------------------
# MMD^2 between model samples and the data, the negative log-likelihood by importance sampling with a proposal
# fitted for the evaluation, and plots; everything goes to ``eval.json`` and PNG files in the run directory.
wakesleep(
    "evaluate",
    "--run",
    "runs/counts",
    "--metrics",
    "mmd,nll,plots",
    "--n-samples",
    "500" if SMALL else "5000",
    "--nll-points",
    "20" if SMALL else "200",
    "--k",
    "50" if SMALL else "1000",
    "--proposal-steps",
    "20" if SMALL else "500",
)
pngs = sorted((work / "runs/counts").glob("*.png"))
print([p.name for p in pngs])

# %%
# The learning curves that ``evaluate`` drew from ``metrics.jsonl``:
curves = work / "runs/counts/learning_curves.png"
if curves.exists():
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.imshow(mpimg.imread(curves))
    ax.axis("off")

# %%
# ``wakesleep sample``
# --------------------
# Draws from the trained model, with ``--latents`` also the hidden layers, into an ``.npz``:
wakesleep("sample", "--run", "runs/counts", "-n", "2000", "--out", "samples.npz", "--latents", "--seed", "1")
with np.load(work / "samples.npz") as f:
    print({k: f[k].shape for k in f.files})
    x_model = f["x"]
print("data  mean count per neuron:", counts.mean(0)[:6].round(2))
print("model mean count per neuron:", x_model.mean(0)[:6].round(2))

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.scatter(counts.var(0), x_model.var(0))
lim = max(counts.var(0).max(), x_model.var(0).max()) * 1.05
ax.plot([0, lim], [0, lim], "k--", lw=1)
ax.set_xlabel("variance of each neuron's count, data")
ax.set_ylabel("... model samples")
fig.tight_layout()

# %%
# The run directory's ``config.yaml`` is the resolved config, every default spelled out:
# ``wakesleep train --config runs/counts/config.yaml --out runs/again`` repeats the run exactly.
print((work / "runs/counts/config.yaml").read_text())

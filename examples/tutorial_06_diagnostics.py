"""
When a model does not fit: reading the diagnostics
==================================================

A run that ends with samples unlike the data can fail in three places: the gradient estimate is wrong, the
recognition model does not follow the posterior, or the optimisation blew up. This tutorial provokes each
and shows what the library measures and what to change:

1. a DDC-HM run starved of sleep samples and encoding functions, diagnosed with ``wakesleep diagnose``
   (:func:`wakesleep.eval.diagnose.diagnose`): the cosine between its wake gradient and the exact gradient,
   per layer, and how well its recognition matches the exact posterior;
2. the same run with the sizes it needs;
3. a learning rate that makes training diverge: the one-line stop, and ``train.on_divergence: rollback``.
"""

# %%
# A run that learns badly
# -----------------------
# The model is a small sigmoid belief network (3 binary units, then 6, then 16 binary pixels), so the exact
# posterior can be enumerated and the diagnosis compares with exact answers. The run is described as a spec and
# written to a run directory, as ``wakesleep train`` would.
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import wakesleep
from wakesleep.eval.diagnose import diagnose
from wakesleep.runs import prepare
from wakesleep.spec import RunSpec
from wakesleep.training import TrainingDiverged

SMALL = os.environ.get("WAKESLEEP_TUTORIAL_SMALL") == "1"
N = 2000 if SMALL else 10000
EPOCHS = 2 if SMALL else 20
torch.set_num_threads(1)  # one thread is fastest for models this small
work = Path(tempfile.mkdtemp(prefix="wakesleep_tutorial_06_"))

layers = [
    {"name": "z2", "family": "bernoulli", "dim": 3},
    {"name": "z1", "family": "bernoulli", "dim": 6, "link": "linear", "init_std": 2.0},
    {"name": "x", "family": "bernoulli", "dim": 16, "link": "linear", "init_std": 2.0},
]
truth = wakesleep.build_model({"layers": layers, "seed": 7, "dtype": "float64"})
torch.manual_seed(0)
data = truth.sample(N)[-1].numpy()
np.save(work / "pixels.npy", data)
start_layers = [{**layer, "init_std": 0.1} if "init_std" in layer else layer for layer in layers]


def spec_for(algorithm: dict, **train) -> RunSpec:
    """A run on the pixels of ``pixels.npy``, from the same starting model."""
    return RunSpec.from_mapping(
        {
            "model": {"layers": start_layers, "seed": 0, "dtype": "float64"},
            "algorithm": algorithm,
            "train": {"epochs": EPOCHS, "batch_size": 100, "lr": 3e-3, "seed": 0, "log_every": 20, **train},
            "data": {"source": "file", "path": str(work / "pixels.npy")},
        }
    )


starved = {"name": "ddc_hm", "sleep_samples": 20, "features": 3, "recognition_hidden": 5}
run = prepare(spec_for(starved))
run.fit(work / "starved", progress=False)
print("final moment gaps:", {k: round(run.trainer.history_[-1][k], 3) for k in ("mean_gap", "cov_gap")})

# %%
# ``wakesleep diagnose``
# ----------------------
# It reloads the run, runs sleep phases at the trained parameters and compares, on the first ``--points``
# training points, the wake gradient with the exact one (here by enumerating the 2^9 latent configurations),
# per layer, and the posterior means E_q[z | x] with the exact ones. ``recognition_unexplained`` is the
# recognition's squared error on E[T(z) | x] relative to the spread of the exact values: 0 is perfect, 1 is
# no better than a constant.
exe = Path(sys.executable).with_name("wakesleep")
WAKESLEEP = [str(exe)] if exe.exists() else [sys.executable, "-m", "wakesleep"]
args = ["diagnose", "--run", str(work / "starved"), "--points", "100", "--sleeps", "5"]
print("$ wakesleep " + " ".join(shlex.quote(a) for a in args))
env = {**os.environ, "OMP_NUM_THREADS": "1"}
done = subprocess.run([*WAKESLEEP, *args], capture_output=True, text=True, env=env)
print((done.stdout + done.stderr).strip())

# %%
# How to read it: a cosine near 1 means the wake gradient points where the exact one does (a negative one, that
# it points away); a posterior mean that misses by more than the constant guess is worse than ignoring x; and
# the recognition's unexplained share of E[T(z) | x] is 0 for a perfect recognition, 100 % for one no better
# than a constant. "With a perfect recognition" repeats the gradient with the exact E[T(z) | x] in place of the
# recognition's: when it is no better, the gradient regressions, not the recognition, are what fails.
#
# The same in Python, on the run's objects: :func:`~wakesleep.eval.diagnose.diagnose` takes a run directory
# or a ``(model, algorithm)`` pair and returns the numbers, here read for us. With 3 encoding functions per
# layer the DDC cannot represent a posterior over 2^6 configurations, and 20 sleep samples a phase cannot fit
# its regressions.
x = torch.as_tensor(data[:100])


def summary(model, algo, label: str) -> dict:
    """Diagnose on the first 100 training points; print the cosines and a reading of them."""
    d = diagnose((model, algo), x, sleeps=5)
    row = {name: round(layer["cosine"], 3) for name, layer in d.layers.items()}
    unexplained = {name: round(p["recognition_unexplained"], 3) for name, p in d.posterior.items()}
    print(f"{label:8s} gradient cosine per layer {row}; recognition unexplained {unexplained}")
    for name, layer in d.layers.items():
        verdict = "follows the exact gradient" if layer["cosine"] > 0.95 else "is unreliable"
        print(f"         the gradient of layer {name} {verdict} (cosine {layer['cosine']:.2f})")
    for name, p in d.posterior.items():
        worse = p["mae"] > p["mae_constant_guess"]
        print(
            f"         E[{name} | x] misses by {p['mae']:.3f}, "
            + ("worse than" if worse else "better than")
            + f" the constant guess ({p['mae_constant_guess']:.3f})"
        )
    return row


before = summary(run.model, run.algorithm, "starved")

# %%
# What to change
# --------------
# DDC-HM's accuracy is decided by the number of encoding functions (``features``, K per latent layer), the
# recognition's size (``recognition_hidden``) and the sleep samples per phase (``sleep_samples``); the
# ``sleep/`` keys of ``metrics.jsonl`` log the recognition fit as training goes. With larger sizes (the same
# data, starting point and steps):
sized = {"name": "ddc_hm", "sleep_samples": 1000, "features": 50, "recognition_hidden": 100}
good = prepare(spec_for(sized))
good.fit(work / "sized", progress=False)
after = summary(good.model, good.algorithm, "sized")

fig, ax = plt.subplots(figsize=(6, 3.5))
names = list(before)
ax.bar([i - 0.2 for i in range(len(names))], [before[n] for n in names], width=0.4, label="starved")
ax.bar([i + 0.2 for i in range(len(names))], [after[n] for n in names], width=0.4, label="sized")
ax.set_xticks(range(len(names)), [f"layer {n}" for n in names])
ax.set_ylabel("cosine with the exact gradient")
ax.set_ylim(min(0.0, *before.values(), *after.values()) - 0.05, 1.05)
ax.legend()
fig.tight_layout()

# %%
# Other levers, by symptom:
#
# - gradient cosines fine with a perfect recognition (``cosine_exact_recognition``) but poor as run: the
#   recognition is the problem (more ``recognition_hidden``, ``recognition_input``, ``recognition: deep``);
# - poor even with a perfect recognition: the gradient regressions are (more ``features``, ``sleep_samples``);
# - the references disagree with each other (AIS on large models): more ``--chains`` or ``--temperatures``
#   before trusting any cosine.
#
# A divergence
# ------------
# A non-finite gradient stops training at once. Here a VAE on the paper's synthetic model, in float32, at
# ``train.lr: 0.03`` (ten times a safe value for this model): its reparameterised Laplace samples meet a
# scale that has collapsed towards zero, and training stops with one line that names the step, the parameter
# and the last good checkpoint (``wakesleep train`` prints it as ``error: ...``).
synthetic = {
    "layers": [
        {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
        {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear", "bias": False},
        {"name": "x", "family": "gaussian", "dim": 2, "link": "linear", "bias": False},
    ]
}
base = {
    "model": synthetic,
    "algorithm": {"name": "vae"},
    "train": {"epochs": 3, "batch_size": 100, "lr": 0.03, "recognition_lr": 0.03, "seed": 1, "log_every": 10},
    "data": {"source": "model", "n": 2000, "seed": 1},
}
try:
    prepare(RunSpec.from_mapping(base)).fit(work / "diverges", progress=False)
except TrainingDiverged as error:
    print("TrainingDiverged:", error)

# %%
# ``train.on_divergence: rollback`` goes back to the last checkpoint (written every ``checkpoint_every``
# iterations) with both learning rates halved and new random draws, at most ``max_rollbacks`` times, and carries
# on. The gradient of the first step after a checkpoint does not depend on the learning rate (only on the new
# sleep samples and minibatches), so checkpoint every few iterations, not every one. A rollback is a safety net, not a
# fix: a learning rate that needs several of them was too large to begin with (and float64, ``model.dtype``,
# leaves more room).
rollback = {**base["train"], "on_divergence": "rollback", "checkpoint_every": 10, "max_rollbacks": 4}
run = prepare(RunSpec.from_mapping({**base, "train": rollback}))
trainer = run.fit(work / "rollback", progress=False)
print(f"finished {trainer.n_iter_} iterations after {trainer.rollbacks_} rollbacks")
print("learning rate at the end:", trainer.optimizer_.param_groups[0]["lr"])

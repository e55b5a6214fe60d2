"""
Learning a Pyro model by wake-sleep
===================================

A model written in `Pyro <https://pyro.ai>`_, with a discrete and a continuous latent variable and a
nonlinear observation, learned by amortised learning by wake-sleep (AL-WS): no guide, no posterior, no
enumeration of the discrete latent. :func:`wakesleep.models.from_pyro` turns the Pyro program into a model of
this library, whose ``pyro.param`` s become ordinary PyTorch parameters that the library's ``Trainer`` learns.

Pyro is an optional dependency: ``pip install 'wakesleep[pyro]'``.
"""

# %%
# The model
# ---------
# Each observation comes from one of three clusters ``c`` (a categorical latent), a point ``z`` around that
# cluster's fixed centre, and a noisy, squashed reading ``x = tanh(z) + noise``. Three quantities are learned:
# the cluster probabilities (``logits``), the spread ``scale`` of ``z`` around its centre and the observation
# ``noise``; the last two are positive, so they are declared with ``constraint=positive`` (Pyro stores their
# logarithms, and so does the wrapped model).
#
# The program describes **one** observation: ``from_pyro`` adds the batch plate itself, and a vector-valued
# site says so with ``.to_event(1)``. While it runs, torch's default dtype is the wrapped model's (here
# float64), so the tensors it makes follow the model.
import os

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

import wakesleep
from wakesleep.models import from_pyro
from wakesleep.training import Trainer

SMALL = os.environ.get("WAKESLEEP_TUTORIAL_SMALL") == "1"  # the test suite runs this file at a reduced size
torch.set_num_threads(1)  # small tensors: one thread is fastest

CENTRES = [[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]]


def clusters(logits0=(0.0, 0.0, 0.0), scale0=1.0, noise0=0.5):
    """A Pyro model of one observation; the arguments are the initial parameter values."""

    def model():
        logits = pyro.param("logits", torch.tensor(logits0))
        scale = pyro.param("scale", torch.tensor(scale0), constraint=constraints.positive)
        noise = pyro.param("noise", torch.tensor(noise0), constraint=constraints.positive)
        c = pyro.sample("c", dist.Categorical(logits=logits))
        z = pyro.sample("z", dist.Normal(torch.tensor(CENTRES)[c], scale).to_event(1))
        pyro.sample("x", dist.Normal(torch.tanh(z), noise).to_event(1))

    return model


# %%
# Wrapping it
# -----------
# ``from_pyro`` runs the program to find its sample sites and parameters. The latent sites come in the order
# the program samples them (``c``, then ``z``: top first, as in every model of the library), and ``sample(n)``
# returns ``[c, z, x]`` with one row per draw.
truth = from_pyro(clusters(logits0=(1.0, 0.3, -0.8), scale0=0.3, noise0=0.1), observed="x", dtype=torch.float64)
print(truth)
print({name: (site.dim, site.family.support) for name, site in truth.sites.items()})

torch.manual_seed(0)
data = truth.sample(500 if SMALL else 3000)[-1]  # the observations; the latents are thrown away

model = from_pyro(clusters(), observed="x", dtype=torch.float64)
print(dict(model.named_parameters()).keys())

# %%
# Learning by amortised wake-sleep
# --------------------------------
# Each sleep phase draws ``(c, z, x)`` from the current model; a kernel ridge regression of the log joint
# ``log p(c, z, x)`` on ``x`` then gives, differentiated at the data, an estimate of the gradient of the
# log-likelihood (see the AL-WS page of the user guide). The gradient reaches the ``pyro.param`` s through Pyro's
# own ``log_prob`` s.
algo = wakesleep.build_algorithm(
    "al_ws", model, sleep_samples=200 if SMALL else 1000, kernel="exact", select_every=20, seed=0
)
history = {"step": [], "probs": [], "scale": [], "noise": []}


def record(trainer, rec):
    history["step"].append(rec.get("step", len(history["step"])))
    history["probs"].append(torch.softmax(model.param("logits").detach(), 0).tolist())
    history["scale"].append(float(model.param("scale").detach()))
    history["noise"].append(float(model.param("noise").detach()))


iters = 30 if SMALL else 800
Trainer(
    algo,
    epochs=1000,
    batch_size=100,
    lr=2e-2,
    seed=0,
    max_iters=iters,
    log_every=5 if SMALL else 20,
    progress=False,
    monitor_samples=0,
    callback=record,
).fit(data)


# %%
# The learned parameters against the truth
# ----------------------------------------
def values(m):
    return {
        "probs": [round(p, 3) for p in torch.softmax(m.param("logits").detach(), 0).tolist()],
        "scale": round(float(m.param("scale").detach()), 3),
        "noise": round(float(m.param("noise").detach()), 3),
    }


print("truth  :", values(truth))
print("learned:", values(model))

# %%
# A picture
# ---------
# Left: the data and as many draws from the learned model. Right: the parameters during training, with the
# true values dashed.
with torch.no_grad():
    fake = model.sample(len(data), generator=torch.Generator().manual_seed(1))[-1]
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
ax0.scatter(data[:, 0], data[:, 1], s=3, alpha=0.4, label="data")
ax0.scatter(fake[:, 0], fake[:, 1], s=3, alpha=0.4, label="learned model")
ax0.set(xlabel="x[0]", ylabel="x[1]", title="observations")
ax0.legend(markerscale=4)
steps = history["step"]
true_values = values(truth)
for i, colour in enumerate(("C0", "C1", "C2")):
    ax1.plot(steps, [p[i] for p in history["probs"]], color=colour, label=f"P(c = {i})")
    ax1.axhline(true_values["probs"][i], color=colour, ls="--", lw=0.8)
ax1.plot(steps, history["scale"], color="C3", label="scale")
ax1.axhline(true_values["scale"], color="C3", ls="--", lw=0.8)
ax1.plot(steps, history["noise"], color="C4", label="noise")
ax1.axhline(true_values["noise"], color="C4", ls="--", lw=0.8)
ax1.set(xlabel="iteration", title="parameters (dashed: truth)")
ax1.legend(fontsize=8)
fig.tight_layout()

# %%
# What else takes a Pyro model
# ----------------------------
# The proposal-based learners ``rws``, ``vimco`` and ``bbvi`` build their own proposal from the sites' supports
# (here ``c`` is categorical and ``z`` real), or ``rws`` takes a Pyro guide as its proposal:
# ``wakesleep.build_algorithm("rws", model, proposal=PyroGuide(model, guide))`` with
# :class:`wakesleep.models.pyro_models.PyroGuide`. See the user guide's page on Pyro models.

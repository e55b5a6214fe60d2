"""
Your own ``torch.nn.Module``, learned by amortised learning
===========================================================

Amortised learning by wake-sleep (``al_ws``) needs nothing from a model but two methods:

- ``sample(n)``: an ancestral sample ``[z_L, ..., z_1, x]``, each ``[n, D]``;
- ``log_joint(x, zs)``: log p(x, z), differentiable in the model's parameters.

No recognition model, no posterior, no assumption on what the latents are. Each sleep phase draws
(z_n, x_n) from the model and fits a kernel ridge regression of log p(z_n, x_n) on x_n; the wake gradient is
the gradient of that regression at the data, because E_{p(z|x)}[grad log p(z, x)] = grad log p(x) (see the
amortised-learning page of the user guide).

Here the latent is an angle on the circle: points lie on a ring of unknown radius and centre, blurred by
noise of unknown width. A VAE would need a reparameterisable distribution on the circle; amortised learning
only ever evaluates the log joint.
"""

# %%
# The model
# ---------
import math
import os

import matplotlib.pyplot as plt
import torch
from torch import nn

import wakesleep
from wakesleep.training import Trainer

SMALL = os.environ.get("WAKESLEEP_TUTORIAL_SMALL") == "1"
N = 1000 if SMALL else 5000
EPOCHS = 2 if SMALL else 30
torch.set_num_threads(1)  # one thread is fastest for a model this small
SLEEP_SAMPLES = 500 if SMALL else 2000


class Ring(nn.Module):
    """z ~ Uniform[0, 2 pi), x | z ~ N(centre + radius (cos z, sin z), sigma^2 I)."""

    def __init__(self, radius: float = 1.0, centre: tuple[float, float] = (0.0, 0.0), sigma: float = 0.5):
        super().__init__()
        self.log_radius = nn.Parameter(torch.tensor(math.log(radius)))
        self.centre = nn.Parameter(torch.tensor(centre))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.centre + self.log_radius.exp() * torch.cat([z.cos(), z.sin()], dim=-1)

    def sample(self, n: int) -> list[torch.Tensor]:
        with torch.no_grad():
            z = 2 * math.pi * torch.rand(n, 1)
            x = self.mean(z) + self.log_sigma.exp() * torch.randn(n, 2)
        return [z, x]

    def log_joint(self, x: torch.Tensor, zs: list[torch.Tensor]) -> torch.Tensor:
        (z,) = zs
        resid = (x - self.mean(z)) / self.log_sigma.exp()
        log_lik = (-0.5 * resid**2 - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_lik - math.log(2 * math.pi)  # + log p(z), uniform on the circle


# %%
# Data from a ring we then pretend not to know
# --------------------------------------------
torch.manual_seed(0)
truth = Ring(radius=2.0, centre=(1.0, -0.5), sigma=0.2)
_, data = truth.sample(N)
model = Ring()  # the learner starts at radius 1, centre 0, sigma 0.5


def describe(m: Ring) -> str:
    c = m.centre.detach().numpy().round(3)
    return f"radius {m.log_radius.exp().item():.3f}, centre {c}, sigma {m.log_sigma.exp().item():.3f}"


print("truth:", describe(truth))
print("start:", describe(model))

# %%
# The learner and the trainer
# ---------------------------
# ``build_algorithm("al_ws", model, ...)`` takes any module with the two methods. The kernel regression uses
# Nystrom features (M landmarks) and picks its bandwidth and ridge on held-out sleep samples
# (``bandwidth: auto``, ``ridge: auto``). The :class:`~wakesleep.training.Trainer` does the rest: a sleep phase
# per iteration, the wake gradient on a minibatch, an Adam step on the model's parameters.
algo = wakesleep.build_algorithm(
    "al_ws", model, sleep_samples=SLEEP_SAMPLES, kernel="nystrom", n_components=200, select_every=10
)
trace = []


def record(trainer: Trainer, rec: dict) -> None:
    """Called at every logged step: keep the parameters' path."""
    m = trainer.algorithm.model
    trace.append((rec["step"], m.log_radius.exp().item(), *m.centre.tolist(), m.log_sigma.exp().item()))


trainer = Trainer(algo, epochs=EPOCHS, batch_size=100, lr=2e-2, log_every=10, progress=False, callback=record)
trainer.fit(data)
print(f"{trainer.n_iter_} iterations in {trainer.seconds_:.1f} s")
print("learned:", describe(model))
print("truth:  ", describe(truth))

# %%
# The parameters along training, and the data against samples of the learned model:
steps, radius, cx, cy, sigma = (list(t) for t in zip(*trace, strict=True))
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for values, label, target in [
    (radius, "radius", 2.0),
    (cx, "centre x", 1.0),
    (cy, "centre y", -0.5),
    (sigma, "sigma", 0.2),
]:
    (line,) = axes[0].plot(steps, values, label=label)
    axes[0].axhline(target, color=line.get_color(), ls=":", lw=1)
axes[0].set_xlabel("iteration")
axes[0].set_title("parameters (dotted: the truth)")
axes[0].legend()
samples = model.sample(2000)[-1]
axes[1].scatter(data[:2000, 0], data[:2000, 1], s=2, alpha=0.4, label="data")
axes[1].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="learned model")
axes[1].set_aspect("equal")
axes[1].legend()
fig.tight_layout()

# %%
# Checking the gradient
# ---------------------
# For this model log p(x) has no closed form, but a Monte Carlo answer is easy: E_{p(z|x)}[grad log p(x, z)]
# with the posterior over the angle computed on a fine grid. We compare it with ``wake_gradient`` at a
# parameter value away from the optimum (the model at its start).
probe = Ring()
probe_algo = wakesleep.build_algorithm("al_ws", probe, sleep_samples=SLEEP_SAMPLES, kernel="nystrom", n_components=200)
probe_algo.sleep()
batch = data[:200]
estimate = probe_algo.wake_gradient(batch)

grid = torch.linspace(0, 2 * math.pi, 721)[:-1].reshape(-1, 1, 1)  # [G, 1, 1] angles
log_joint = probe.log_joint(batch, [grid.expand(-1, batch.shape[0], 1)])  # [G, B]
weights = torch.softmax(log_joint.detach(), dim=0)  # p(z | x) on the grid
exact = torch.autograd.grad((weights * log_joint).sum(0).mean(), list(probe.parameters()))
flat_exact, flat_est = [], []
for (name, _), g in zip(probe.named_parameters(), exact, strict=True):
    est = estimate[name].detach().flatten()
    flat_exact.append(g.flatten())
    flat_est.append(est)
    print(f"{name:11s} grid {g.flatten().numpy().round(3)}  al_ws {est.numpy().round(3)}")
cosine = torch.nn.functional.cosine_similarity(torch.cat(flat_est), torch.cat(flat_exact), dim=0).item()
print(f"cosine between the two gradients over all parameters: {cosine:.3f}")

# %%
# What to change for your own model
# ---------------------------------
# - ``sleep_samples`` (N) is the regression's data: more gives a less noisy gradient, at O(N M^2) per sleep
#   phase with ``kernel: nystrom`` (exact kernel ridge regression is O(N^3)).
# - High-dimensional observations: give the kernel a better input (``input_map``, or a method
#   ``kernel_features(x)`` on the model).
# - ``variant: expfam`` uses the observation family's structure when the model is a
#   :class:`~wakesleep.models.HierarchicalModel` (or has ``obs_family``, ``obs_natural_params``, ``log_prior``).
# - The same module works from a config file through the Python API only (a config names families, not
#   classes); ``wakesleep.models.zoo`` holds more examples (population dynamics, uniform latents).

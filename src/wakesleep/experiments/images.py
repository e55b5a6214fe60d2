"""Uniform latents, Bernoulli pixels (seed 004, experiment IV): sample quality and downstream tasks with AL-WS.

Model (:class:`wakesleep.models.zoo.UniformLogitBernoulli`): z_k ~ U(0, 1), k = 1..K, and
x_i ~ Bernoulli(sigmoid(w_i . logit(z) + b_i)). The latents are bounded and the pixels discrete: no
reparameterisation of x, no posterior; AL-WS only samples the model and differentiates ``log_joint``.

Data: Fashion-MNIST (``wakesleep.data.load_fashion_mnist``), grey levels / 255, optionally average-pooled by
``experiment.downsample`` (2: 28 x 28 -> 14 x 14), binarised with ``experiment.binarize``
(default ``threshold0.5``: deterministic, so that the clean image of the denoising task is well defined; a
Bernoulli scheme such as ``fixed-seed0`` makes every pixel a coin flip that no denoiser can undo). The first
``experiment.n_train`` training images train the model; the first ``experiment.n_test`` test images are held out.

Evaluation:

- sample quality: unbiased MMD^2 (Gaussian kernel, median bandwidth) between ``experiment.n_mmd`` model samples
  and held-out images, next to the model at initialisation (pixel biases at the data's marginal logits, i.e.
  independent pixels) and the floor (training images against the same held-out images);
- reconstruct: infer u = logit(z) for each held-out image by ``experiment.infer_steps`` Adam steps of gradient
  ascent on log p(x, u) (with the logistic density of u = logit of a uniform), decode the pixel probabilities
  sigmoid(W u + b), report the pixel error rate of the thresholded reconstruction and the mean binary
  cross-entropy;
- denoise: flip ``experiment.flip`` (10%) of the pixels of each held-out image, infer u from the noisy image,
  decode, and report the error against the *clean* image; baselines: the noisy image itself (error = flip
  fraction) and the marginal-mean image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wakesleep import io as wio
from wakesleep.errors import WakesleepError
from wakesleep.experiments.base import Experiment, ExperimentContext, pyplot, save_figure, table
from wakesleep.schema import SEED_MAX, option


@dataclass(frozen=True)
class Options:
    """The ``experiment:`` section (values: ``configs/images.yaml``)."""

    root: str | None = option(doc="Fashion-MNIST folder (default: /usr/share/datasets/fashion-mnist)")
    downsample: int = option(minimum=1, doc="average-pool factor before binarising (a divisor of 28)")
    binarize: str = option(doc="binarisation scheme (docs/data.md)")
    n_train: int = option(minimum=1, doc="training images")
    n_test: int = option(minimum=1, doc="held-out images (MMD, reconstruction, denoising)")
    latent_dim: int = option(minimum=1, doc="K")
    init_std: float = option(minimum=0.0, doc="initial weights N(0, init_std^2)")
    n_mmd: int = option(minimum=2, doc="model samples for the MMD")
    infer_steps: int = option(minimum=0, doc="Adam steps of the latent inference")
    infer_lr: float = option(minimum=0.0, exclusive_minimum=True, doc="its learning rate")
    flip: float = option(minimum=0.0, maximum=1.0, doc="fraction of pixels flipped for the denoising task")
    seed: int = option(minimum=0, maximum=SEED_MAX, doc="seeds the model and the evaluations")

    def validate(self, prefix: str) -> None:
        """The pooling factor divides 28."""
        if 28 % self.downsample:
            raise WakesleepError(f"{prefix}.downsample: must divide 28, got {self.downsample}")


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------
def load_images(root: str | None, split: str, n: int, downsample: int, scheme: str, stream: int) -> np.ndarray:
    """The first ``n`` images of a Fashion-MNIST split, pooled by ``downsample`` and binarised: ``[n, H*W]`` float64."""
    from wakesleep.data import binarize, load_fashion_mnist

    imgs, _ = load_fashion_mnist(root, split)
    x = torch.as_tensor(imgs[:n], dtype=torch.float64) / 255.0
    if downsample > 1:
        x = F.avg_pool2d(x[:, None], downsample)[:, 0]
    x = binarize(x.reshape(x.shape[0], -1), scheme, stream=stream)
    return x.numpy()


# --------------------------------------------------------------------------------------------------------
# inference and downstream tasks
# --------------------------------------------------------------------------------------------------------
def infer_latents(model: Any, x: torch.Tensor, steps: int = 300, lr: float = 0.05) -> torch.Tensor:
    """MAP of u = logit(z) given binary images ``x [B, D]``: Adam ascent on log p(x | u) + log p(u).

    u = logit(z) of a uniform z is standard logistic, log p(u) = -u - 2 softplus(-u); the model's parameters get
    no gradient. Returns u ``[B, K]``.
    """
    w, b = model.weight.detach(), model.bias.detach()
    u = torch.zeros(x.shape[0], model.latent_dim, dtype=w.dtype, requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)
    for _ in range(int(steps)):
        opt.zero_grad()
        lo = u @ w.T + b
        lp = (x * lo - F.softplus(lo)).sum() + (-u - 2 * F.softplus(-u)).sum()
        (-lp).backward()
        opt.step()
    return u.detach()


def decode(model: Any, u: torch.Tensor) -> torch.Tensor:
    """Pixel probabilities sigmoid(W u + b) ``[B, D]``."""
    with torch.no_grad():
        return torch.sigmoid(u @ model.weight.T + model.bias)


def _errors(prob: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    p = prob.clamp(1e-6, 1 - 1e-6)
    bce = float(-(target * torch.log(p) + (1 - target) * torch.log1p(-p)).sum(1).mean())
    return {
        "pixel_error": float(((prob > 0.5).to(target.dtype) != target).to(torch.float64).mean()),
        "bce_per_image": bce,
    }


def downstream(model: Any, x_test: torch.Tensor, flip: float, steps: int, lr: float, seed: int) -> dict[str, Any]:
    """Reconstruction and denoising errors (and the images for the plots)."""
    g = torch.Generator().manual_seed(seed)
    u = infer_latents(model, x_test, steps, lr)
    rec = decode(model, u)
    mask = torch.rand(x_test.shape, generator=g, dtype=x_test.dtype) < flip
    noisy = torch.where(mask, 1 - x_test, x_test)
    u_n = infer_latents(model, noisy, steps, lr)
    den = decode(model, u_n)
    mean_img = torch.sigmoid(model.bias.detach()).to(x_test.dtype).expand_as(x_test)
    return {
        "reconstruct": _errors(rec, x_test),
        "denoise": _errors(den, x_test),
        "noisy_input_error": float((noisy != x_test).to(torch.float64).mean()),
        "images": {"clean": x_test, "recon": rec, "noisy": noisy, "denoised": den},
        "_mean": mean_img,
    }


# --------------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------------
def _plots(out: Path, ds: dict[str, Any], samples: np.ndarray, shape, history) -> None:
    from wakesleep.eval.plots import plot_image_grid

    plt = pyplot()
    plot_image_grid(samples[:64], out / "samples.png", shape, n=64, title="model samples")
    probs = ds["images"]
    k = 12
    rows = [probs["clean"][:k], probs["recon"][:k], probs["noisy"][:k], probs["denoised"][:k]]
    h, w = shape
    fig, axes = plt.subplots(4, k, figsize=(k * 0.9, 4 * 0.95))
    names = ["clean", "reconstruction", "10% flipped", "denoised"]
    for r, (row, name) in enumerate(zip(rows, names, strict=True)):
        for c in range(k):
            ax = axes[r, c]
            ax.imshow(np.asarray(row[c]).reshape(h, w), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    save_figure(fig, out / "downstream.png")
    if history:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot([r["step"] for r in history], [r["mmd2"] for r in history], "o-")
        ax.set_xlabel("iteration")
        ax.set_ylabel("MMD^2 (samples vs held-out)")
        ax.set_yscale("log")
        save_figure(fig, out / "mmd_curve.png")


def report(res: dict[str, Any]) -> str:
    """The text of report.md."""
    d, r0 = res["downstream"], res["downstream_initial"]
    lines = [
        "# AL-WS: uniform latents, Bernoulli pixels (seed 004, experiment IV)",
        "",
        f"z ~ U(0, 1)^{res['latent_dim']}, x_i ~ Bernoulli(sigmoid(w_i . logit(z) + b_i)) on binarised Fashion-MNIST "
        f"({res['image_shape'][0]} x {res['image_shape'][1]}, {res['binarize']}), {res['n_train']} training and "
        f"{res['n_test']} held-out images; AL-WS with N = {res['sleep_samples']} sleep samples, "
        f"{res['iterations']} iterations in {res['train_seconds']:.0f} s. "
        f"{'Quick run' if res['quick'] else 'Full run'}, {res['seconds']:.0f} s in all.",
        "",
        "## Sample quality",
        "",
        *table(
            ["samples vs held-out images", "MMD^2"],
            [
                [f"AL-WS model ({res['n_mmd']} samples)", f"{res['mmd2_learned']:.4g}"],
                ["model at initialisation (independent pixels at the data marginals)", f"{res['mmd2_initial']:.4g}"],
                ["training images (floor)", f"{res['mmd2_floor']:.4g}"],
            ],
        ),
        "",
        "## Downstream tasks",
        "",
        f"Latents inferred by {res['infer_steps']} Adam steps of MAP on log p(x, logit z); decoded pixel "
        "probabilities thresholded at 0.5. Pixel error rate against the clean image (lower is better); "
        "BCE: mean binary cross-entropy per image of the decoded probabilities (nats).",
        "",
    ]
    rows = [
        [
            name,
            f"{d[task]['pixel_error']:.4f}",
            f"{d[task]['bce_per_image']:.2f}",
            f"{r0[task]['pixel_error']:.4f}",
            f"{r0[task]['bce_per_image']:.2f}",
        ]
        for task, name in (("reconstruct", "reconstruct"), ("denoise", f"denoise ({res['flip']:.0%} flipped)"))
    ]
    lines += table(["task", "AL-WS model: pixel error", "BCE", "initial model: pixel error", "BCE"], rows)
    lines += [
        "",
        f"Baselines: the noisy image itself has pixel error {d['noisy_input_error']:.4f} against the clean one; "
        f"the thresholded marginal-mean image {res['mean_image_error']:.4f}.",
        "",
        "![samples](samples.png)",
        "",
        "![reconstruct and denoise](downstream.png)",
        "",
    ]
    if res["history"]:
        lines += ["![MMD during training](mmd_curve.png)", ""]
    return "\n".join(lines)


class Images(Experiment):
    """AL-WS on binarised Fashion-MNIST with uniform latents: sample quality, reconstruction, denoising."""

    name = "images"
    Options = Options
    algorithm = "al_ws"

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Train the model with AL-WS and evaluate it before and after (see the module docstring)."""
        from wakesleep.eval import mmd
        from wakesleep.models.zoo import UniformLogitBernoulli

        exp = ctx.options
        x_train = load_images(exp.root, "train", exp.n_train, exp.downsample, exp.binarize, 0)
        x_test = load_images(exp.root, "test", exp.n_test, exp.downsample, exp.binarize, 1)
        side = 28 // exp.downsample
        shape = (side, side)
        seed = exp.seed
        m = x_train.mean(0).clip(1e-3, 1 - 1e-3)
        torch.manual_seed(ctx.spec.train.seed)
        model = UniformLogitBernoulli(
            exp.latent_dim,
            side * side,
            init_std=exp.init_std,
            seed=seed,
            bias_init=torch.as_tensor(np.log(m / (1 - m)), dtype=torch.float32),
        ).double()
        xt = torch.as_tensor(x_test)
        n_mmd = exp.n_mmd
        ref = xt[:n_mmd]

        def sample_mmd(k: int, s: int) -> float:
            g = torch.Generator().manual_seed(s)
            return float(mmd(model.sample(k, generator=g)[-1], ref))

        mmd_init = sample_mmd(n_mmd, seed + 1)
        steps, ilr, flip = exp.infer_steps, exp.infer_lr, exp.flip
        ds0 = downstream(model, xt, flip, steps, ilr, seed + 5)
        mean_err = float((((ds0["_mean"] > 0.5).to(xt.dtype)) != xt).to(torch.float64).mean())
        algorithm = ctx.algorithm(model)
        trainer, history = ctx.fit(
            algorithm,
            torch.as_tensor(x_train),
            track=lambda: {"mmd2": sample_mmd(min(n_mmd, 500), seed + 2)},
            image_shape=shape,
        )
        g = torch.Generator().manual_seed(seed + 3)
        samples = model.sample(n_mmd, generator=g)[-1]
        ds = downstream(model, xt, flip, steps, ilr, seed + 5)
        _plots(ctx.out_dir, ds, samples.numpy(), shape, history)
        wio.save_npz(ctx.out_dir / "model.npz", weight=model.weight.detach().numpy(), bias=model.bias.detach().numpy())

        def strip(d: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in d.items() if k not in ("images", "_mean")}

        return {
            "image_shape": list(shape),
            "binarize": exp.binarize,
            "n_train": int(len(x_train)),
            "n_test": int(len(x_test)),
            "latent_dim": exp.latent_dim,
            "n_mmd": n_mmd,
            "sleep_samples": int(ctx.config["algorithm"].get("sleep_samples", 1000)),
            "flip": flip,
            "infer_steps": steps,
            "mmd2_learned": float(mmd(samples, ref)),
            "mmd2_initial": mmd_init,
            "mmd2_floor": float(mmd(torch.as_tensor(x_train[:n_mmd]), ref)),
            "downstream": strip(ds),
            "downstream_initial": strip(ds0),
            "mean_image_error": mean_err,
            "iterations": int(trainer.n_iter_),
            "train_seconds": trainer.seconds_,
            "history": history,
            "seconds": ctx.seconds(),
        }

    report = staticmethod(report)


EXPERIMENT = Images()

"""Independent component analysis of natural image patches with AL-WS (seed 004, "Independent component analysis").

Model (built by :func:`wakesleep.build_model` from the ``model`` section, the dimensions set to the data's):
z ~ Laplace(0, b) (a sparse top prior; b = 1/sqrt(2): unit variance), x | z ~ N(A z, sigma^2 I) with sigma^2
fixed; only the mixing matrix A (``layers.x.link.weight``) is learned, with AL-WS.

Data (``data`` section, :func:`wakesleep.data.load_patches`): 16 x 16 patches from the natural photographs shipped
with scikit-image and scikit-learn, log intensity, DC removed, PCA-whitened onto the leading ``pca_dim`` components
(x = patch @ W, W = ``PatchSet.whitening``). In whitened coordinates the ICA solution is an orthogonal A.

Reported, for the AL-WS A, its random initialisation, the PCA basis (A = I in whitened coordinates) and FastICA
(scikit-learn, on the same whitened patches; the reference ICA solution):

- the mean excess kurtosis of the responses s = W x on held-out patches (sparser = higher), W the Wiener unmixing
  filter A^T (A A^T + sigma^2 I)^{-1};
- the noiseless ICA log-likelihood per patch, mean_x [sum_k log Laplace(s_k; b) - log |det A|] (nats, held out),
  and the model's second-order fit log N(x; 0, 2 b^2 A A^T + sigma^2 I);
- the match to FastICA: for each learned filter the largest |cosine| with a FastICA filter, averaged, and the
  Amari index (0 = the same filters up to permutation and scale);
- localisation: the spatial spread (pixels, energy-weighted standard deviation of position around the
  centroid) of the pixel-space basis functions a_k = A[:, k] @ pinv(W), median over k (smaller = more local);
- image grids of the learned basis functions, the initial ones, PCA's and FastICA's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.errors import WakesleepError
from wakesleep.experiments.base import Experiment, ExperimentContext, pyplot, save_figure, table
from wakesleep.schema import option


@dataclass(frozen=True)
class Options:
    """The ``experiment:`` section (values: ``configs/ica.yaml``)."""

    fastica: bool = option(doc="fit scikit-learn's FastICA on the same whitened patches as the reference")
    fastica_n: int = option(minimum=1, doc="patches it uses")
    n_show: int = option(minimum=1, doc="basis functions shown per grid")


# --------------------------------------------------------------------------------------------------------
# measures
# --------------------------------------------------------------------------------------------------------
def unmixing(A: np.ndarray, noise_var: float = 0.0) -> np.ndarray:
    """Linear unmixing ``[D, D]``: A^{-1} (noiseless) or the Wiener filter A^T (A A^T + noise_var I)^{-1}, which stays
    finite when A is (near) singular."""
    if noise_var <= 0:
        return np.linalg.inv(A)
    return A.T @ np.linalg.inv(A @ A.T + noise_var * np.eye(len(A)))


def responses(A: np.ndarray, x: np.ndarray, noise_var: float = 0.0) -> np.ndarray:
    """s = unmixing(A) x for each row of x: ``[n, D]``."""
    return x @ unmixing(A, noise_var).T


def mean_kurtosis(A: np.ndarray, x: np.ndarray, noise_var: float = 0.0) -> float:
    """Mean over components of the excess kurtosis of the responses unmixing(A) x."""
    from scipy.stats import kurtosis

    return float(np.mean(kurtosis(responses(A, x, noise_var), axis=0)))


def ica_loglik(A: np.ndarray, x: np.ndarray, scale: float) -> float:
    """Noiseless ICA log-likelihood per row: mean [sum_k log Laplace(s_k; 0, scale) - log |det A|], s = A^{-1} x."""
    s = responses(A, x)
    lp = -np.abs(s) / scale - math.log(2 * scale)
    return float(lp.sum(1).mean() - np.linalg.slogdet(A)[1])


def gaussian_loglik(A: np.ndarray, x: np.ndarray, prior_var: float, noise_var: float) -> float:
    """Log-likelihood per row of x under the model's second moments: N(0, prior_var A A^T + noise_var I)."""
    C = prior_var * A @ A.T + noise_var * np.eye(len(A))
    L = np.linalg.cholesky(C)
    y = np.linalg.solve(L, x.T)
    return float(-0.5 * (y * y).sum(0).mean() - np.log(np.diag(L)).sum() - 0.5 * len(A) * math.log(2 * math.pi))


def amari_index(W: np.ndarray, A: np.ndarray) -> float:
    """Amari index of P = W A (0 iff P is a scaled permutation): the standard normalised form in [0, 1]."""
    P = np.abs(W @ A)
    n = P.shape[0]
    r = (P / P.max(1, keepdims=True)).sum(1) - 1
    c = (P / P.max(0, keepdims=True)).sum(0) - 1
    return float((r.sum() + c.sum()) / (2 * n * (n - 1)))


def filter_match(U: np.ndarray, V: np.ndarray) -> float:
    """Mean over rows of U of the largest |cosine| with a row of V (filters as rows)."""
    Un = U / np.linalg.norm(U, axis=1, keepdims=True)
    Vn = V / np.linalg.norm(V, axis=1, keepdims=True)
    return float(np.abs(Un @ Vn.T).max(1).mean())


def spatial_spread(basis: np.ndarray, size: int) -> np.ndarray:
    """Energy-weighted standard deviation (pixels) of position around the centroid of each ``[k, size*size]`` image."""
    e = basis.reshape(len(basis), size, size) ** 2
    e = e / e.sum((1, 2), keepdims=True)
    r = np.arange(size, dtype=float)
    my = (e.sum(2) * r).sum(1)
    mx = (e.sum(1) * r).sum(1)
    vy = (e.sum(2) * (r[None] - my[:, None]) ** 2).sum(1)
    vx = (e.sum(1) * (r[None] - mx[:, None]) ** 2).sum(1)
    return np.sqrt(vx + vy)


def pixel_basis(A: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """Basis functions in pixel space, ``[D, size*size]``: row k = A[:, k] @ pinv(W) (x_white = patch @ W)."""
    return A.T @ np.linalg.pinv(whitening)


def summarise(
    A: np.ndarray,
    x_test: np.ndarray,
    whitening: np.ndarray,
    size: int,
    scale: float,
    noise_var: float,
    reference: np.ndarray | None,
) -> dict[str, float]:
    """The numbers of one mixing matrix A (whitened coordinates); ``reference``: FastICA's unmixing matrix."""
    out = {
        "kurtosis": mean_kurtosis(A, x_test, noise_var),
        "ica_loglik": ica_loglik(A, x_test, scale),
        "gaussian_loglik": gaussian_loglik(A, x_test, 2 * scale * scale, noise_var),
        "median_spread": float(np.median(spatial_spread(pixel_basis(A, whitening), size))),
        "column_norm": float(np.linalg.norm(A, axis=0).mean()),
        "orthogonality_error": float(
            np.linalg.norm(A.T @ A / np.mean(np.sum(A * A, 0)) - np.eye(len(A))) / math.sqrt(len(A))
        ),
    }
    if reference is not None:
        out["fastica_match"] = filter_match(unmixing(A, noise_var), reference)
        out["amari_to_fastica"] = amari_index(reference, A)
    return out


# --------------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------------
def _model_section(config: dict[str, Any], dim: int) -> dict[str, Any]:
    section = copy.deepcopy(config["model"])
    layers = section.get("layers") or []
    if len(layers) != 2 or layers[0].get("family") not in ("laplace", "gaussian", "mog"):
        raise WakesleepError("experiment ica: model.layers must be [sparse top prior z, gaussian x] (two layers)")
    if layers[1].get("family") != "gaussian" or layers[1].get("link", "linear") != "linear":
        raise WakesleepError("experiment ica: the observation layer must be gaussian with a linear link")
    layers[0]["dim"] = dim
    layers[1]["dim"] = dim
    return section


def _grid(basis: np.ndarray, path: Path, size: int, n: int, title: str) -> None:
    from wakesleep.eval.plots import plot_image_grid

    b = basis[:n] / np.abs(basis[:n]).max(1, keepdims=True)  # each in [-1, 1]
    plot_image_grid(b, path, (size, size), n=n, title=title)


def _curve(path: Path, history: list[dict[str, Any]], ref: dict[str, dict[str, float]]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    for ax, key in zip(axes, ("kurtosis", "gaussian_loglik"), strict=True):
        ax.plot(steps, [h[key] for h in history], "o-", label="AL-WS")
        for i, (name, s) in enumerate(ref.items()):
            ax.axhline(s[key], ls="--", color=f"C{i + 1}", label=name)
        ax.set_xlabel("iteration")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def report(res: dict[str, Any]) -> str:
    """The text of report.md."""
    lines = [
        "# AL-WS: ICA of natural image patches",
        "",
        f"z ~ Laplace(0, {res['prior_scale']:.3g})^{res['dim']}, x | z ~ N(A z, {res['obs_variance']:.3g} I); "
        f"x = {res['size']} x {res['size']} patches from the built-in natural images, log intensity, DC removed, "
        f"PCA-whitened to {res['dim']} dimensions ({res['n_train']} training, {res['n_test']} held-out patches). "
        f"AL-WS ({res['variant']} variant, N = {res['sleep_samples']} sleep samples, {res['kernel']} KRR), "
        f"{res['iterations']} iterations in {res['train_seconds']:.0f} s. "
        f"{'Quick run' if res['quick'] else 'Full run'}, {res['seconds']:.0f} s in all.",
        "",
        "All numbers on held-out patches. Kurtosis: mean excess kurtosis of the responses W x, W = A^T (A A^T + "
        "sigma^2 I)^{-1} (the Wiener unmixing filter; A^{-1} for sigma -> 0). ICA log-lik: noiseless ICA "
        "log-likelihood per patch (nats; sensitive to a near-singular A). Gaussian log-lik: log N(x; 0, 2 b^2 A A^T + "
        "sigma^2 I) per patch, the model's second-order fit. PCA and FastICA bases are scaled so that the latter "
        "matches the data's covariance. Spread: median spatial spread of the pixel-space basis "
        "functions (pixels; smaller = more localised). Match: mean over filters of the best |cosine| with a "
        "FastICA filter; Amari: Amari index to FastICA (0 = same filters).",
        "",
    ]
    rows = [
        [
            name,
            f"{s['kurtosis']:.3f}",
            f"{s['ica_loglik']:.4g}",
            f"{s['gaussian_loglik']:.3f}",
            f"{s['median_spread']:.2f}",
            f"{s.get('fastica_match', float('nan')):.3f}",
            f"{s.get('amari_to_fastica', float('nan')):.3f}",
        ]
        for name, s in res["bases"].items()
    ]
    header = ["basis", "kurtosis", "ICA log-lik", "Gaussian log-lik", "spread (px)", "match to FastICA"]
    lines += table([*header, "Amari to FastICA"], rows)
    lines += ["", "![learned basis functions](basis_alws.png)", "", "![initial](basis_initial.png)", ""]
    lines += ["![PCA](basis_pca.png)", ""]
    if "FastICA" in res["bases"]:
        lines += ["![FastICA](basis_fastica.png)", ""]
    lines += ["![training curve](training.png)", ""]
    return "\n".join(lines)


#: the image grid of each basis
BASIS_FILES = {
    "AL-WS": "basis_alws.png",
    "initial": "basis_initial.png",
    "PCA": "basis_pca.png",
    "FastICA": "basis_fastica.png",
}


def _fastica(x: np.ndarray, dim: int) -> np.ndarray:
    """FastICA's unmixing matrix (rows are filters; orthogonal on whitened data)."""
    import warnings

    from sklearn.decomposition import FastICA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ica = FastICA(n_components=dim, whiten=False, random_state=0, max_iter=500, tol=1e-4)
        ica.fit(x)
    return ica.components_


class Ica(Experiment):
    """ICA of whitened natural image patches with AL-WS, against PCA and FastICA."""

    name = "ica"
    Options = Options
    algorithm = "al_ws"

    def check(self, config: dict[str, Any], options: Options) -> None:
        """AL-WS on image patches."""
        super().check(config, options)
        if (config.get("data") or {}).get("source") != "patches":
            raise WakesleepError("experiment ica: data.source must be patches")

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Train the mixing matrix with AL-WS and compare the bases (see the module docstring)."""
        from wakesleep import build_model
        from wakesleep.data import load_patches

        exp, config = ctx.options, ctx.config
        data = config["data"]
        size = int(data.get("size", 16))
        kw = {k: data[k] for k in ("images", "log", "pca_dim", "eps", "test_fraction") if data.get(k) is not None}
        n, n_test, seed = int(data.get("n") or 30000), int(data.get("n_test") or 5000), int(data.get("seed") or 0)
        ps = load_patches(size=size, n=n, n_test=n_test, seed=seed, whiten="pca", **kw)
        x_train, x_test = ps.train, ps.test
        dim = x_train.shape[1]
        torch.manual_seed(ctx.spec.train.seed)
        model = build_model(_model_section(config, dim))
        with torch.no_grad():
            z = model.sample(20000)[0]
        prior_scale = float(z.abs().mean())  # the Laplace scale b = E|z| (any sparse top prior: its mean |z|)
        obs = model.layers["x"]
        obs_var = float(torch.exp(obs.log_var).mean()) if hasattr(obs, "log_var") else float("nan")

        def mixing() -> np.ndarray:
            return obs.link.weight.detach().cpu().double().numpy().copy()

        reference = None
        # baselines scaled so that their model covariance 2 b^2 A A^T + sigma^2 I matches the whitened data's (I)
        c = math.sqrt(max(1.0 - obs_var, 0.01) / (2 * prior_scale**2))
        bases_A: dict[str, np.ndarray] = {"initial": mixing(), "PCA": c * np.eye(dim)}
        if exp.fastica:
            reference = _fastica(x_train[: exp.fastica_n], dim)
            bases_A["FastICA"] = c * np.linalg.inv(reference)
        x_mon = x_test[:2000]

        def track() -> dict[str, float]:
            A = mixing()
            return {
                "kurtosis": mean_kurtosis(A, x_mon, obs_var),
                "gaussian_loglik": gaussian_loglik(A, x_mon, 2 * prior_scale**2, obs_var),
            }

        trainer, history = ctx.fit(ctx.algorithm(model), torch.as_tensor(x_train), track=track)
        bases_A = {"AL-WS": mixing(), **bases_A}
        bases = {
            k: summarise(A, x_test, ps.whitening, size, prior_scale, obs_var, reference) for k, A in bases_A.items()
        }
        for name, A in bases_A.items():
            B = pixel_basis(A, ps.whitening)
            order = np.argsort(spatial_spread(B, size)) if name != "PCA" else np.arange(len(B))
            _grid(B[order], ctx.out_dir / BASIS_FILES[name], size, exp.n_show, f"{name} basis functions")
        _curve(ctx.out_dir / "training.png", history, {k: v for k, v in bases.items() if k in ("PCA", "FastICA")})
        mixings = {k.replace("-", "_").lower(): v for k, v in bases_A.items()}
        wio.save_npz(ctx.out_dir / "mixing.npz", **mixings, whitening=ps.whitening)
        alg = config["algorithm"]
        return {
            "size": size,
            "dim": dim,
            "n_train": int(len(x_train)),
            "n_test": int(len(x_test)),
            "prior_scale": prior_scale,
            "obs_variance": obs_var,
            "variant": alg.get("variant", "direct"),
            "sleep_samples": int(alg.get("sleep_samples", 1000)),
            "kernel": alg.get("kernel", "exact"),
            "bases": bases,
            "iterations": int(trainer.n_iter_),
            "train_seconds": trainer.seconds_,
            "history": history,
            "patches": ps.info,
            "seconds": ctx.seconds(),
        }

    report = staticmethod(report)


EXPERIMENT = Ica()

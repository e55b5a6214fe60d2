"""Evaluation plots write PNG files."""

import json

import numpy as np
import pytest
import torch

from wakesleep.errors import WakesleepError
from wakesleep.eval import plot_learning_curves, plot_posterior_corner, plot_samples, read_metrics
from wakesleep.eval.plots import plot_image_grid

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 1000


def test_samples_scatter_and_images(tmp_path):
    rng = np.random.default_rng(0)
    out = plot_samples(
        {"VAE": rng.normal(size=(300, 2)), "DDC-HM": torch.randn(300, 2)},
        tmp_path / "s.png",
        data=rng.normal(size=(300, 2)),
    )
    assert _is_png(out)
    assert _is_png(plot_samples(rng.normal(size=(100, 1)), tmp_path / "h.png"))
    imgs = rng.random(size=(20, 16))
    assert _is_png(plot_samples(imgs, tmp_path / "i.png", data=imgs, image_shape=(4, 4)))
    assert _is_png(plot_image_grid(imgs, tmp_path / "sub" / "g.png", (4, 4)))
    assert not list(tmp_path.glob("*.tmp.png"))


def test_learning_curves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "loss": 1.0 / (i + 1), "mmd": 0.1 * np.exp(-i / 10), "phase": "wake"} for i in range(50)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert len(read_metrics(path)) == 50
    assert _is_png(plot_learning_curves(path, tmp_path / "lc.png", log_y=["mmd"]))
    assert _is_png(plot_learning_curves(rows, tmp_path / "lc2.png", keys=["loss"]))


def test_corner(tmp_path):
    rng = np.random.default_rng(1)
    sets = {
        "true model": rng.normal(size=(500, 3)),
        "DDC-HM": rng.normal(size=(500, 3)) * 1.1,
        "VAE": rng.normal(size=(500, 3)) * 0.5,
    }
    assert _is_png(plot_posterior_corner(sets, tmp_path / "c.png", labels=["a", "b", "c"], truth=[0, 0, 0]))


def test_bad_input(tmp_path):
    with pytest.raises(WakesleepError, match="different dimensions"):
        plot_samples({"a": np.zeros((5, 2)), "b": np.zeros((5, 3))}, tmp_path / "x.png")
    with pytest.raises(WakesleepError, match="image_shape 3x3 has 9"):
        plot_samples(np.zeros((5, 16)), tmp_path / "x.png", image_shape=(3, 3))
    with pytest.raises(WakesleepError, match="file not found"):
        plot_learning_curves(tmp_path / "nope.jsonl", tmp_path / "x.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(WakesleepError, match="line 2 is not JSON"):
        read_metrics(bad)
    with pytest.raises(WakesleepError, match="2 labels for 3 dimensions"):
        plot_posterior_corner({"a": np.zeros((10, 3))}, tmp_path / "c.png", labels=["a", "b"])

"""Divergence: one line naming the step and the last good checkpoint; ``on_divergence: rollback`` recovers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import wakesleep
from wakesleep.algorithms import Algorithm, WakeGradient
from wakesleep.cli import main
from wakesleep.schema import option
from wakesleep.training import Trainer, TrainingDiverged

LAYERS = [
    {"name": "z1", "family": "gaussian", "dim": 2},
    {"name": "x", "family": "gaussian", "dim": 3, "link": "linear"},
]


class Faulty(Algorithm):
    """Prior-sampling gradient that fails once, at wake step ``fail_at``, in the way ``how`` says."""

    @dataclass(frozen=True)
    class Options:
        fail_at: int = option(7, minimum=1)
        how: str = option("nan", choices=("nan", "solve", "float"))

    def __init__(self, model: torch.nn.Module, **hp) -> None:
        super().__init__(model, **hp)
        self.calls = 0
        self.failed = False

    def wake_gradient(self, x: torch.Tensor) -> WakeGradient:
        self.calls += 1
        zs = [z.unsqueeze(1).expand(50, x.shape[0], -1) for z in self.model.sample(50)[:-1]]
        grads = self._grad_dict(self.model.log_joint(x, zs).mean())
        if self.calls == self.options.fail_at and not self.failed:
            self.failed = True
            if self.options.how == "solve":
                torch.linalg.cholesky(-torch.eye(2, dtype=x.dtype))
            if self.options.how == "float":
                raise FloatingPointError("overflow in the ridge solve")
            grads["layers.x.link.weight"] = grads["layers.x.link.weight"] * float("nan")
        return grads


def fit(tmp_path, on_divergence: str, how: str = "nan", checkpoint_every: int = 2) -> Trainer:
    model = wakesleep.build_model({"layers": LAYERS, "dtype": "float64", "seed": 0})
    x = model.sample(60, generator=torch.Generator().manual_seed(1))[-1]
    trainer = Trainer(
        Faulty(model, how=how),
        epochs=4,
        batch_size=20,
        lr=1e-2,
        checkpoint_every=checkpoint_every,
        out_dir=tmp_path,
        on_divergence=on_divergence,
        monitor_samples=0,
    )
    return trainer.fit(x)


@pytest.mark.parametrize("how", ["nan", "solve", "float"])
def test_divergence_is_one_line_naming_the_last_good_checkpoint(tmp_path, how):
    with pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, "stop", how=how)
    msg = str(info.value)
    assert "\n" not in msg and "training diverged at step 7" in msg
    assert f"the last good checkpoint is {tmp_path / 'checkpoint'} (step 6)" in msg


def test_divergence_without_a_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it"):
        fit(tmp_path, "stop", checkpoint_every=0)


def test_rollback_returns_to_the_checkpoint_with_halved_learning_rates(tmp_path):
    trainer = fit(tmp_path, "rollback")
    assert trainer.rollbacks_ == 1 and trainer.n_iter_ == 12
    assert trainer.lr == pytest.approx(5e-3)
    assert all(g["lr"] == pytest.approx(5e-3) for g in trainer.optimizer_.param_groups)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    steps = [r["step"] for r in trainer.history_]
    assert steps == sorted(steps) and steps[-1] == 12


class UnluckyDraw(Algorithm):
    """Prior-sampling gradient that diverges whenever the first draw of the global RNG at step 7 is below 0.9,
    a failure that depends on the random draws and not on the learning rate. Its step counter is a buffer, so a
    rollback to the checkpoint at step 6 restores it."""

    def __init__(self, model: torch.nn.Module, **hp) -> None:
        super().__init__(model, **hp)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def wake_gradient(self, x: torch.Tensor) -> WakeGradient:
        zs = [z.unsqueeze(1).expand(50, x.shape[0], -1) for z in self.model.sample(50)[:-1]]
        grads = self._grad_dict(self.model.log_joint(x, zs).mean())
        self.step += 1
        if int(self.step) == 7 and float(torch.rand(())) < 0.9:
            grads["layers.x.link.weight"] = grads["layers.x.link.weight"] * float("nan")
        return grads


def test_rollback_draws_new_random_numbers(tmp_path):
    """A step that diverges because of its random draws succeeds on a later try: each rollback reseeds the
    streams (restoring the checkpoint's RNG state alone would repeat the same draws, and the same failure)."""
    model = wakesleep.build_model({"layers": LAYERS, "dtype": "float64", "seed": 0})
    x = model.sample(60, generator=torch.Generator().manual_seed(1))[-1]

    def run(out):
        trainer = Trainer(
            UnluckyDraw(model=wakesleep.build_model({"layers": LAYERS, "dtype": "float64", "seed": 0})),
            epochs=4,
            batch_size=20,
            lr=1e-2,
            checkpoint_every=2,
            out_dir=out,
            on_divergence="rollback",
            max_rollbacks=60,
            monitor_samples=0,
        )
        torch.manual_seed(3)
        return trainer.fit(x)

    first = run(tmp_path / "a")
    assert 1 <= first.rollbacks_ < 60 and first.n_iter_ == 12
    again = run(tmp_path / "b")  # reproducible: the same rollbacks and the same model
    assert again.rollbacks_ == first.rollbacks_
    for p, q in zip(first.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cli_divergence_is_one_error_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: {layers: [{name: z1, family: gaussian, dim: 2}, {name: x, family: gaussian, dim: 3, link: linear}]}\n"
        "algorithm: {name: vae}\n"
        "train: {epochs: 3, batch_size: 10, lr: 1.0e+30, checkpoint_every: 1}\n"
        "data: {source: model, n: 40}\n"
    )
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training diverged at step" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()

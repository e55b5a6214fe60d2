"""Adding an experiment: its defaults (one YAML file) and one class (options, run, report), registered once."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from wakesleep.errors import WakesleepError
from wakesleep.eval.compare import draw_samples
from wakesleep.experiments.base import Experiment, ExperimentContext, fmt, table
from wakesleep.schema import option

# place 1 of 2: the defaults (an experiment of this package keeps them in wakesleep/experiments/configs/NAME.yaml)
TOY_YAML = """\
model:
  layers:
    - {name: z, family: gaussian, dim: 1}
    - {name: x, family: gaussian, dim: 2, link: linear}
algorithm: {name: ddc_hm, sleep_samples: 50, features: 10, recognition_hidden: 10}
train: {epochs: 1, batch_size: 50, seed: 0, log_every: 2, threads: 1}
data: {source: model, n: 200}
experiment:
  samples: 300           # model samples drawn after training
  label: toy             # a word for the report
  quick: {experiment.samples: 30, data.n: 100}
"""


# place 2 of 2: the experiment (options, run, report), in wakesleep/experiments/NAME.py with ``EXPERIMENT = Toy()``
# and its line in EXPERIMENTS; one defined elsewhere sets ``defaults_path`` and is given to ``register``
@dataclass(frozen=True)
class Options:
    """The experiment: section (values: TOY_YAML)."""

    samples: int = option(minimum=2, doc="model samples drawn after training")
    label: str = option(doc="a word for the report")


class Toy(Experiment):
    name = "toy"
    Options = Options

    def run(self, ctx: ExperimentContext) -> dict:
        entry = ctx.train(ctx.spec, "run")  # config.yaml, metrics.jsonl, model.safetensors in out/run
        x = draw_samples(entry.model, ctx.options.samples, seed=1)
        return {"summary": f"mean {float(x.mean()):.3g}", "mean": float(x.mean()), "n": x.shape[0], **entry.info}

    def report(self, results: dict) -> str:
        rows = [[results["config"]["experiment"]["label"], results["n"], fmt(results["mean"])]]
        return "\n".join(["# Toy", "", *table(["label", "samples", "mean"], rows), ""])


@pytest.fixture
def toy(tmp_path, monkeypatch):
    import wakesleep.experiments as experiments

    path = tmp_path / "toy.yaml"
    path.write_text(TOY_YAML)
    monkeypatch.setattr(experiments, "EXPERIMENTS", dict(experiments.EXPERIMENTS))  # registered for this test only
    monkeypatch.setattr(Toy, "defaults_path", path)
    experiments.register(Toy())
    return experiments


def test_toy_experiment_runs_with_quick_and_set(toy, tmp_path):
    out = tmp_path / "out"
    res = toy.run_experiment("toy", out, quick=True, overrides=["experiment.label=tiny"], progress=False)
    assert res["experiment"] == "toy" and res["quick"] is True and res["n"] == 30 and res["iterations"] == 2
    saved = json.loads((out / "results.json").read_text())
    assert saved["mean"] == pytest.approx(res["mean"]) and saved["config"]["data"]["n"] == 100
    assert "| tiny | 30 |" in (out / "report.md").read_text()
    assert (out / "config.yaml").is_file() and (out / "run" / "model.safetensors").is_file()
    config = toy.experiment_config("toy")
    assert config["experiment"] == {"samples": 300, "label": "toy", "quick": {"experiment.samples": 30, "data.n": 100}}


def test_toy_experiment_options_are_checked(toy, tmp_path):
    with pytest.raises(WakesleepError, match="experiment.samples must be >= 2"):
        toy.experiment_config("toy", overrides=["experiment.samples=1"])
    with pytest.raises(WakesleepError, match="experiment.sample"):
        toy.experiment_config("toy", overrides=["experiment.sample=10"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOY_YAML.replace("label: toy", "label: [a, b]"))
    with pytest.raises(WakesleepError, match=f"experiment.label must be a string.*{bad.name}"):
        toy.experiment_config("toy", config_path=bad)
    with pytest.raises(WakesleepError, match="--resume"):
        toy.run_experiment("toy", tmp_path / "o", resume=True)
    assert not (tmp_path / "o").exists()

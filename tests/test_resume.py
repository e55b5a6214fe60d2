"""Resuming training from a checkpoint: exact continuation, atomic checkpoints, errors, and ``train --resume``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import wakesleep
from wakesleep import io as wio
from wakesleep.algorithms.base import Algorithm
from wakesleep.cli import main
from wakesleep.data import DataSet
from wakesleep.errors import WakesleepError
from wakesleep.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = [
    {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
    {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear"},
    {"name": "x", "family": "gaussian", "dim": 2, "link": "linear"},
]
SBN = [
    {"name": "z2", "family": "bernoulli", "dim": 3},
    {"name": "z1", "family": "bernoulli", "dim": 3, "link": "linear"},
    {"name": "x", "family": "bernoulli", "dim": 4, "link": "linear"},
]
# DDC-HM's state across sleep phases (running recognition statistics, chosen ridges, adaptive-memory scores) is
# in its state_dict, so it resumes exactly whenever the checkpoint is at a sleep phase (Trainer.fit docstring)
DDC = {
    "sleep_samples": 40,
    "features": 8,
    "recognition_hidden": 8,
    "recognition_memory": 0.0,
    "recognition_ridge": 1e-3,
}
# 60 points in minibatches of 20: 3 iterations per epoch
TRAIN = {"batch_size": 20, "lr": 1e-2, "seed": 1, "monitor_samples": 20, "log_every": 2}


def build(name: str, layers=LAYERS, **options):
    model = wakesleep.build_model({"layers": layers, "dtype": "float64", "seed": 0})
    torch.manual_seed(123)  # proposal initialisation; a resumed run overwrites it from the checkpoint
    return model, wakesleep.build_algorithm(name, model, **options)


def data(n: int = 60) -> torch.Tensor:
    model = wakesleep.build_model({"layers": LAYERS, "dtype": "float64", "seed": 7})
    return model.sample(n, generator=torch.Generator().manual_seed(5))[-1]


def assert_same_state(a: Trainer, b: Trainer) -> None:
    """Model, algorithm state and both optimisers are identical, bit for bit."""
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    sa, sb = a.algorithm.state_dict(), b.algorithm.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for oa, ob in ((a.optimizer_, b.optimizer_), (a.recognition_optimizer_, b.recognition_optimizer_)):
        assert (oa is None) == (ob is None)
        if oa is not None:
            da, db = oa.state_dict()["state"], ob.state_dict()["state"]
            assert da.keys() == db.keys()
            for i in da:
                assert all(torch.equal(da[i][k], db[i][k]) for k in da[i])
    assert a.n_iter_ == b.n_iter_


def run_split(tmp_path: Path, name: str, options: dict, stop: int, make_data=data, layers=LAYERS, **train):
    """An uninterrupted 4-epoch run, and a run stopped after ``stop`` iterations then resumed to 4 epochs."""
    kw = {**TRAIN, **train}
    full = Trainer(build(name, layers, **options)[1], epochs=4, **kw).fit(make_data())
    global_full = torch.get_rng_state()
    Trainer(build(name, layers, **options)[1], epochs=4, max_iters=stop, out_dir=tmp_path, **kw).fit(make_data())
    torch.manual_seed(999)  # the resumed run must not depend on the global RNG state it starts in
    resumed = Trainer(build(name, layers, **options)[1], epochs=4, out_dir=tmp_path, **kw)
    resumed.fit(make_data(), resume_from=tmp_path / "checkpoint")
    assert torch.equal(torch.get_rng_state(), global_full)  # the global random stream continued too
    return full, resumed


@pytest.mark.parametrize(
    ("name", "options", "stop", "sleep_every"),
    [
        ("ddc_hm", DDC, 6, 1),  # 2 epochs + 2 more
        ("ddc_hm", DDC, 4, 1),  # a checkpoint in the middle of an epoch
        ("ddc_hm", {**DDC, "recognition_ridge": "auto", "recognition_ridge_every": 1}, 6, 1),
        ("ddc_hm", DDC, 6, 2),  # sleep samples kept between sleep phases; the checkpoint is at a sleep phase
        ("ddc_hm", {**DDC, "recognition_input": "message"}, 6, 1),  # the message's standardisation is state
        ("ddc_hm", {**DDC, "recognition": "mlp", "mlp_steps": 3}, 6, 1),  # the MLP recognition's Adam state
        ("rws", {"k": 3}, 6, 1),
        ("rws", {"k": 3}, 4, 1),
        ("vae", {}, 4, 1),
        ("al_ws", {"sleep_samples": 40}, 4, 1),
        # DDC-HM's defaults: running recognition statistics (memory "auto") and a ridge re-chosen every 2 phases
        (
            "ddc_hm",
            {**DDC, "recognition_memory": "auto", "recognition_ridge": "auto", "recognition_ridge_every": 2},
            6,
            1,
        ),
        (
            "ddc_hm",
            {**DDC, "recognition_memory": "adaptive", "recognition_ridge_every": 2},
            7,
            1,
        ),  # its generator (bandwidth search, random components) is state
    ],
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, name, options, stop, sleep_every):
    full, resumed = run_split(tmp_path, name, options, stop, sleep_every=sleep_every)
    assert resumed.start_iter_ == stop and resumed.n_iter_ == 12 and resumed.epochs_ == 4.0
    assert_same_state(full, resumed)


def test_resume_redraws_dynamic_binarisation_mid_epoch(tmp_path):
    """A DataSet binarised afresh each epoch: the epoch in progress gets the same binary draw again."""
    grey = torch.rand(60, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def make_data():
        return DataSet.create(grey, binarize="dynamic", seed=4, dtype=torch.float64)

    full, resumed = run_split(tmp_path, "rws", {"k": 2}, 4, make_data=make_data, layers=SBN)
    assert_same_state(full, resumed)


class CountingAlgo(Algorithm):
    """Records the wake-step index of every sleep phase; its state is not all tensors (so ``algorithm.pt``)."""

    def __init__(self, model):
        super().__init__(model)
        self.wakes, self.sleeps = 0, []

    def state_dict(self):
        return {"wakes": self.wakes, "sleeps": list(self.sleeps)}

    def load_state_dict(self, state):
        self.wakes, self.sleeps = state["wakes"], list(state["sleeps"])

    def sleep(self):
        self.sleeps.append(self.wakes)
        return {}

    def wake_gradient(self, x):
        self.wakes += 1
        return {n: torch.full_like(p, 0.1) for n, p in self.model.named_parameters()}


def test_resume_between_sleep_phases_sleeps_first(tmp_path):
    """Sleep state is not checkpointed: resumed between two sleep phases, the trainer runs sleep() first."""
    model = build("rws", k=2)[0]
    first = CountingAlgo(model)
    Trainer(first, epochs=4, max_iters=4, sleep_every=3, out_dir=tmp_path, **TRAIN).fit(data())
    assert first.sleeps == [0, 3]
    assert (tmp_path / "checkpoint" / "algorithm.pt").is_file()
    second = CountingAlgo(build("rws", k=2)[0])
    Trainer(second, epochs=4, sleep_every=3, out_dir=tmp_path, **TRAIN).fit(data(), resume_from=tmp_path / "checkpoint")
    assert second.sleeps == [0, 3, 4, 6, 9]  # restored, then iteration 4 (the extra one), 6 and 9
    assert second.wakes == 12


def test_crash_after_a_checkpoint_resumes_exactly_and_drops_later_metrics(tmp_path):
    """A run that dies after its last checkpoint: metrics.jsonl is cut back to the checkpoint, then appended to."""
    full = Trainer(build("rws", k=3)[1], epochs=4, **TRAIN).fit(data())

    def crash(trainer, record):
        if record["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(build("rws", k=3)[1], epochs=4, checkpoint_every=4, out_dir=tmp_path, callback=crash, **TRAIN).fit(
            data()
        )
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 4
    assert [r["step"] for r in wio.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 2, 4, 6]
    resumed = Trainer(build("rws", k=3)[1], epochs=4, checkpoint_every=4, out_dir=tmp_path, **TRAIN)
    resumed.fit(data(), resume_from=tmp_path / "checkpoint")
    assert_same_state(full, resumed)
    records = wio.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in resumed.history_] == [6, 8, 10, 12]
    assert records[-1]["seconds"] >= records[2]["seconds"]  # wall time counts on from the checkpoint
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 12 and state["format"] == 1 and state["algorithm"] == "rws"
    assert set(wio.load_tensors(tmp_path / "checkpoint" / "rng.safetensors")) == {"torch", "order", "monitor"}


def test_checkpoint_is_replaced_as_a_whole(tmp_path, monkeypatch):
    """A failure while writing a checkpoint leaves the previous one complete, and no temporary directory."""
    full = Trainer(build("rws", k=3)[1], epochs=4, **TRAIN).fit(data())
    calls = {"n": 0}
    real = wio.save_json

    def failing_save_json(path, obj, indent=2):
        if Path(path).name == "state.json":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("disk full")
        real(path, obj, indent)

    monkeypatch.setattr(wio, "save_json", failing_save_json)
    with pytest.raises(OSError, match="disk full"):
        Trainer(build("rws", k=3)[1], epochs=4, checkpoint_every=3, out_dir=tmp_path, **TRAIN).fit(data())
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "metrics.jsonl"]
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 3
    resumed = Trainer(build("rws", k=3)[1], epochs=4, out_dir=tmp_path, **TRAIN)
    resumed.fit(data(), resume_from=tmp_path / "checkpoint")
    assert_same_state(full, resumed)  # model, optimiser and RNG files of the checkpoint are all from step 3


@pytest.fixture
def rws_checkpoint(tmp_path):
    Trainer(build("rws", k=2)[1], epochs=2, out_dir=tmp_path / "run", **TRAIN).fit(data())
    return tmp_path / "run" / "checkpoint"


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ("missing_dir", ["nowhere: checkpoint directory not found"]),
        ("missing_rng", ["rng.safetensors: file not found"]),
        ("bad_state", ["state.json: field 'step'"]),
        ("model_shape", ["model.safetensors", "'layers.z1.", "config and checkpoint differ"]),
        ("algorithm", ["state.json", "algorithm 'rws'", "'vae'"]),
        ("proposal_shape", ["algorithm.safetensors", "'proposal."]),
        ("batch_size", ["state.json", "batch_size is 20 in the checkpoint but 30"]),
        ("finished", ["state.json", "nothing to resume"]),
    ],
)
def test_bad_checkpoint_or_config_is_a_user_error_and_changes_nothing(rws_checkpoint, change, needles):
    ckpt, epochs, batch = rws_checkpoint, 4, 20
    name, options, layers = "rws", {"k": 2}, LAYERS
    if change == "missing_dir":
        ckpt = ckpt.parent / "nowhere"
    elif change == "missing_rng":
        (ckpt / "rng.safetensors").unlink()
    elif change == "bad_state":
        (ckpt / "state.json").write_text('{"step": -1}')
    elif change == "model_shape":
        layers = [LAYERS[0], {**LAYERS[1], "dim": 3}, LAYERS[2]]
    elif change == "algorithm":
        name, options = "vae", {}
    elif change == "proposal_shape":
        options = {"k": 2, "proposal_hidden": 5}
    elif change == "batch_size":
        batch = 30
    elif change == "finished":
        epochs = 2
    model, algo = build(name, layers, **options)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = (rws_checkpoint.parent / "metrics.jsonl").read_bytes()
    trainer = Trainer(algo, epochs=epochs, out_dir=rws_checkpoint.parent, **{**TRAIN, "batch_size": batch})
    with pytest.raises(WakesleepError) as info:
        trainer.fit(data(), resume_from=ckpt)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (rws_checkpoint.parent / "metrics.jsonl").read_bytes() == metrics


# --------------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------------
CONFIG = {
    "model": {"layers": LAYERS, "dtype": "float64"},
    "algorithm": {"name": "ddc_hm", **DDC},
    "train": {"epochs": 1, "batch_size": 25, "lr": 1.0e-2, "seed": 0, "log_every": 2, "samples": 50, "threads": 1},
    "data": {"source": "model", "n": 100},
}


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_cli_resume_continues_the_run(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert main(["train", "--config", str(cfg), "--out", str(ref), "--set", "train.epochs=2", "--no-progress"]) == 0
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    rc = main(["train", "--config", str(cfg), "--out", str(run), "--resume", "--set", "train.epochs=2"])
    out = capsys.readouterr().out
    assert rc == 0 and "resumed at iteration 4: 4 more, 8 in all" in out
    ours, theirs = wio.load_tensors(run / "model.safetensors"), wio.load_tensors(ref / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [r["step"] for r in wio.read_jsonl(run / "metrics.jsonl")] == [0, 2, 4, 6, 8]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 8
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == [".wakesleep"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # the CLI compares the config with the run's config.yaml first (the checkpoint's own checks are the API's)
        (["--set", "train.epochs=2", "--set", "model.layers.1.dim=3"], ["config differs", "model.layers"]),
        (["--set", "train.epochs=2", "--set", "algorithm.features=9"], ["config differs", "algorithm.features"]),
        (["--set", "train.epochs=2", "--set", "data.n=80"], ["config differs", "data.n"]),
        ([], ["state.json", "nothing to resume"]),
        (["--set", "train.epochs=2", "--overwrite"], ["--resume", "--overwrite"]),
        (["--set", "train.epochs=2", "--no-checkpoint"], ["checkpoint: checkpoint directory not found"]),
        (["--set", "train.epochs=2", "--no-dir"], ["--out", "directory not found"]),
    ],
)
def test_cli_resume_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, needles):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    if "--no-checkpoint" in args:
        args.remove("--no-checkpoint")
        for p in (run / "checkpoint").iterdir():
            p.unlink()
        (run / "checkpoint").rmdir()
    if "--no-dir" in args:
        args.remove("--no-dir")
        run = tmp_path / "elsewhere"
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = main(["train", "--config", str(cfg), "--out", str(run), "--resume", "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(tmp_path) == before

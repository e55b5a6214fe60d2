"""``train.tensorboard: true``: TensorBoard event files next to metrics.jsonl, kept consistent across resumes.

The event files are read back with tensorboardX's protobuf classes, and TensorBoard's rule for restarted runs is
applied (a ``SessionLog.START`` event at step ``s`` hides the events of earlier files at steps ``>= s``), so the
tests check what TensorBoard shows: the records of ``metrics.jsonl``, step for step.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from wakesleep import runs
from wakesleep.cli import main
from wakesleep.io import read_jsonl
from wakesleep.spec import RunSpec
from wakesleep.training import tensorboard as tb
from wakesleep.training.options import TrainOptions

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402

LAYERS = [
    {"name": "z1", "family": "bernoulli", "dim": 3},
    {"name": "x", "family": "bernoulli", "dim": 9, "link": "linear"},
]


def raw_config(**train) -> dict:
    return {
        "model": {"layers": LAYERS, "dtype": "float64", "seed": 0},
        "algorithm": {"name": "rws", "k": 3},
        "train": {"epochs": 4, "batch_size": 20, "lr": 1e-2, "seed": 1, "log_every": 2, "samples": 20, **train},
        "data": {"source": "model", "n": 60},
    }


def write_config(tmp_path: Path, **train) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config(**train)))
    return path


def image_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, x=(rng.random((60, 3, 3)) < 0.3).astype(np.float64))  # 3 x 3 images: DataSet.image_shape
    return path


def events(path: Path):
    """The events of one TFRecord file (length, crc, payload, crc)."""
    data = path.read_bytes()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[i + 12 : i + 12 + n])
        yield event
        i += 12 + n + 4


def visible(log_dir: Path) -> tuple[dict[str, dict[int, float]], dict[str, set[int]], list[int]]:
    """What TensorBoard shows: ``(scalars tag -> step -> value, images tag -> steps, purge steps per file)``."""
    scalars: dict[str, dict[int, float]] = {}
    images: dict[str, set[int]] = {}
    purges = []
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event files in {log_dir}"
    for path in files:
        for e in events(path):
            if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START:
                purges.append(e.step)
                for d in scalars.values():
                    for s in [s for s in d if s >= e.step]:
                        del d[s]
                for steps in images.values():
                    steps -= {s for s in steps if s >= e.step}
            for v in e.summary.value:
                if v.HasField("image"):
                    images.setdefault(v.tag, set()).add(e.step)
                else:
                    scalars.setdefault(v.tag, {})[e.step] = v.simple_value
    return scalars, images, purges


def assert_shows_metrics(run: Path) -> dict[str, set[int]]:
    """TensorBoard shows every number of every record of metrics.jsonl, and nothing else; returns the images."""
    records = read_jsonl(run / "metrics.jsonl")
    scalars, images, _ = visible(run / tb.TENSORBOARD_DIR)
    expected: dict[str, dict[int, float]] = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, int | float):
                expected.setdefault(k, {})[r["step"]] = v
    assert scalars.keys() == expected.keys()
    for tag, values in expected.items():
        assert scalars[tag].keys() == values.keys(), tag
        if tag != "seconds":
            np.testing.assert_allclose([scalars[tag][s] for s in values], list(values.values()), rtol=1e-6, atol=1e-9)
    return images


def test_the_option_is_declared_off_and_documented():
    assert TrainOptions().tensorboard is False
    row = next(
        r for r in __import__("wakesleep.schema").schema.option_table(TrainOptions) if r["name"] == "tensorboard"
    )
    assert "tensorboard/" in row["doc"] and "wakesleep[tensorboard]" in row["doc"]


def test_train_writes_the_records_and_sample_grids_and_changes_nothing_else(tmp_path, capsys):
    cfg = write_config(tmp_path, checkpoint_every=3)
    data = image_data(tmp_path)
    common = ["--config", str(cfg), "--no-progress", "--set", "data.source=file", "--set", f"data.path={data}"]
    on, off = tmp_path / "on", tmp_path / "off"
    assert main(["train", "--out", str(on), *common, "--set", "train.tensorboard=true"]) == 0
    assert main(["train", "--out", str(off), *common]) == 0
    images = assert_shows_metrics(on)
    assert images == {"samples": {r["step"] for r in read_jsonl(on / "metrics.jsonl")}}
    assert not (off / tb.TENSORBOARD_DIR).exists()
    # the sample grids draw from their own generator: the training is the same, file for file
    for name in ("model.safetensors", "samples.npz", "checkpoint/model.safetensors", "checkpoint/rng.safetensors"):
        assert (on / name).read_bytes() == (off / name).read_bytes(), name
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(on / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(off / "metrics.jsonl")]
    assert yaml.safe_load((on / "config.yaml").read_text())["train"]["tensorboard"] is True


def test_no_images_when_the_observations_are_not_known_to_be_images(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(write_config(tmp_path, tensorboard=True)), "--out", str(out)]) == 0
    assert assert_shows_metrics(out) == {}


def test_a_resumed_run_appends_and_tensorboard_hides_what_the_checkpoint_lost(tmp_path):
    """Stopped at step 10 after logging steps 6 and 8 past its checkpoint (5): the resumed file purges from 6."""
    spec = RunSpec.from_mapping(raw_config(checkpoint_every=5, tensorboard=True))
    reference = tmp_path / "reference"
    runs.prepare(spec).fit(reference, progress=False)

    class Stop(Exception):
        pass

    def stop_at_10(trainer, record):
        if record["step"] == 10:
            raise Stop  # before the TensorBoard writer sees step 10 and before the checkpoint of step 10

    out = tmp_path / "run"
    with pytest.raises(Stop):
        runs.prepare(spec).fit(out, progress=False, callback=stop_at_10)
    assert max(visible(out / tb.TENSORBOARD_DIR)[0]["grad_norm"]) == 8
    runs.prepare(spec).fit(out, progress=False, resume_from=out / "checkpoint")
    assert len(list((out / tb.TENSORBOARD_DIR).iterdir())) == 2
    assert visible(out / tb.TENSORBOARD_DIR)[2] == [0, 6]
    assert_shows_metrics(out)
    for name in ("model.safetensors", "samples.npz"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    ref = visible(reference / tb.TENSORBOARD_DIR)[0]
    got = visible(out / tb.TENSORBOARD_DIR)[0]
    assert got["cov_gap"] == ref["cov_gap"]  # grad_norm at step 6 averages fewer iterations (those since step 5)
    assert {s: v for s, v in got["grad_norm"].items() if s != 6} == {
        s: v for s, v in ref["grad_norm"].items() if s != 6
    }

    # a longer resumed run continues in the same directory (train.tensorboard may be switched on for it)
    longer = spec.replace(train={"epochs": 6})
    runs.prepare(longer).fit(out, progress=False, resume_from=out / "checkpoint")
    assert visible(out / tb.TENSORBOARD_DIR)[2] == [0, 6, 13]
    assert_shows_metrics(out)


def test_a_rollback_reopens_the_log_without_the_abandoned_steps(tmp_path):
    writer = tb.TensorBoardWriter(tmp_path / "tb")
    history: list[dict] = []
    trainer = SimpleNamespace(history_=history, start_iter_=0, model=None)
    for step in (0, 2, 4, 6):
        history.append({"step": step, "grad_norm": float(step)})
        writer(trainer, history[-1])
    del history[2:]  # the trainer went back to a checkpoint at step 3 and keeps the records up to it
    history.append({"step": 4, "grad_norm": -4.0})
    writer(trainer, history[-1])
    writer.close()
    scalars, _, purges = visible(tmp_path / "tb")
    assert purges == [0, 3] and scalars["grad_norm"] == {0: 0.0, 2: 2.0, 4: -4.0}


def test_the_experiments_own_fits_write_their_tracked_numbers(tmp_path):
    from wakesleep.experiments.base import Experiment, ExperimentContext

    class Toy(Experiment):
        name = "toy"

    raw = raw_config(tensorboard=True)
    ctx = ExperimentContext(Toy(), raw, None, tmp_path)
    model = runs.build_model(ctx.spec)
    data = runs.load_data(ctx.spec, model)
    trainer, history = ctx.fit(ctx.algorithm(model), data, track=lambda: {"tracked": 1.5}, image_shape=(3, 3))
    scalars, images, _ = visible(tmp_path / tb.TENSORBOARD_DIR)
    steps = {h["step"] for h in history}
    assert scalars["tracked"] == dict.fromkeys(steps, 1.5) and images == {"samples": steps}
    assert set(scalars["grad_norm"]) == {r["step"] for r in trainer.history_ if "grad_norm" in r}


def test_without_the_package_train_and_experiment_stop_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tb, "summary_writer_class", lambda: None)
    cfg = write_config(tmp_path, tensorboard=True)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: train.tensorboard: true needs the tensorboardX package")
    assert "pip install 'wakesleep[tensorboard]'" in err
    exp = tmp_path / "exp"
    assert main(["experiment", "synthetic", "--quick", "--out", str(exp), "--set", "train.tensorboard=true"]) == 2
    assert "train.tensorboard" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_image_helpers():
    assert tb.image_shape_of(SimpleNamespace(image_shape=(3, 3)), 9) == (3, 3)
    assert tb.image_shape_of(SimpleNamespace(image_shape=(2, 2, 3)), 12) == (2, 2, 3)
    assert tb.image_shape_of(SimpleNamespace(image_shape=(2, 2, 2)), 8) is None  # not drawable
    assert tb.image_shape_of(None, 784) == (28, 28) and tb.image_shape_of(None, 10) is None
    grid = tb.image_grid(np.arange(5 * 6, dtype=float).reshape(5, 6), (2, 3))
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2, 1) and grid.min() == 0.0 and grid.max() == 1.0
    assert tb.chain_callbacks(None, None) is None
    seen = []
    tb.chain_callbacks(lambda t, r: seen.append(1), None, lambda t, r: seen.append(2))(None, {})
    assert seen == [1, 2]

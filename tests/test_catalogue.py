"""A catalogue of named bad inputs: each exits with status 2, prints exactly one ``error:`` line and no
traceback, and leaves the disk as it was (nothing new, nothing changed, nothing deleted).

The cases cover ``train`` (config fields, files, data against each family's support, output directories,
``--resume``), ``sample``, ``experiment``, ``evaluate``, ``bench`` and the Python API (which raises
``WakesleepError`` with the same one line). ``CASES`` is also read by ``benchmarks/reliability.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from wakesleep.cli import main
from wakesleep.errors import WakesleepError

pytestmark = pytest.mark.usefixtures("one_thread")

GAUSS = [
    {"name": "z1", "family": "gaussian", "dim": 2},
    {"name": "x", "family": "gaussian", "dim": 3, "link": "linear"},
]
CONFIG = {
    "model": {"layers": GAUSS, "dtype": "float64"},
    "algorithm": {"name": "rws", "k": 2},
    "train": {"epochs": 1, "batch_size": 10, "samples": 20, "log_every": 1},
    "data": {"source": "model", "n": 30},
}

# (name, dotted key, bad value, a word the message must contain)
FIELDS = [
    ("train.epochs zero", "train.epochs", 0, "train.epochs"),
    ("train.epochs text", "train.epochs", "many", "train.epochs"),
    ("train.epochs float", "train.epochs", 2.5, "train.epochs"),
    ("train.batch_size negative", "train.batch_size", -3, "train.batch_size"),
    ("train.batch_size list", "train.batch_size", [1, 2], "train.batch_size"),
    ("train.lr negative", "train.lr", -1.0, "train.lr"),
    ("train.lr zero", "train.lr", 0, "train.lr"),
    ("train.lr nan", "train.lr", float("nan"), "train.lr"),
    ("train.lr inf", "train.lr", float("inf"), "train.lr"),
    ("train.lr text", "train.lr", "fast", "train.lr"),
    ("train.recognition_lr negative", "train.recognition_lr", -1e-3, "train.recognition_lr"),
    ("train.seed negative", "train.seed", -1, "train.seed"),
    ("train.seed 2^70", "train.seed", 2**70, "train.seed"),
    ("train.seed text", "train.seed", "zero", "train.seed"),
    ("train.device tpu", "train.device", "tpu", "train.device"),
    ("train.device number", "train.device", 3, "train.device"),
    ("train.dtype float16", "train.dtype", "float16", "train.dtype"),
    ("train.sleep_every zero", "train.sleep_every", 0, "train.sleep_every"),
    ("train.log_every negative", "train.log_every", -2, "train.log_every"),
    ("train.checkpoint_every negative", "train.checkpoint_every", -1, "train.checkpoint_every"),
    ("train.max_iters zero", "train.max_iters", 0, "train.max_iters"),
    ("train.samples zero", "train.samples", 0, "train.samples"),
    ("train.samples huge", "train.samples", 10**12, "train.samples"),
    ("train.precision half", "train.precision", "half", "train.precision"),
    ("train.precision float16 on cpu", "train.precision", "float16", "train.precision"),
    ("train.threads zero", "train.threads", 0, "train.threads"),
    ("train.on_divergence maybe", "train.on_divergence", "maybe", "train.on_divergence"),
    ("train.max_rollbacks negative", "train.max_rollbacks", -1, "train.max_rollbacks"),
    ("train unknown key", "train.lrr", 1, "train.lrr"),
    ("train section a list", "train", [1, 2], "train"),
    ("algorithm unknown", "algorithm.name", "nope", "algorithm.name"),
    ("algorithm name number", "algorithm.name", 5, "algorithm.name"),
    ("algorithm unknown option", "algorithm.kk", 3, "algorithm.kk"),
    ("algorithm.k zero", "algorithm.k", 0, "algorithm.k"),
    ("algorithm.k text", "algorithm.k", "many", "algorithm.k"),
    ("algorithm.k float", "algorithm.k", 2.5, "algorithm.k"),
    ("algorithm.proposal_hidden negative", "algorithm.proposal_hidden", [-4], "algorithm.proposal_hidden"),
    ("algorithm.q_update bogus", "algorithm.q_update", "bogus", "algorithm.q_update"),
    ("algorithm section a number", "algorithm", 7, "algorithm"),
    ("data.n zero", "data.n", 0, "data.n"),
    ("data.n text", "data.n", "lots", "data.n"),
    ("data.n huge", "data.n", 10**12, "data.n"),
    ("data.seed negative", "data.seed", -5, "data.seed"),
    ("data.source unknown", "data.source", "nowhere", "data"),
    ("data unknown key", "data.nn", 5, "data.nn"),
    ("data.true_params missing", "data.true_params", "nope.npz", "nope.npz"),
    ("model.layers empty", "model.layers", [], "model.layers"),
    ("model.layers a mapping", "model.layers", {"a": 1}, "model.layers"),
    ("model.seed 2^70", "model.seed", 2**70, "model.seed"),
    ("model.dtype float16", "model.dtype", "float16", "model.dtype"),
    ("model unknown key", "model.bogus", 1, "model.bogus"),
    ("model.init missing", "model.init", "missing.npz", "missing.npz"),
    ("layer dim zero", "model.layers.1.dim", 0, "dim"),
    ("layer dim huge", "model.layers.1.dim", 10**10, "dim"),
    ("layer dim text", "model.layers.1.dim", "three", "dim"),
    ("layer family unknown", "model.layers.1.family", "laplac", "family"),
    ("layer link unknown", "model.layers.1.link", "nope", "link"),
    ("layer name not identifier", "model.layers.0.name", "z 1", "name"),
    ("layer name duplicate", "model.layers.1.name", "z1", "name"),
    ("layer unknown key", "model.layers.1.bogus", 1, "bogus"),
    ("layer learn_variance maybe", "model.layers.1.learn_variance", "maybe", "learn_variance"),
    ("layer variance negative", "model.layers.1.variance", -1.0, "variance"),
    ("layer init_std nan", "model.layers.1.init_std", float("nan"), "init_std"),
    ("layer hidden negative", "model.layers.1.hidden", [-3], "hidden"),
    ("top layer link", "model.layers.0.link", "linear", "link"),
    ("mog below the top", "model.layers.1.family", "mog", "mog"),
    ("categorical without categories", "model.layers.1.family", "categorical", "categories"),
    ("experiment section a list", "experiment", [1], "experiment"),
]

ALGORITHM_OPTIONS = [
    ("ddc_hm", "sleep_samples", "many"),
    ("ddc_hm", "sleep_samples", 0),
    ("ddc_hm", "recognition_hidden", -5),
    ("ddc_hm", "features", 0),
    ("ddc_hm", "grad_ridge", -1.0),
    ("ddc_hm", "recognition", "magic"),
    ("ddc_hm", "encoding", "cubic"),
    ("ddc_hm", "recognition_memory", 2.0),
    ("ddc_hm", "beta", "gamma"),
    ("al_ws", "sleep_samples", 1),
    ("al_ws", "kernel", "nope"),
    ("vae", "proposal_hidden", [-4]),
    ("vae", "k", 0),
    ("iwae", "k", -1),
    ("vimco", "k", 1.5),
    ("bbvi", "k", "x"),
    ("flow", "flow_type", "nope"),
    ("wake_sleep", "bogus_option", 1),
]


def _set(raw: dict, key: str, value) -> dict:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    return raw


def _config(tmp: Path, raw: dict, name: str = "c.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _raw(**changes) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(CONFIG))
    for key, value in changes.items():
        _set(raw, key, value)
    return raw


def _data_case(family: str, values: np.ndarray, fmt: str = "npz", extra: dict | None = None, dim: int = 3):
    def build(tmp: Path) -> list[str]:
        layers = [
            {"name": "z1", "family": "gaussian", "dim": 2},
            {"name": "x", "family": family, "dim": dim, "link": "linear"},
        ]
        layers[1].update(extra or {})
        path = tmp / f"d.{fmt}"
        if fmt == "npz":
            np.savez(path, x=values)
        elif fmt == "npy":
            np.save(path, values)
        else:
            path.write_text("\n".join(",".join(map(str, row)) for row in np.atleast_2d(values)))
        raw = _raw()
        raw["model"]["layers"] = layers
        raw["data"] = {"source": "file", "path": str(path)}
        return ["train", "--config", str(_config(tmp, raw)), "--out", str(tmp / "out")]

    return build


ok = np.random.default_rng(0).normal(size=(20, 3))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _train_argv(tmp: Path, raw: dict | None = None, *extra: str) -> list[str]:
    return ["train", "--config", str(_config(tmp, raw or _raw())), "--out", str(tmp / "out"), *extra]


def _trained_run(tmp: Path) -> Path:
    run = tmp / "run"
    assert main(["train", "--config", str(_config(tmp, _raw(), "run.yaml")), "--out", str(run), "--no-progress"]) == 0
    return run


CLI: dict[str, Callable[[Path], list[str]]] = {}
for fmt in ("npz", "npy", "csv"):
    CLI[f"train: {fmt} data nan"] = _data_case("gaussian", np.where(np.eye(20, 3) > 0, np.nan, ok), fmt=fmt)
    CLI[f"train: {fmt} data one row"] = _data_case("gaussian", ok[:1], fmt=fmt)
    CLI[f"train: {fmt} data wrong columns"] = _data_case("gaussian", ok[:, :2], fmt=fmt)
    CLI[f"train: {fmt} bernoulli data 2"] = _data_case("bernoulli", np.full((10, 3), 2.0), fmt=fmt)
for experiment in ("synthetic", "patches", "sbn", "gradient", "circle", "dynamics", "images", "ica"):
    CLI[f"experiment {experiment}: unknown key"] = lambda tmp, e=experiment: [
        "experiment",
        e,
        "--out",
        str(tmp / "e"),
        "--set",
        "experiment.bogus=1",
    ]
    CLI[f"experiment {experiment}: bad train value"] = lambda tmp, e=experiment: [
        "experiment",
        e,
        "--out",
        str(tmp / "e"),
        "--set",
        "train.batch_size=0",
    ]
for flag, value in [
    ("--ais-chains", "0"),
    ("--ais-temperatures", "0"),
    ("--posterior-samples", "0"),
    ("--nll-method", "bogus"),
    ("--proposal-steps", "-1"),
    ("--device", "tpu"),
    ("--seed", "-1"),
    ("--n-samples", "-5"),
]:
    CLI[f"evaluate: {flag} {value}"] = lambda tmp, f=flag, v=value: [
        "evaluate",
        "--run",
        str(_trained_run(tmp)),
        "--metrics",
        "mmd,nll",
        f,
        v,
    ]
for flag, value in [("--epochs", "-1"), ("--ais-points", "-1"), ("--set", "bogus.key=1"), ("--set", "nokey")]:
    CLI[f"bench: {flag} {value}"] = lambda tmp, f=flag, v=value: ["bench", "sbn", f, v, "--out", str(tmp / "b")]
for name, key, value, _ in FIELDS:
    CLI[f"train: {name}"] = lambda tmp, key=key, value=value: _train_argv(tmp, _set(_raw(), key, value))
for algo, key, value in ALGORITHM_OPTIONS:
    CLI[f"train: algorithm {algo}.{key}={value!r}"] = lambda tmp, a=algo, k=key, v=value: _train_argv(
        tmp, _set(_raw(**{"algorithm": {"name": a}}), f"algorithm.{k}", v)
    )
CLI.update(
    {
        "train: config missing": lambda tmp: ["train", "--config", str(tmp / "none.yaml"), "--out", str(tmp / "o")],
        "train: config is a directory": lambda tmp: ["train", "--config", str(tmp), "--out", str(tmp / "o")],
        "train: config empty": lambda tmp: _train_argv_from(tmp, ""),
        "train: config bad yaml": lambda tmp: _train_argv_from(tmp, "model: [unclosed\n"),
        "train: config top-level list": lambda tmp: _train_argv_from(tmp, "- 1\n- 2\n"),
        "train: config duplicate key": lambda tmp: _train_argv_from(tmp, yaml.safe_dump(CONFIG) + "train: {}\n"),
        "train: config binary": lambda tmp: ["train", "--config", str(_bytes(tmp)), "--out", str(tmp / "o")],
        "train: config unknown section": lambda tmp: _train_argv(tmp, {**_raw(), "bogus": 1}),
        "train: config without model": lambda tmp: _train_argv(tmp, {k: v for k, v in _raw().items() if k != "model"}),
        "train: --set without =": lambda tmp: _train_argv(tmp, None, "--set", "train.lr"),
        "train: --set empty key": lambda tmp: _train_argv(tmp, None, "--set", "=3"),
        "train: --set index out of range": lambda tmp: _train_argv(tmp, None, "--set", "model.layers.7.dim=2"),
        "train: --set into a number": lambda tmp: _train_argv(tmp, None, "--set", "train.lr.x=2"),
        "train: --out empty": lambda tmp: ["train", "--config", str(_config(tmp, _raw())), "--out", ""],
        "train: --out empty with --overwrite": lambda tmp: [
            "train",
            "--config",
            str(_config(tmp, _raw())),
            "--out",
            "",
            "--overwrite",
        ],
        "train: --out root": lambda tmp: ["train", "--config", str(_config(tmp, _raw())), "--out", "/", "--overwrite"],
        "train: --out working directory": lambda tmp: _train_out(tmp, ".", "--overwrite"),
        "train: --out parent of working directory": lambda tmp: _train_out(tmp, "..", "--overwrite"),
        "train: --out home": lambda tmp: _train_out(tmp, os.path.expanduser("~"), "--overwrite"),
        "train: --out is a file": lambda tmp: _train_out(tmp, str(_write(tmp / "f.txt", "keep"))),
        "train: --out not empty": lambda tmp: _train_out(tmp, str(_user_dir(tmp))),
        "train: --out not ours with --overwrite": lambda tmp: _train_out(tmp, str(_user_dir(tmp)), "--overwrite"),
        "train: --resume nothing there": lambda tmp: _train_out(tmp, str(tmp / "nothing"), "--resume"),
        "train: --resume with --overwrite": lambda tmp: _train_out(tmp, str(tmp / "x"), "--resume", "--overwrite"),
        "train: --resume changed seed": lambda tmp: _resume(tmp, "train.seed=9"),
        "train: --resume changed algorithm option": lambda tmp: _resume(tmp, "algorithm.k=4"),
        "train: --resume changed model": lambda tmp: _resume(tmp, "model.layers.1.dim=4"),
        "train: --resume already finished": lambda tmp: _resume(tmp),
        "train: data file missing": lambda tmp: _train_argv(tmp, _raw(data={"source": "file", "path": "no.npz"})),
        "train: data file not an array": lambda tmp: _train_argv(
            tmp, _raw(data={"source": "file", "path": str(_write(tmp / "d.npz", "not a zip"))})
        ),
        "train: data wrong columns": _data_case("gaussian", ok[:, :2]),
        "train: data nan": _data_case("gaussian", np.where(np.eye(20, 3) > 0, np.nan, ok)),
        "train: data inf": _data_case("gaussian", np.where(np.eye(20, 3) > 0, np.inf, ok)),
        "train: data one row": _data_case("gaussian", ok[:1]),
        "train: data complex": _data_case("gaussian", ok + 1j),
        "train: data strings csv": _data_case("gaussian", np.array([["a", "b", "c"]] * 5), fmt="csv"),
        "train: data 3-d": _data_case("gaussian", ok.reshape(5, 4, 3)),
        "train: bernoulli data 0-9": _data_case("bernoulli", np.arange(30.0).reshape(10, 3) % 10),
        "train: bernoulli data grey": _data_case("bernoulli", np.full((10, 3), 0.5)),
        "train: poisson data negative": _data_case("poisson", -np.ones((10, 3)), extra={"link": "softplus_linear"}),
        "train: poisson data fractional": _data_case(
            "poisson", np.full((10, 3), 1.5), extra={"link": "softplus_linear"}
        ),
        "train: gamma data zero": _data_case("gamma", np.zeros((10, 3)), extra={"link": "softplus_linear"}),
        "train: gamma data negative": _data_case("gamma", -np.ones((10, 3)), extra={"link": "softplus_linear"}),
        "train: categorical data out of range": _data_case(
            "categorical", np.full((10, 3), 7.0), extra={"categories": 3}
        ),
        "train: categorical data fractional": _data_case("categorical", np.full((10, 3), 0.5), extra={"categories": 3}),
        "sample: run missing": lambda tmp: ["sample", "--run", str(tmp / "no"), "-n", "5", "--out", str(tmp / "s.npz")],
        "sample: run empty": lambda tmp: ["sample", "--run", str(_empty(tmp)), "-n", "5", "--out", str(tmp / "s.npz")],
        "sample: n zero": lambda tmp: ["sample", "--run", str(_trained_run(tmp)), "-n", "0", "--out", str(tmp / "s")],
        "sample: n negative": lambda tmp: ["sample", "--run", str(_trained_run(tmp)), "-n", "-3", "--out", str(tmp)],
        "sample: n text": lambda tmp: ["sample", "--run", str(tmp), "-n", "many", "--out", str(tmp / "s.npz")],
        "sample: out is a directory": lambda tmp: [
            "sample",
            "--run",
            str(_trained_run(tmp)),
            "-n",
            "3",
            "--out",
            str(tmp),
        ],
        "sample: nan parameters": lambda tmp: [
            "sample",
            "--run",
            str(_nan_run(tmp)),
            "-n",
            "3",
            "--out",
            str(tmp / "s.npz"),
        ],
        "sample: corrupt model file": lambda tmp: [
            "sample",
            "--run",
            str(_corrupt_run(tmp)),
            "-n",
            "3",
            "--out",
            str(tmp / "s.npz"),
        ],
        "experiment: unknown": lambda tmp: ["experiment", "nope", "--out", str(tmp / "e")],
        "experiment: unknown key": lambda tmp: [
            "experiment",
            "circle",
            "--out",
            str(tmp / "e"),
            "--set",
            "experiment.bogus=1",
        ],
        "experiment: bad value": lambda tmp: [
            "experiment",
            "synthetic",
            "--out",
            str(tmp / "e"),
            "--set",
            "experiment.datasets=-1",
        ],
        "experiment: bad train value": lambda tmp: [
            "experiment",
            "circle",
            "--out",
            str(tmp / "e"),
            "--set",
            "train.lr=-1",
        ],
        "experiment: --resume unsupported": lambda tmp: ["experiment", "circle", "--out", str(tmp / "e"), "--resume"],
        "experiment: --resume nothing there": lambda tmp: ["experiment", "sbn", "--out", str(tmp / "e"), "--resume"],
        "experiment: --config missing": lambda tmp: [
            "experiment",
            "circle",
            "--out",
            str(tmp / "e"),
            "--config",
            str(tmp / "n.yaml"),
        ],
        "experiment: --out root": lambda tmp: ["experiment", "circle", "--out", "/", "--overwrite"],
        "experiment: --out not ours": lambda tmp: ["experiment", "circle", "--out", str(_user_dir(tmp)), "--overwrite"],
        "evaluate: run missing": lambda tmp: ["evaluate", "--run", str(tmp / "no")],
        "evaluate: unknown metric": lambda tmp: ["evaluate", "--run", str(_trained_run(tmp)), "--metrics", "bogus"],
        "evaluate: bad bandwidth": lambda tmp: ["evaluate", "--run", str(_trained_run(tmp)), "--bandwidth", "wide"],
        "evaluate: n-samples zero": lambda tmp: ["evaluate", "--run", str(_trained_run(tmp)), "--n-samples", "0"],
        "evaluate: k zero": lambda tmp: ["evaluate", "--run", str(_trained_run(tmp)), "--metrics", "nll", "--k", "0"],
        "evaluate: data missing": lambda tmp: [
            "evaluate",
            "--run",
            str(_trained_run(tmp)),
            "--data",
            str(tmp / "n.npz"),
        ],
        "evaluate: data wrong columns": lambda tmp: [
            "evaluate",
            "--run",
            str(_trained_run(tmp)),
            "--data",
            str(_npz(tmp, ok[:, :2])),
        ],
        "evaluate: data nan": lambda tmp: [
            "evaluate",
            "--run",
            str(_trained_run(tmp)),
            "--data",
            str(_npz(tmp, ok * np.nan)),
        ],
        "evaluate: nan parameters": lambda tmp: ["evaluate", "--run", str(_nan_run(tmp))],
        "bench: unknown model": lambda tmp: ["bench", "nope", "--out", str(tmp / "b")],
        "bench: epochs zero": lambda tmp: ["bench", "sbn", "--epochs", "0", "--out", str(tmp / "b")],
        "bench: unknown algorithm": lambda tmp: ["bench", "sbn", "--algorithms", "nope", "--out", str(tmp / "b")],
        "bench: --out root": lambda tmp: ["bench", "sbn", "--out", "/", "--overwrite"],
        "no command": lambda tmp: [],
        "unknown command": lambda tmp: ["frobnicate"],
        "unknown flag": lambda tmp: ["train", "--frob"],
    }
)


def _train_argv_from(tmp: Path, text: str) -> list[str]:
    return ["train", "--config", str(_write(tmp / "c.yaml", text)), "--out", str(tmp / "out")]


def _train_out(tmp: Path, out: str, *extra: str) -> list[str]:
    return ["train", "--config", str(_config(tmp, _raw())), "--out", out, *extra]


def _bytes(tmp: Path) -> Path:
    path = tmp / "c.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def _user_dir(tmp: Path) -> Path:
    d = tmp / "mine"
    d.mkdir(exist_ok=True)
    (d / "thesis.tex").write_text("irreplaceable")
    return d


def _empty(tmp: Path) -> Path:
    d = tmp / "empty"
    d.mkdir(exist_ok=True)
    return d


def _npz(tmp: Path, x: np.ndarray) -> Path:
    np.savez(tmp / "ref.npz", x=x)
    return tmp / "ref.npz"


def _resume(tmp: Path, *sets: str) -> list[str]:
    run = _trained_run(tmp)
    argv = ["train", "--config", str(tmp / "run.yaml"), "--out", str(run), "--resume"]
    for s in sets:
        argv += ["--set", s]
    return argv


def _nan_run(tmp: Path) -> Path:
    from wakesleep import io as wio

    run = _trained_run(tmp)
    tensors = wio.load_tensors(run / "model.safetensors")
    tensors["layers.x.link.weight"] = tensors["layers.x.link.weight"] * float("nan")
    wio.save_tensors(run / "model.safetensors", tensors)
    return run


def _corrupt_run(tmp: Path) -> Path:
    run = _trained_run(tmp)
    (run / "model.safetensors").write_bytes(b"\x00\x01garbage")
    return run


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns if p.is_file() else 0)
    return out


@pytest.mark.parametrize("case", sorted(CLI))
def test_bad_input_is_one_line_exit_2_and_leaves_the_disk_alone(tmp_path, monkeypatch, capsys, case):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's own file")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    argv = CLI[case](tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


# the Python API: the same mistakes raise WakesleepError with one line
def _api_cases() -> dict[str, Callable[[], object]]:
    import torch

    import wakesleep
    from wakesleep import eval as E
    from wakesleep.eval import mmd
    from wakesleep.training import Trainer

    model = wakesleep.build_model({"layers": GAUSS})
    algo = wakesleep.build_algorithm("rws", model)
    x = torch.randn(20, 3)
    return {
        "build_model: not a mapping": lambda: wakesleep.build_model([1]),
        "build_model: no layers": lambda: wakesleep.build_model({}),
        "build_model: bad family": lambda: wakesleep.build_model({"layers": [{"name": "z", "family": "x", "dim": 1}]}),
        "build_algorithm: unknown": lambda: wakesleep.build_algorithm("nope", model),
        "build_algorithm: bad option": lambda: wakesleep.build_algorithm("rws", model, k="many"),
        "build_algorithm: unknown option": lambda: wakesleep.build_algorithm("rws", model, kk=2),
        "Trainer: epochs zero": lambda: Trainer(algo, epochs=0),
        "Trainer: lr negative": lambda: Trainer(algo, lr=-1.0),
        "Trainer: precision": lambda: Trainer(algo, precision="half"),
        "Trainer: monitor_samples": lambda: Trainer(algo, monitor_samples=-1),
        "Trainer.fit: empty data": lambda: Trainer(algo).fit(torch.zeros(0, 3)),
        "ddc_hm: wake before sleep": lambda: wakesleep.build_algorithm("ddc_hm", model).wake_gradient(x),
        "eval.mmd: wrong columns": lambda: mmd(x, torch.randn(20, 2)),
        "eval.log_likelihood: wrong columns": lambda: E.log_likelihood(model, torch.randn(10, 2), k=10),
        "eval.log_likelihood: k zero": lambda: E.log_likelihood(model, x, k=0),
        "eval.ais_log_likelihood: chains zero": lambda: E.ais_log_likelihood(model, x, chains=0, temperatures=5),
        "eval.mmd_test: wrong columns": lambda: E.mmd_test(x, torch.randn(10, 2)),
        "eval.relative_mmd_test: wrong columns": lambda: E.relative_mmd_test(x, x, torch.randn(10, 2)),
        "eval.median_bandwidth: empty": lambda: E.median_bandwidth(torch.zeros(0, 3)),
        "eval.exact_log_likelihood_gaussian: nan": lambda: E.exact_log_likelihood_gaussian(model, x * float("nan")),
        "eval.recovery_error: shapes": lambda: E.recovery_error(np.zeros((3, 2)), np.zeros((4, 2))),
        "eval.fit_proposal: negative steps": lambda: E.fit_proposal(model, x, steps=-1),
    }


@pytest.mark.parametrize("case", sorted(_api_cases()))
def test_api_mistakes_raise_one_line_wakesleep_errors(case):
    with pytest.raises(WakesleepError) as info:
        _api_cases()[case]()
    assert "\n" not in str(info.value) and str(info.value)


def test_catalogue_is_large():
    assert len(CLI) + len(_api_cases()) >= 200

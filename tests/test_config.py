"""Config loading: schema, defaults, --set overrides, field-naming errors, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from wakesleep.config import apply_overrides, dump_config, parse_overrides, torch_device
from wakesleep.errors import WakesleepError
from wakesleep.spec import TRAIN_DEFAULTS, load_config, resolve_config

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "model": {
        "layers": [
            {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
            {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear"},
            {"name": "x", "family": "gaussian", "dim": 2, "link": "linear"},
        ]
    },
    "algorithm": {"name": "ddc_hm", "sleep_samples": 50, "features": 10, "recognition_hidden": 10},
    "train": {"epochs": 1, "batch_size": 20},
    "data": {"source": "model", "n": 100},
}


def write(tmp_path: Path, cfg: dict, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_defaults_filled(tmp_path):
    cfg = load_config(write(tmp_path, TINY))
    assert set(cfg) == {"model", "algorithm", "train", "data"}
    assert set(cfg["train"]) == set(TRAIN_DEFAULTS)
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["lr"] == TRAIN_DEFAULTS["lr"]
    assert cfg["train"]["dtype"] == "float32"  # follows model.dtype (default float32)
    assert cfg["data"]["seed"] == cfg["train"]["seed"] + 1
    # the algorithm's defaults are written out too
    assert cfg["algorithm"]["sleep_samples"] == 50 and "encoding" in cfg["algorithm"]
    # the dump reads back to the same config
    again = resolve_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_overrides_parse_as_yaml_scalars():
    pairs = dict(parse_overrides(["train.lr=1e-4", "train.epochs=3", "train.device=cpu", "a.b=[1, 2]", "c=null"]))
    assert pairs["train.lr"] == pytest.approx(1e-4) and isinstance(pairs["train.lr"], float)
    assert pairs["train.epochs"] == 3 and pairs["train.device"] == "cpu"
    assert pairs["a.b"] == [1, 2] and pairs["c"] is None
    with pytest.raises(WakesleepError, match="KEY=VALUE"):
        parse_overrides(["train.lr"])


def test_overrides_apply_dotted_and_list_index(tmp_path):
    cfg = load_config(write(tmp_path, TINY), ["train.lr=0.01", "model.layers.1.dim=3", "algorithm.features=7"])
    assert cfg["train"]["lr"] == 0.01
    assert cfg["model"]["layers"][1]["dim"] == 3
    assert cfg["algorithm"]["features"] == 7
    with pytest.raises(WakesleepError, match="index"):
        apply_overrides(TINY, [("model.layers.9.dim", 1)])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.lrr=1", r"config: unknown key 'train.lrr' in .*c.yaml"),
        ("bogus.x=1", r"unknown key 'bogus'"),
        ("data.nn=5", r"unknown key 'data.nn'"),
        ("algorithm.sleeep=5", r"unknown key 'algorithm.sleeep'"),
        ("algorithm.name=nope", r"algorithm.name: unknown algorithm 'nope'"),
        ("train.epochs=0", r"train.epochs must be positive"),
        ("train.lr=-1", r"train.lr must be a positive number"),
        ("train.batch_size=abc", r"train.batch_size must be an integer"),
        ("train.dtype=float16", r"train.dtype"),
        ("train.device=tpu", r"train.device"),
        ("model.layers.1.family=laplac", r"family"),
        ("model.layers.1.dim=0", r"dim"),
        ("model.layers.2.link=nope", r"link"),
    ],
)
def test_bad_fields_name_the_field(tmp_path, override, pattern):
    path = write(tmp_path, TINY)
    with pytest.raises(WakesleepError, match=pattern) as info:
        load_config(path, [override])
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(WakesleepError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [\n")
    with pytest.raises(WakesleepError, match=r"bad.yaml: invalid YAML at line"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(WakesleepError, match="mapping"):
        load_config(lst)
    nomodel = write(tmp_path, {"train": {"epochs": 1}}, "nomodel.yaml")
    with pytest.raises(WakesleepError, match="missing section 'model'"):
        load_config(nomodel)


def test_relative_paths_resolve_against_config_dir(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    cfg = dict(TINY, data={"source": "file", "path": "d.npz"})
    out = load_config(write(sub, cfg), check_model=False)
    assert out["data"]["path"] == str((sub / "d.npz").resolve())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(WakesleepError, match="CUDA is not available"):
        torch_device("cuda")


def test_shipped_configs_are_valid():
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert paths, "configs/ should hold the shipped experiment configs"
    for path in paths:
        cfg = load_config(path)
        assert cfg["model"]["layers"]


def test_synthetic_yaml_matches_builtin_and_paper():
    from wakesleep.experiments import get_experiment

    shipped = yaml.safe_load((REPO / "configs" / "synthetic.yaml").read_text())
    assert shipped == yaml.safe_load(get_experiment("synthetic").defaults_text())
    layers = shipped["model"]["layers"]
    assert [lay["dim"] for lay in layers] == [1, 2, 2]
    assert layers[0]["means"] == [[3.0], [-3.0]] and layers[0]["std"] == 0.1 and layers[0]["learn"] is False
    assert shipped["algorithm"] == {"name": "ddc_hm", "sleep_samples": 200, "features": 100, "recognition_hidden": 100}
    assert shipped["train"]["lr"] == 1e-4 and shipped["train"]["epochs"] == 1000
    assert shipped["data"]["n"] == 10000

"""The AL-WS experiments: tiny end-to-end runs, the quadrature truth of `gradient`, config files in sync."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from wakesleep.experiments import EXPERIMENTS, get_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_config_file_matches_default(name):
    """configs/NAME.yaml links to the experiment's defaults (package data, the one source): loading either gives
    the same spec, and the experiment section declares exactly the experiment's options (and ``quick``)."""
    from wakesleep.schema import fields_of
    from wakesleep.spec import RunSpec

    experiment = get_experiment(name)
    link = ROOT / "configs" / f"{name}.yaml"
    assert link.is_symlink() and link.resolve() == experiment.defaults_file.resolve()
    assert yaml.safe_load(link.read_text()) == yaml.safe_load(experiment.defaults_text())
    assert RunSpec.load(link) == RunSpec.load(experiment.defaults_file)
    section = yaml.safe_load(experiment.defaults_text())["experiment"]
    assert set(section) == set(fields_of(experiment.Options)) | {"quick"}


def test_quadrature_2d_matches_1d_reduction():
    from wakesleep.experiments.gradient import quadrature_gradient, quadrature_gradient_1d
    from wakesleep.models.zoo import softplus_gradient_model

    torch.manual_seed(0)
    b = torch.tensor([1.0, -0.5], dtype=torch.float64)
    x = softplus_gradient_model(b, 0.3).sample(5)[-1]
    lp, g2 = quadrature_gradient(b, 0.3, x, nodes=300)
    g1 = quadrature_gradient_1d(b, 0.3, x, nodes=4000)
    torch.testing.assert_close(g2, g1, rtol=1e-8, atol=1e-10)
    # the gradient is parallel to b (p(x) depends on b only through |b|)
    assert torch.allclose(g2[:, 0] * b[1], g2[:, 1] * b[0], atol=1e-10)


def test_gradient_experiment_tiny(tmp_path):
    out = tmp_path / "g"
    res = run_experiment(
        "gradient",
        out,
        overrides=[
            "experiment.b_grid=[[1.0, 0.5]]",
            "experiment.sigma_grid=[0.5]",
            "experiment.sleep_sizes=[100, 400]",
            "experiment.points=5",
            "experiment.repeats=1",
            "experiment.algorithms=[al_ws, ddc_hm]",
            "experiment.quad_nodes=200",
        ],
    )
    for f in ("results.json", "report.md", "gradient.png"):
        assert (out / f).is_file()
    data = json.loads((out / "results.json").read_text())
    assert data["quadrature_check"] < 1e-6
    assert res["summary"]["al_ws"]["400"]["min_cosine"] > 0.9
    assert "ddc_hm" in res["summary"]

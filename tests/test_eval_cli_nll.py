"""``wakesleep evaluate --metrics nll --nll-method proposal|gaussian|ais`` on tiny runs (AIS: HMC on a linear-Gaussian
chain, Gibbs sweeps on a sigmoid belief network)."""

import json
import shutil

import pytest
import yaml

from wakesleep.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ALGORITHM = {"name": "ddc_hm", "sleep_samples": 50, "features": 10, "recognition_hidden": 10}
TRAIN = {"max_iters": 5, "batch_size": 50, "lr": 1.0e-3, "seed": 0, "device": "cpu", "log_every": 5, "threads": 1}
LINEAR_GAUSSIAN = [
    {"name": "z2", "family": "gaussian", "dim": 2},
    {"name": "z1", "family": "gaussian", "dim": 3, "link": "linear"},
    {"name": "x", "family": "gaussian", "dim": 4, "link": "linear"},
]
SBN = [
    {"name": "z2", "family": "bernoulli", "dim": 3},
    {"name": "z1", "family": "bernoulli", "dim": 3, "link": "linear"},
    {"name": "x", "family": "bernoulli", "dim": 4, "link": "linear"},
]
SBN_MLP = [SBN[0], {**SBN[1], "link": "mlp", "hidden": [4]}, SBN[2]]  # not supported by AIS
# |nll - exact_nll| over 12 seeds (each also drawing different points) with these settings: at most 0.033 nats
# for AIS (32 chains, 100 temperatures, 20 points) and 0.057 for the Gaussian proposal (k = 1000, 20 points)
TOLERANCE = 0.15
# the same for AIS with Gibbs sweeps on the SBN run (--seed 0-11): at most 0.0041 nats (its posterior is close to
# the prior after 5 training steps: ESS about 32 of 32)
SBN_TOLERANCE = 0.02


def _train(tmp_path_factory, name, layers):
    root = tmp_path_factory.mktemp(name)
    cfg = root / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"layers": layers, "dtype": "float64"},
                "algorithm": ALGORITHM,
                "train": TRAIN,
                "data": {"source": "model", "n": 200},
            }
        )
    )
    out = root / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def lg_run(tmp_path_factory):
    return _train(tmp_path_factory, "lg", LINEAR_GAUSSIAN)


@pytest.fixture(scope="module")
def sbn_run(tmp_path_factory):
    return _train(tmp_path_factory, "sbn", SBN)


@pytest.fixture(scope="module")
def sbn_mlp_run(tmp_path_factory):
    return _train(tmp_path_factory, "sbn_mlp", SBN_MLP)


def _evaluate_nll(run_dir, *extra):
    argv = ["evaluate", "--run", str(run_dir), "--metrics", "nll", "--nll-points", "20", *extra]
    assert main(argv) == 0
    return json.loads((run_dir / "eval.json").read_text())["nll"]


def _assert_one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_ais_close_to_exact(lg_run, capsys):
    nll = _evaluate_nll(lg_run, "--nll-method", "ais", "--ais-chains", "32", "--ais-temperatures", "100")
    assert "(ais)" in capsys.readouterr().out
    assert nll["method"] == "ais" and nll["n_points"] == 20
    assert (nll["chains"], nll["temperatures"], nll["leapfrog"]) == (32, 100, 10)
    assert "AIS" in nll["proposal"] and "k" not in nll
    assert abs(nll["nll"] - nll["exact_nll"]) < TOLERANCE, nll
    assert len(nll["log_px"]) == 20 and abs(-sum(nll["log_px"]) / 20 - nll["nll"]) < 1e-9  # per point, in order
    assert nll["sem"] > 0 and 1.0 <= nll["ess_median"] <= 32.0 and 1.0 <= nll["ess_mean"] <= 32.0
    assert len(nll["acceptance_mean"]) == 2  # one rate per latent layer, top first
    assert all(0.3 < a <= 1.0 for a in nll["acceptance_mean"]), nll["acceptance_mean"]


def test_ais_with_gibbs_sweeps_close_to_exact_on_a_sigmoid_belief_network(sbn_run, tmp_path, capsys):
    run = shutil.copytree(sbn_run, tmp_path / "run")  # sbn_run must stay without eval.json
    nll = _evaluate_nll(run, "--nll-method", "ais", "--ais-chains", "32", "--ais-temperatures", "100")
    assert "(ais)" in capsys.readouterr().out
    assert nll["method"] == "ais" and nll["kernel"] == "gibbs" and (nll["chains"], nll["temperatures"]) == (32, 100)
    assert "Gibbs" in nll["proposal"] and "leapfrog" not in nll and "step_size_median" not in nll
    assert abs(nll["nll"] - nll["exact_nll"]) < SBN_TOLERANCE, nll
    assert len(nll["acceptance_mean"]) == 2 and all(0.0 < a < 1.0 for a in nll["acceptance_mean"])  # units changed


def test_gaussian_proposal_close_to_exact(lg_run):
    nll = _evaluate_nll(lg_run, "--nll-method", "gaussian", "--k", "1000")
    assert nll["method"] == "gaussian" and nll["k"] == 1000
    assert "GaussianPosteriorProposal" in nll["proposal"]
    assert abs(nll["nll"] - nll["exact_nll"]) < TOLERANCE, nll
    assert 1.0 <= nll["ess_mean"] <= 1000.0 and "acceptance_mean" not in nll


def test_proposal_is_the_default(lg_run):
    nll = _evaluate_nll(lg_run, "--k", "50", "--proposal-steps", "20")
    assert nll["method"] == "proposal" and nll["k"] == 50 and nll["proposal_steps"] == 20
    assert nll["proposal"].startswith("fit_proposal(steps=20)")
    assert "exact_nll" in nll and "ess_median" in nll


@pytest.mark.parametrize(
    "method, run, needles",
    [
        ("ais", "sbn_mlp_run", ["--nll-method ais", "layer z1 has a mlp link", "needs linear links"]),
        ("gaussian", "sbn_run", ["--nll-method gaussian", "bernoulli"]),
    ],
)
def test_unsuitable_model_is_a_one_line_error(request, capsys, method, run, needles):
    run_dir = request.getfixturevalue(run)
    rc = main(["evaluate", "--run", str(run_dir), "--metrics", "mmd,nll", "--nll-method", method])
    _assert_one_line_error(capsys, rc, *needles)
    assert not (run_dir / "eval.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ais-chains", "0"], "--ais-chains: must be a positive integer, got 0"),
        (["--ais-temperatures", "-3"], "--ais-temperatures: must be a positive integer, got -3"),
        (["--ais-leapfrog", "0"], "--ais-leapfrog: must be a positive integer, got 0"),
    ],
)
def test_bad_nll_options(tmp_path, capsys, extra, message):
    # checked before the run is loaded: the run directory does not even exist
    rc = main(["evaluate", "--run", str(tmp_path / "missing"), "--nll-method", "ais", *extra])
    _assert_one_line_error(capsys, rc, message)


def test_unknown_nll_method(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--run", str(tmp_path), "--nll-method", "laplace"])
    _assert_one_line_error(capsys, info.value.code, "--nll-method: invalid choice: 'laplace'")

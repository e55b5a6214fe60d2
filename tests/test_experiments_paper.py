"""The paper-scale experiments (patches, sbn) and `wakesleep bench sbn`, on tiny settings."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch

from wakesleep.cli import main
from wakesleep.experiments import experiment_config, run_experiment
from wakesleep.experiments.patches import architecture_config, prior_means

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="dataset-fashion-mnist not installed")


def test_prior_means_axes_and_diagonal():
    m = prior_means(3, 2.0, "axes")
    assert len(m) == 6 and m[0] == [2.0, 0.0, 0.0] and m[4] == [0.0, -2.0, 0.0]
    assert prior_means(2, 3.0, "diagonal") == [[3.0, 3.0], [-3.0, -3.0]]
    cfg = architecture_config(experiment_config("patches"), 7, 3)
    layers = cfg["model"]["layers"]
    assert layers[0]["dim"] == 3 and len(layers[0]["means"]) == 6 and layers[1]["dim"] == 7
    import wakesleep

    model = wakesleep.build_model(cfg["model"])
    assert model.dims == [3, 7, 256]
    z2 = model.sample(500)[0]
    assert ((z2.abs() > 1.5).sum(1) == 1).all()  # exactly one active top unit per draw


TINY_PATCHES = [
    "experiment.architectures=[[3, 2]]",
    "data.n=300",
    "data.n_test=200",
    "train.max_iters=4",
    "algorithm.sleep_samples=100",
    "algorithm.features=[10, 20]",
    "algorithm.recognition_hidden=20",
    "experiment.mmd_samples=100",
    "experiment.ais_points=4",
    "experiment.ais_chains=3",
    "experiment.ais_temperatures=5",
    "experiment.ais_leapfrog=2",
    "train.threads=1",
    "experiment.algorithms=[ddc_hm, {name: iwae, label: iwae_k50, k: 3}]",
]


def test_patches_tiny(tmp_path):
    out = tmp_path / "patches"
    sets = TINY_PATCHES
    res = run_experiment("patches", out, overrides=sets, progress=False)
    arch = res["architectures"][0]
    assert (arch["d1"], arch["d2"]) == (3, 2)
    rel = arch["relative_test"]
    assert 0.0 <= rel["p_value"] <= 1.0 and rel["y"] == "iwae_k50" and rel["z"] == "ddc_hm"
    for name in ("results.json", "report.md", "samples.png", "config.yaml", "d3_2/ddc_hm/metrics.jsonl"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["architectures"][0]["relative_test"]["mmd2_z"] == pytest.approx(rel["mmd2_z"])
    assert "| 3 | 2 |" in (out / "report.md").read_text()
    assert set(arch["references"]) == {"gaussian_diag", "gaussian_full"}
    assert 0.0 <= arch["candidate_vs_gaussian_full"]["p_value"] <= 1.0
    fixed = arch["relative_test_data_width"]
    assert 0.0 <= fixed["p_value"] <= 1.0 and fixed["bandwidth"] > 0
    assert all(a["top_pc_variance_ratio"] > 0 for a in arch["algorithms"].values())
    assert all(a["nll"]["nll"] > 0 and a["nll"]["ess_median"] >= 1 for a in arch["algorithms"].values())
    assert set(res["gaussian_nll"]) == {"gaussian_diag", "gaussian_full"}
    assert all(math.isfinite(v) for v in res["gaussian_nll"].values())
    for a in arch["algorithms"].values():
        ais = a["ais_nll"]
        assert ais["points"] == 4 and ais["chains"] == 3 and ais["temperatures"] == 5 and ais["nll"] > 0
        assert len(ais["acceptance"]) == 2 and all(0.0 <= v <= 1.0 for v in ais["acceptance"])
        assert a["nll"]["nll_on_ais_points"] == pytest.approx(-sum(a["nll"]["log_px"][:4]) / 4)
    diff, algos = arch["ais_nll_difference"], arch["algorithms"]
    assert diff["mean"] == pytest.approx(algos["ddc_hm"]["ais_nll"]["nll"] - algos["iwae_k50"]["ais_nll"]["nll"])
    assert diff["sem"] >= 0
    assert set(res["gaussian_nll_ais_points"]) == {"gaussian_diag", "gaussian_full"}
    assert "AIS test NLL" in (out / "report.md").read_text()


def test_gaussian_references_and_the_variance_ratio():
    """The reference Gaussians reproduce the training moments (diagonal / full covariance, 20000 draws: relative
    Frobenius error < 5 %), and the variance ratio is 1 for the full Gaussian, about the ratio of pixel to
    leading-direction variance for independent pixels, and 4 for samples blown up by 2."""
    from wakesleep.eval.compare import gaussian_references, principal_directions, variance_ratio

    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64)
    x = torch.randn(20000, 8, generator=g, dtype=torch.float64) @ a.T + 1.0
    refs = gaussian_references(x, 20000, seed=1)
    cov = torch.cov(x.T)
    full, diag = torch.cov(refs["gaussian_full"].T), torch.cov(refs["gaussian_diag"].T)
    assert float((full - cov).norm() / cov.norm()) < 0.05
    assert float((diag - torch.diag(cov.diag())).norm() / cov.diag().norm()) < 0.05
    dirs = principal_directions(x, 3)
    assert variance_ratio(refs["gaussian_full"], x, dirs) == pytest.approx(1.0, abs=0.05)
    assert variance_ratio(2 * refs["gaussian_full"], x, dirs) == pytest.approx(4.0, rel=0.05)
    top = float((x @ dirs).var(0).sum())
    expected = float((dirs * (cov.diag()[:, None] * dirs)).sum()) / top
    assert variance_ratio(refs["gaussian_diag"], x, dirs) == pytest.approx(expected, rel=0.05)
    assert expected < 0.9


@needs_fashion
def test_sbn_tiny(tmp_path):
    out = tmp_path / "sbn"
    sets = [
        "data.n=200",
        "data.n_test=100",
        "train.max_iters=3",
        "train.threads=1",
        "algorithm.sleep_samples=100",
        "algorithm.features=20",
        "algorithm.recognition_hidden=30",
        "experiment.mmd_samples=100",
        "experiment.nll_k=5",
        "experiment.nll_points=5",
        "experiment.proposal_steps=3",
        "experiment.ais_points=4",
        "experiment.ais_chains=3",
        "experiment.ais_temperatures=5",
        "experiment.datasets=[fashion_mnist, mnist]",
        "experiment.algorithms=[ddc_hm, {name: vimco, label: vimco_k50, k: 3}]",
    ]
    res = run_experiment("sbn", out, overrides=sets, progress=False)
    ds = res["datasets"][0]
    assert ds["name"] == "fashion_mnist" and res["skipped"]  # MNIST has no files here
    assert set(ds["algorithms"]) == {"ddc_hm", "vimco_k50"}
    assert ds["algorithms"]["ddc_hm"]["nll"]["proposal"].startswith("fit_proposal")
    assert ds["algorithms"]["vimco_k50"]["nll"]["proposal"] == "own recognition model"
    assert all(r["nll"]["nll"] > 0 for r in ds["algorithms"].values())
    for r in ds["algorithms"].values():  # AIS on the first 4 test images, beside importance sampling on them
        assert r["ais_nll"]["points"] == 4 and r["ais_nll"]["kernel"] == "gibbs" and len(r["ais_nll"]["log_px"]) == 4
        assert r["nll"]["nll_on_ais_points"] == pytest.approx(-sum(r["nll"]["log_px"][:4]) / 4)
    diff = ds["ais_nll_differences"]["vimco_k50"]
    a, v = ds["algorithms"]["ddc_hm"]["ais_nll"], ds["algorithms"]["vimco_k50"]["ais_nll"]
    assert diff["mean"] == pytest.approx(a["nll"] - v["nll"])
    text = (out / "report.md").read_text()
    assert "AIS NLL" in text
    # independent pixels: exact NLLs (on the AIS images too, paired with the candidate), and the sample baseline
    ind = ds["independent_pixels"]
    assert ind["nll"]["nll"] > 0 and ind["nll"]["exact"] and ind["nll"]["points"] == 5
    assert ind["ais_nll"]["points"] == 4
    assert ds["ais_nll_differences"]["independent_pixels"]["mean"] == pytest.approx(a["nll"] - ind["ais_nll"]["nll"])
    assert "| independent pixels (training means; baseline) |" in text
    check_sbn_sample_tests(ds, text, ["ddc_hm", "vimco_k50"], n_select=50)
    assert json.loads((out / "results.json").read_text())["datasets"][0]["sample_tests"]["tests"].keys() == {
        "median",
        "power",
        "quadratic",
        "patch",
    }
    for name in ("results.json", "report.md", "fashion_mnist_samples.png"):
        assert (out / name).is_file(), name


def check_sbn_sample_tests(ds: dict, text: str, learned: list[str], n_select: int) -> None:
    """The sample tests of one data set of `experiment sbn`: compare_samples with independent pixels as the
    baseline, each test's check against it, and the report marking the verdicts of tests that fail it."""
    st = ds["sample_tests"]
    comp = st["comparison"]
    assert comp["names"] == ["independent_pixels", *learned] and comp["baseline"] == "independent_pixels"
    assert st["kernels"] == ["gaussian", "quadratic", "patch"] and st["n_select"] == n_select == st["n_test"]
    assert comp["n_select"]["independent_pixels"] == n_select and st["seed"] == 0
    assert list(st["tests"]) == ["median", "power", "quadratic", "patch"]
    assert (
        st["tests"]["median"]["kernel"].startswith("gaussian")
        and "(median x 2^+0.0)" in st["tests"]["median"]["kernel"]
    )
    assert ds["bandwidth"] == pytest.approx(st["median_bandwidth"]) and ds["bandwidth"] > 0
    assert "### Which sample tests can tell" in text and "### Learned models by the sample tests" in text
    pair = f"{learned[0]} vs {learned[1]}"
    for name, t in st["tests"].items():
        assert set(t["mmd2"]) == {"independent_pixels", *learned}
        assert set(t["vs_baseline"]) == set(learned) and pair in t["learned_pairs"]
        ranks = all(v["closer"] == m and v["p"] < 0.01 for m, v in t["vs_baseline"].items())
        assert t["ranks_baseline_last"] == ranks
        assert t["valid"] == (ranks and (name != "power" or bool(st["qualified"])))
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | {pair} |"))
        assert ("not valid: " in row) != t["valid"], row
        if t["baseline_above"]:
            assert f"not valid: ranks independent pixels above {', '.join(t['baseline_above'])}" in row


def test_sample_test_verdicts_rank_independent_pixels_last():
    """On images of tied pixel pairs, the quadratic test tells independent pixels from the data's own law (valid)
    and prefers it to a noisier model; the report of `experiment sbn` marks only invalid tests' verdicts."""
    from wakesleep.errors import WakesleepError
    from wakesleep.eval import compare_samples
    from wakesleep.eval.compare import independent_pixel_samples, sample_test_verdicts
    from wakesleep.experiments.sbn import _sample_test_lines

    g = torch.Generator().manual_seed(0)

    def draw(n: int, flip: float) -> torch.Tensor:  # 4 x 4 images: 8 independent pairs of tied pixels
        half = torch.bernoulli(torch.full((n, 8), 0.3, dtype=torch.float64), generator=g)
        x = half.repeat_interleave(2, dim=1)
        return (x + torch.bernoulli(torch.full_like(x, flip), generator=g)) % 2

    data, train = draw(600, 0.0), draw(600, 0.0)
    samples = {"indep": independent_pixel_samples(train, 600, seed=1), "good": draw(600, 0.0), "meh": draw(600, 0.25)}
    comp = compare_samples(data, samples, ["gaussian", "quadratic"], baseline="indep", seed=0)
    with pytest.raises(WakesleepError, match="baseline"):
        sample_test_verdicts(compare_samples(data, samples, ["quadratic"], seed=0), ["good", "meh"])
    with pytest.raises(WakesleepError, match="unknown test"):
        sample_test_verdicts(comp, ["good", "meh"], ["nope"])
    v = sample_test_verdicts(comp, ["good", "meh"], ["median", "power", "quadratic"])
    assert v == sample_test_verdicts(comp.to_dict(), ["good", "meh"], ["median", "power", "quadratic"])
    quad = v["quadratic"]
    assert quad["valid"] and quad["mmd2_ranks_baseline_last"] and quad["kernel"] == "quadratic c=0 centred"
    assert quad["learned_pairs"]["good vs meh"]["closer"] == "good" and quad["learned_pairs"]["good vs meh"]["p"] < 0.01
    # the report: a valid test's verdicts read "valid", an invalid one's say why
    v["median"].update(valid=False, ranks_baseline_last=False, baseline_above=["meh"], baseline_tied=["good"])
    st = {"tests": v, "level": 0.01, "qualified": list(comp.qualified), "n_kernels": len(comp.kernels)}
    lines = _sample_test_lines({"algorithms": {"good": {}, "meh": {}}, "sample_tests": st})
    row = next(line for line in lines if line.startswith("| median | good vs meh |"))
    assert "not valid: ranks independent pixels above meh; does not prefer good to independent pixels" in row
    assert next(line for line in lines if line.startswith("| quadratic | good vs meh |")).endswith("| valid |")


def test_independent_pixel_reference():
    """Exact NLL of the marginal model; its MMD^2 is near 0 on independent data and large on correlated data."""
    from wakesleep.eval.compare import independent_pixels

    g = torch.Generator().manual_seed(0)
    p = torch.rand(30, generator=g, dtype=torch.float64) * 0.8 + 0.1
    train = torch.bernoulli(p.expand(4000, -1), generator=g)
    test = torch.bernoulli(p.expand(1000, -1), generator=g)
    ref = independent_pixels(train, test, 1000, 1000, bandwidth=3.0)
    q = train.mean(0)
    exact = -(test * q.log() + (1 - test) * (1 - q).log()).sum(1).mean()
    assert abs(ref["nll"] - float(exact)) < 1e-9
    assert abs(ref["mmd2"]) < 5e-3
    tied = torch.bernoulli(torch.full((5000, 1), 0.5, dtype=torch.float64), generator=g).expand(-1, 30)
    assert independent_pixels(tied[:4000], tied[4000:], 1000, 1000, bandwidth=3.0)["mmd2"] > 0.1


def test_train_options_apply_to_one_entry_only():
    from wakesleep.errors import WakesleepError
    from wakesleep.experiments.entries import algorithm_entries

    config = experiment_config("sbn", None, False, [])
    entries = algorithm_entries(config, "test")
    assert entries["ddc_hm"]["train"]["sleep_every"] == 20  # the shipped sbn config sleeps every 20 wake steps
    assert entries["vimco_k50"]["train"]["sleep_every"] == 1
    config = experiment_config("sbn", None, False, ["experiment.train_options={rws_k5: {lr: 0.01}}"])
    entries = algorithm_entries(config, "test")
    assert entries["rws_k5"]["train"]["lr"] == 0.01 and entries["ddc_hm"]["train"]["lr"] == 0.001
    config = experiment_config("sbn", None, False, ["experiment.train_options={nope: {lr: 0.01}}"])
    with pytest.warns(UserWarning, match="train_options"):
        algorithm_entries(config, "test")
    config = experiment_config("sbn", None, False, ["experiment.train_options={ddc_hm: {nope: 1}}"])
    with pytest.raises(WakesleepError, match="nope"):
        algorithm_entries(config, "test")


def test_bench_flops_and_summary():
    import wakesleep
    from wakesleep.bench import MatmulFlops, iteration_flops, markdown, sleep_cycle, solver_flops, summary

    model = wakesleep.build_model(
        {
            "layers": [
                {"name": "z", "family": "bernoulli", "dim": 5},
                {"name": "x", "family": "bernoulli", "dim": 8, "link": "linear"},
            ]
        }
    )
    x = model.sample(4)[-1]
    ddc = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=50, features=6, recognition_hidden=10)
    f = iteration_flops(ddc, x)
    assert f["matmul_flops"] > 0 and f["solver_flops"] == pytest.approx(solver_flops(ddc)) and f["solver_flops"] > 0
    # sleeping every 4 steps: 3 of 4 wake phases re-evaluate the links at the sleep samples (theta has moved)
    before = [p.detach().clone() for p in model.parameters()]
    f4 = iteration_flops(ddc, x, sleep_every=4)
    assert f4["wake_flops_moved"] > f4["wake_flops_after_sleep"]
    assert f4["wake_flops"] == pytest.approx((f4["wake_flops_after_sleep"] + 3 * f4["wake_flops_moved"]) / 4)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))  # theta put back

    # the sleep phase's products, averaged over one cycle of the recognition's ridge re-choice (every 4th phase)
    def cycled():
        torch.manual_seed(5)
        m = copy.deepcopy(model)
        a = wakesleep.build_algorithm(
            "ddc_hm", m, sleep_samples=50, features=6, recognition_hidden=10, recognition_ridge_every=4
        )
        a.sleep()  # the first phase searches the whole grid; the next 4: 3 plain, then one re-choice
        return a

    ddc = cycled()
    assert sleep_cycle(ddc) == 4
    fc = iteration_flops(ddc, x)
    twin = cycled()  # the same 4 phases on a twin (same seed), one by one
    per_phase = []
    for _ in range(4):  # the same 4 phases on a copy, one by one
        with MatmulFlops() as f1:
            twin.sleep()
        per_phase.append(f1.total)
    assert per_phase[3] > per_phase[0] == per_phase[1] == per_phase[2]
    assert fc["sleep_flops"] - fc["solver_flops"] == pytest.approx(sum(per_phase) / 4)
    vimco = wakesleep.build_algorithm("vimco", model, k=3)
    assert sleep_cycle(vimco) == 1
    fv = iteration_flops(vimco, x)
    assert fv["solver_flops"] == 0 and fv["matmul_flops"] > 0
    assert all(p.grad is None for p in vimco.recognition_parameters())
    row = {
        "seconds_per_epoch": 1.0,
        "cpu_seconds_per_epoch": 1.0,
        "gflop_per_epoch": 1.0,
        "train_seconds": 10.0,
        "gflop_per_iteration": 0.1,
        "achieved_gflops": 1.0,
        "fraction_of_matmul_rate": 0.1,
        "matmul_gflops": 10.0,
        "peak_rss_mb": 100.0,
        "final_mmd2": 0.01,
        "nll": {"nll": 100.0, "k": 10, "points": 3},
    }
    rows = {
        "ddc_hm": {**row, "curve": [{"train_seconds": 0.0, "mmd2": 0.5}, {"train_seconds": 1.5, "mmd2": 0.02}]},
        "vimco_k50": {
            **row,
            "seconds_per_epoch": 6.0,
            "cpu_seconds_per_epoch": 5.0,
            "curve": [{"train_seconds": 0.0, "mmd2": 0.5}, {"train_seconds": 10.0, "mmd2": 0.03}],
        },
    }
    s = summary(rows)
    assert s["epoch_speedup"] == pytest.approx(6.0) and s["goal_epoch_speedup_5x"]
    assert s["time_to_target_fraction"] == pytest.approx(0.15) and s["goal_time_to_target_one_fifth"]
    md = markdown({"epochs": 1, "n_train": 10, "machine": "m", "command": "c", "algorithms": rows, "summary": s})
    assert "| ddc_hm |" in md and "met" in md and "ais_nll_difference" not in s
    ais = {"points": 3, "chains": 2, "temperatures": 5, "nll": 0.0, "sem": 0.0}
    rows["ddc_hm"]["ais_nll"] = {**ais, "log_px": [-10.0, -20.0, -30.0], "nll": 20.0, "sem": 5.77}
    rows["vimco_k50"]["ais_nll"] = {**ais, "log_px": [-9.0, -18.0, -30.0], "nll": 19.0, "sem": 5.2}
    s = summary(rows)
    assert s["ais_nll_difference"]["mean"] == pytest.approx(1.0)  # ddc_hm minus vimco_k50, paired
    assert s["ais_nll_difference"]["sem"] == pytest.approx(1.0 / 3**0.5)
    md = markdown({"epochs": 1, "n_train": 10, "machine": "m", "command": "c", "algorithms": rows, "summary": s})
    assert "20.00 +- 5.77" in md and "+1.0 +- 0.6 nats" in md


@needs_fashion
def test_bench_run_one_in_process(tmp_path):
    from wakesleep.bench import BenchSettings, run_one

    settings = BenchSettings(
        n=40,
        threads=1,
        mmd_samples=50,
        curve_samples=30,
        evals=2,
        nll_k=3,
        nll_points=3,
        proposal_steps=2,
        ais_points=2,
        ais_chains=2,
        ais_temperatures=3,
        overrides=(
            "algorithm.sleep_samples=60",
            "algorithm.features=10",
            "algorithm.recognition_hidden=20",
            "data.n_test=100",
            "train.batch_size=20",
        ),
    )
    r = run_one(settings, "ddc_hm", out_dir=tmp_path)
    assert r["iterations"] == 2 and r["iterations_per_epoch"] == 2
    assert r["seconds_per_epoch"] > 0 and r["peak_rss_mb"] > 0 and r["gflop_solver"] > 0
    assert 0 < r["fraction_of_matmul_rate"] and len(r["curve"]) >= 2 and r["nll"]["k"] == 3
    assert r["curve"][0]["step"] == 0 and r["curve"][-1]["train_seconds"] >= r["curve"][0]["train_seconds"]
    assert torch.isfinite(torch.tensor(r["final_mmd2"]))
    assert (tmp_path / "ddc_hm_samples.png").is_file() and r["sleep_every"] == 20  # the shipped config's
    assert r["ais_nll"]["points"] == 2 and r["ais_nll"]["kernel"] == "gibbs" and r["ais_nll"]["temperatures"] == 3


@pytest.mark.parametrize("flag", ["--ais-points=-1", "--ais-chains=0", "--ais-temperatures=0"])
def test_bench_cli_rejects_bad_ais_settings(tmp_path, capsys, flag):
    code = main(["bench", "sbn", "--out", str(tmp_path / "b"), flag])
    err = capsys.readouterr().err
    assert code != 0 and flag.split("=")[0] in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_bench_cli_rejects_unknown_algorithm(tmp_path, capsys):
    code = main(["bench", "sbn", "--out", str(tmp_path / "b"), "--algorithms", "nope"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_ppca_init_matches_the_data_second_moments():
    """``experiment.init: ppca``: with Lambda, Psi from ``ppca_init`` the model's second-moment matrix is the
    probabilistic-PCA fit of the data's: S's leading D1 eigenvalues exact, the rest replaced by their mean, so
    tr(model) = tr(S) and the leading eigenvectors agree (prior moments from 200000 draws: tolerance 3 %)."""
    import wakesleep
    from wakesleep.experiments.patches import ppca_init

    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=gen, dtype=torch.float64) * torch.linspace(2.0, 0.1, 12, dtype=torch.float64)
    x = torch.randn(20000, 12, generator=gen, dtype=torch.float64) @ mix.T
    cfg = architecture_config(experiment_config("patches"), 3, 2)
    cfg["model"]["layers"][2]["dim"] = 12
    cfg["model"]["dtype"] = "float64"
    model = wakesleep.build_model(cfg)
    init = ppca_init(model, x, n_prior=200000, seed=1)
    cfg["model"]["init"] = {k: v.tolist() for k, v in init.items()}
    model = wakesleep.build_model(cfg)  # the inline mapping is what the experiment puts in each run's config
    torch.manual_seed(3)
    xs = model.sample(200000)[-1]
    s_data, s_model = x.T @ x / x.shape[0], xs.T @ xs / xs.shape[0]
    ev_data, ev_model = torch.linalg.eigvalsh(s_data).flip(0), torch.linalg.eigvalsh(s_model).flip(0)
    assert torch.allclose(ev_model[:3], ev_data[:3], rtol=0.03), (ev_model[:3], ev_data[:3])
    assert torch.trace(s_model) == pytest.approx(float(torch.trace(s_data)), rel=0.03)
    assert torch.allclose(ev_model[3:], ev_data[3:].mean().expand(9), rtol=0.05)


def test_patches_ppca_init_reaches_every_entry(tmp_path):
    out = tmp_path / "patches"
    sets = [*TINY_PATCHES, "experiment.init=ppca", "train.max_iters=2"]
    run_experiment("patches", out, overrides=sets, progress=False)
    import yaml

    inits = [
        yaml.safe_load((out / "d3_2" / e / "config.yaml").read_text())["model"]["init"] for e in ("ddc_hm", "iwae_k50")
    ]
    assert inits[0] == inits[1] and len(inits[0]["layers.x.link.weight"]) == 256
    with pytest.raises(Exception, match="experiment.init"):
        run_experiment("patches", tmp_path / "bad", overrides=[*sets, "experiment.init=pca"], progress=False)

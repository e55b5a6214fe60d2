"""DDC-HM's deep recognition (``recognition: deep``) and exact sufficient statistics (``extra_stats: sufficient``)."""

from __future__ import annotations

import pytest
import torch

import wakesleep
from wakesleep.algorithms.ddc_hm.features import EncodingFunctions, layer_statistics
from wakesleep.errors import WakesleepError
from wakesleep.eval.diagnose import diagnose
from wakesleep.training import Trainer

from oracles import build, enumerate_loglik, sbn_config

pytestmark = pytest.mark.usefixtures("one_thread")

DEEP = {
    "sleep_samples": 60,
    "features": 8,
    "recognition": "deep",
    "recognition_layers": 1,
    "recognition_width": 16,
    "recognition_steps": 3,
    "recognition_batch": 16,
    "recognition_replay": 2,
}


def sbn(seed: int = 0):
    return build(sbn_config([3, 3, 6], seed=seed))


def data(n: int = 60) -> torch.Tensor:
    return sbn(seed=7).sample(n, generator=torch.Generator().manual_seed(5))[-1]


def trainer(options: dict, **kw) -> Trainer:
    torch.manual_seed(123)
    algo = wakesleep.build_algorithm("ddc_hm", sbn(), **options)
    return Trainer(algo, batch_size=20, lr=1e-2, seed=1, monitor_samples=20, log_every=2, **kw)


@pytest.mark.parametrize(
    ("options", "stop", "sleep_every"),
    [
        (DEEP, 6, 1),
        (DEEP, 6, 2),
        ({**DEEP, "recognition_chain": False, "extra_stats": "sufficient", "recognition_replay": 0}, 4, 2),
        ({**DEEP, "recognition_replay": 0, "recognition_fresh": True}, 6, 2),
        ({**DEEP, "recognition_calibrate": "features"}, 6, 2),
        ({**DEEP, "recognition_calibrate": "residual", "recognition_fresh": True, "recognition_replay": 0}, 6, 2),
    ],
)
def test_deep_recognition_resumes_bit_for_bit(tmp_path, options, stop, sleep_every):
    """2k iterations against k, a checkpoint, and k more: weights, Adam state and replayed samples are state."""
    full = trainer(options, epochs=4, sleep_every=sleep_every).fit(data())
    trainer(options, epochs=4, max_iters=stop, out_dir=tmp_path, sleep_every=sleep_every).fit(data())
    torch.manual_seed(999)
    resumed = trainer(options, epochs=4, out_dir=tmp_path, sleep_every=sleep_every)
    resumed.fit(data(), resume_from=tmp_path / "checkpoint")
    assert resumed.start_iter_ == stop and resumed.n_iter_ == 12
    for (na, pa), (nb, pb) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    sa, sb = full.algorithm.state_dict(), resumed.algorithm.state_dict()
    assert sa.keys() == sb.keys()
    assert any(k.startswith("recognizer_fit.adam.") for k in sa)
    assert any(k.startswith("recognizer.nets.") for k in sa)
    if options["recognition_replay"]:
        assert any(k.startswith("recognizer.memory.") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_heads_stay_in_the_range_of_the_encoding_functions():
    model = sbn()
    algo = wakesleep.build_algorithm("ddc_hm", model, **{**DEEP, "extra_stats": "linear", "recognition_lr": 0.5})
    for _ in range(3):
        algo.sleep()
    x = torch.bernoulli(torch.full((50, 6), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    x[:5] = 30.0 * torch.randn(5, 6, dtype=torch.float64)  # far off the data: the heads still bound r
    for r, enc in zip(algo.recognise(x), algo.encoders, strict=True):
        lo, hi = enc.output_bounds()
        assert bool((r[:, :-1] >= lo - 1e-12).all() and (r[:, :-1] <= hi + 1e-12).all())
    # z is itself an (unpenalised) encoding function, so E_q[z | x] is a head's output mapped back: in [0, 1]
    for m in algo.posterior_mean(x).values():
        assert bool((m >= -1e-9).all() and (m <= 1 + 1e-9).all())


def test_deep_recognition_learns_the_posterior_of_a_tiny_sbn():
    """Against the exact posterior (enumeration), the deep read-out beats the constant guess and stays valid."""
    torch.manual_seed(0)
    model = build(sbn_config([2, 4, 10], seed=3))
    x = model.sample(50)[-1]
    opts = {"sleep_samples": 1000, "features": 50, "recognition": "deep", "recognition_steps": 100}
    algo = wakesleep.build_algorithm("ddc_hm", model, **opts, extra_stats="sufficient")
    for _ in range(10):
        algo.sleep()
    res = diagnose((model, algo), x, sleeps=1)
    assert res.reference == "enumerate"
    assert res.posterior["z1"]["mae"] < 0.5 * res.posterior["z1"]["mae_constant_guess"]
    assert res.posterior["z1"]["invalid_fraction"] == 0.0
    assert res.layers["x"]["cosine"] > 0.5  # 0.75 here; 0.93 with 300 steps and replay (docs/ddc_hm.md)
    assert enumerate_loglik(model, x).isfinite().all()


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ({"name": "z1", "family": "gaussian", "dim": 2, "link": "linear"}, lambda z: torch.cat([z, z * z], -1)),
        ({"name": "z1", "family": "gamma", "dim": 2, "link": "softplus_linear"}, None),
        ({"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear"}, lambda z: z.abs()),
        ({"name": "z1", "family": "bernoulli", "dim": 2, "link": "linear"}, lambda z: z),
        ({"name": "z1", "family": "poisson", "dim": 2, "link": "softplus_linear"}, lambda z: z),
    ],
)
def test_sufficient_statistics_are_encoding_functions_for_every_family(layer, expected):
    model = wakesleep.build_model(
        {
            "layers": [
                {"name": "z2", "family": "gaussian", "dim": 2},
                layer,
                {"name": "x", "family": "gaussian", "dim": 3, "link": "linear"},
            ],
            "dtype": "float64",
            "seed": 0,
        }
    )
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=300, features=10, extra_stats="sufficient")
    algo.sleep()
    z1 = algo._samples[1]
    fam = model.layers["z1"].family
    s = fam.sufficient_statistics(z1).flatten(-2)
    if expected is not None:  # the layout: units first, then statistics (z_1, z_1^2, z_2, z_2^2 for Gaussian)
        want = expected(z1)
        if want.shape[-1] == 2 * z1.shape[-1]:
            want = torch.stack([z1, z1 * z1], -1).flatten(-2)
        torch.testing.assert_close(s, want)
    enc = algo.encoders[1]
    t = algo._encode(1, z1)
    std = enc.stats_standardize
    torch.testing.assert_close(t[:, -s.shape[1] :], (s - std.centre) / std.scale)
    assert enc.n_stats == s.shape[1]
    lo, hi = enc.output_bounds()
    assert bool((t >= lo - 1e-9).all() and (t <= hi + 1e-9).all())
    grads = algo.wake_gradient(model.sample(20)[-1])
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_sufficient_statistics_make_a_linear_target_exact():
    """For a Bernoulli layer S(z) = z: regressing z on T reproduces z exactly (the statistic is unpenalised)."""
    model = sbn()
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=400, features=5, extra_stats="sufficient")
    algo.sleep()
    x = model.sample(30)[-1]
    r = algo.recognise(x)[1]  # z1's DDC (top first), last entry the constant
    enc = algo.encoders[1]
    means = algo.posterior_mean(x)["z1"]
    std = enc.stats_standardize
    torch.testing.assert_close(means, r[:, -1 - enc.n_stats : -1] * std.scale + std.centre, rtol=1e-6, atol=1e-8)


def test_layer_statistics_of_a_mixture_top():
    model = wakesleep.build_model(
        {
            "layers": [
                {"name": "z1", "family": "mog", "dim": 2, "means": [[1.0, 1.0], [-1.0, -1.0]], "std": 0.5},
                {"name": "x", "family": "gaussian", "dim": 2, "link": "linear"},
            ],
            "dtype": "float64",
        }
    )
    fn, n, support = layer_statistics(model.layers["z1"])
    z = torch.randn(4, 2, dtype=torch.float64)
    assert n == 4 and len(support) == 4
    torch.testing.assert_close(fn(z), torch.stack([z, z * z], -1).flatten(-2))


def test_fresh_samples_for_every_step_learn_the_posterior_where_one_phase_is_too_few():
    """``recognition_fresh``: with 10 sleep samples a phase, 300 steps on them overfit; 300 steps on new samples
    learn E[T(z_l) | x] of a tiny SBN (exact posterior by enumeration), and the draws are the model's."""
    torch.manual_seed(0)
    model = build(sbn_config([2, 4, 10], seed=3))
    x = model.sample(200)[-1]
    unexplained = {}
    for fresh in (False, True):
        torch.manual_seed(1)
        opts = {"sleep_samples": 10, "features": 20, "recognition": "deep", "recognition_steps": 300}
        algo = wakesleep.build_algorithm("ddc_hm", model, **opts, extra_stats="sufficient", recognition_fresh=fresh)
        infos = [algo.sleep() for _ in range(4)]
        assert "recognition_heldout_r2_1" not in infos[0] and "recognition_heldout_r2_1" in infos[1]
        res = diagnose((model, algo), x, sleeps=0)
        assert res.reference == "enumerate"
        unexplained[fresh] = [res.posterior[z]["recognition_unexplained"] for z in ("z1", "z2")]
    # measured (z1 / z2): 1.08 / 2.95 of the spread of E[T | x] unexplained with 10 samples a phase, 0.015 / 0.066 fresh
    assert all(u < 0.2 for u in unexplained[True]) and all(u > 0.5 for u in unexplained[False])
    # the batches are ancestral samples of the current model, encoded with this phase's T
    torch.manual_seed(2)
    xb, targets = algo._fresh_recognition_batch(20000)
    torch.manual_seed(2)
    samples = model.sample(20000)
    torch.testing.assert_close(xb, samples[-1])
    torch.testing.assert_close(targets[0], algo._encode(1, samples[1]))


def test_calibrated_read_out_matches_the_sleep_samples_mean_and_stays_in_range():
    """``recognition_calibrate``: over the phase's sleep samples the mean of r_l is that of T(z_l) (the regression's
    intercept; the networks alone miss it), except where the clip to the encoding functions' range acts."""
    torch.manual_seed(0)
    model = build(sbn_config([2, 4, 10], seed=3))
    gaps, infos = {}, []
    for calibrate in ("none", "features", "residual", "mean"):
        torch.manual_seed(1)
        opts = {"sleep_samples": 4000, "features": 20, "recognition": "deep", "recognition_steps": 30}
        algo = wakesleep.build_algorithm(
            "ddc_hm", model, **opts, extra_stats="sufficient", recognition_calibrate=calibrate
        )
        infos = [algo.sleep() for _ in range(3)]
        r, targets = algo.recognise(algo._samples[-1]), algo._feats  # top first, each with the intercept column
        gaps[calibrate] = [float((a.mean(0) - t.mean(0)).abs().max()) for a, t in zip(r, targets, strict=True)]
        clipped = []
        for a, enc in zip(r, algo.encoders, strict=True):
            lo, hi = enc.output_bounds()
            assert bool((a[:, :-1] >= lo - 1e-12).all() and (a[:, :-1] <= hi + 1e-12).all())
            clipped.append(float(((a[:, :-1] <= lo) | (a[:, :-1] >= hi)).float().mean()))
        if calibrate != "none":
            assert "recognition_calibration_ridge_1" in infos[-1]
            assert clipped[0] == 0.0 and gaps[calibrate][0] < 1e-10 < gaps["none"][0]
            assert max(gaps[calibrate]) < 0.2 * max(gaps["none"])
    # measured (z2 / z1): 0.13 / 0.066 uncalibrated, 3e-14 / 0.0099 features, 3e-16 / 0.0057 residual, 3e-16 /
    # 0.0071 mean (none of z2's values clipped, some of z1's)


def test_option_errors():
    with pytest.raises(WakesleepError, match="recognition_calibrate needs recognition: deep"):
        wakesleep.build_algorithm("ddc_hm", sbn(), recognition_calibrate="features")
    with pytest.raises(WakesleepError, match="recognition_calibrate"):
        wakesleep.build_algorithm("ddc_hm", sbn(), recognition="deep", recognition_calibrate="yes")
    with pytest.raises(WakesleepError, match="recognition_fresh needs recognition: deep"):
        wakesleep.build_algorithm("ddc_hm", sbn(), recognition_fresh=True)
    with pytest.raises(WakesleepError, match="recognition_replay"):
        wakesleep.build_algorithm("ddc_hm", sbn(), recognition="deep", recognition_fresh=True, recognition_replay=1)
    with pytest.raises(WakesleepError, match="recognition_steps"):
        wakesleep.build_algorithm("ddc_hm", sbn(), recognition="deep", recognition_steps=0)
    with pytest.raises(WakesleepError, match="extra_stats"):
        wakesleep.build_algorithm("ddc_hm", sbn(), extra_stats="cubic")
    with pytest.raises(ValueError, match="sufficient"):
        EncodingFunctions(2, 3, extra_stats="sufficient")

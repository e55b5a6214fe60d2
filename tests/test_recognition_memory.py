"""DDC-HM's adaptive recognition memory (``recognition_memory="adaptive"``): prequential choice of the decay of
the recognition's regression statistics across sleep phases."""

from __future__ import annotations

import inspect
import threading

import pytest
import torch

import wakesleep
from wakesleep.algorithms.ddc_hm.ridge import PhaseSums, RunningMoments, prediction_error, with_intercept
from wakesleep.errors import WakesleepError

MODEL = {  # the paper's synthetic model (eq. 13)
    "layers": [
        {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
        {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear", "bias": False},
        {"name": "x", "family": "gaussian", "dim": 2, "link": "linear", "bias": False},
    ],
    "dtype": "float64",
    "seed": 0,
}
OPTS = {
    "sleep_samples": 100,
    "features": 8,
    "recognition_hidden": 30,
    "recognition_memory": "adaptive",
    "recognition_ridge_every": 1,
}


def _chosen(algo, phases: int) -> list[float]:
    return [algo.sleep()["recognition_memory"] for _ in range(phases)]


def _model():
    return wakesleep.build_model(MODEL)


def test_fixed_model_long_memory_then_short_after_a_jump():
    torch.manual_seed(0)
    model = _model()
    # few sleep samples per read-out input (60 for 43), so that a fit from one phase alone is poor
    algo = wakesleep.build_algorithm("ddc_hm", model, **{**OPTS, "sleep_samples": 60, "recognition_hidden": 40})
    decays = algo.recognizer.stats.decays
    assert decays[:3] == (0.0, 0.5, 0.9) and max(decays) >= 0.99 and len(decays) >= 6
    before = _chosen(algo, 16)
    # a fixed model: every phase's samples come from the same distribution, so long memories predict best
    # (among the decays >= 0.9 the differences are small and the choice among them is noise)
    score = algo.recognizer.memory_score.tolist()
    assert before[-1] >= 0.9 and score[0] > max(score[2:]), (before, score)
    with torch.no_grad():  # the model's parameters jump: old statistics now describe another model
        for p in model.parameters():
            p.add_(2.0 * torch.randn_like(p))
    after = _chosen(algo, 8)
    assert min(after) <= 0.5, after
    assert after[-1] < before[-1], (before, after)


def test_choice_is_deterministic_under_a_seed():
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = _model()
        algo = wakesleep.build_algorithm("ddc_hm", model, **{**OPTS, "seed": 4})
        runs.append(_chosen(algo, 8))
        runs.append([float(v) for v in algo.recognizer.memory_score])
    assert runs[0] == runs[2] and runs[1] == runs[3]


def test_fixed_memories_and_the_sample_rule():
    model = _model()
    n_inputs = 30 + 1 + 2  # random ReLU units, constant, x (recognition_input "linear" for small D_x)
    rule = 1 - 100 / (200 * n_inputs)
    for value, expected in (("samples", rule), (0, 0.0), (0.9, 0.9), ("0.5", 0.5)):
        algo = wakesleep.build_algorithm("ddc_hm", model, **{**OPTS, "recognition_memory": value})
        assert algo.recognizer.stats.decays == (pytest.approx(expected),)
        assert algo.sleep()["recognition_memory"] == pytest.approx(expected)
    adaptive = wakesleep.build_algorithm("ddc_hm", model, **OPTS)
    assert any(d == pytest.approx(rule) for d in adaptive.recognizer.stats.decays)
    assert adaptive.recognizer.stats.decay == pytest.approx(rule)  # the starting value


@pytest.mark.parametrize("bad", ["bogus", 1.0, -0.1, True, [0.5], None])
def test_bad_values_name_the_option(bad):
    with pytest.raises(WakesleepError, match=r"algorithm\.recognition_memory"):
        wakesleep.build_algorithm("ddc_hm", _model(), **{**OPTS, "recognition_memory": bad})


def test_prediction_error_from_sums_equals_direct_computation():
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    h = with_intercept(randn(50, 6))
    ys, coefs = [randn(50, 3), randn(50, 2)], [randn(7, 3), randn(7, 2)]
    stats = RunningMoments(0.0)
    direct = sum(((y - h @ b) ** 2).sum() / ((y - y.mean(0)) ** 2).sum() for y, b in zip(ys, coefs, strict=True)) / 2
    assert prediction_error(stats.phase_sums(h, ys), coefs) == pytest.approx(float(direct), rel=1e-10)
    # additive over row blocks, which is what lets data-parallel ranks sum their sums
    a, b = stats.phase_sums(h[:20], [y[:20] for y in ys]), stats.phase_sums(h[20:], [y[20:] for y in ys])
    merged = PhaseSums(
        a.gram + b.gram,
        [c + d for c, d in zip(a.cross, b.cross, strict=True)],
        a.n + b.n,
        [p + q for p, q in zip(a.sq, b.sq, strict=True)],
    )
    assert prediction_error(merged, coefs) == pytest.approx(float(direct), rel=1e-10)


class _ThreadAllReduce:
    """An all-reduce (sum) between threads, in the same order on every 'rank'."""

    def __init__(self, world: int) -> None:
        self.barrier, self.slots = threading.Barrier(world), [None] * world

    def for_rank(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = self.slots[0].clone()
            for s in self.slots[1:]:
                total = total + s
            self.barrier.wait()
            return total

        return reduce


def _phases(model, n: int, phases: int, jump_at: int) -> list[list[torch.Tensor]]:
    """Sleep samples for each phase, with a parameter jump before ``jump_at`` (model restored afterwards)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(11)
    out = []
    with torch.no_grad():
        for k in range(phases):
            if k == jump_at:
                for p in model.parameters():
                    p.add_(2.0 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            out.append([s.clone() for s in model.sample(n, generator=gen)])
    model.load_state_dict(state)
    return out


def _sleep_on(algo, samples: list[torch.Tensor]) -> dict[str, float]:
    """One sleep phase on the given samples ``[z_L, ..., z_1, x]``."""
    samples = [s.clone() for s in samples]
    if "samples" in inspect.signature(algo.sleep).parameters:
        return algo.sleep(samples=samples)
    algo.model.sample = lambda n, generator=None: samples  # older sleep(): it calls model.sample
    return algo.sleep()


def test_data_parallel_choice_equals_single_process_on_the_union():
    world, n, phases = 2, 60, 7
    opts = {**OPTS, "recognition_ridge": 1e-3, "sleep_samples": n}
    union = _phases(_model(), world * n, phases, jump_at=4)

    single = wakesleep.build_algorithm("ddc_hm", _model(), **{**opts, "sleep_samples": world * n})
    # the candidates include the per-rank sample rule (it counts a rank's sleep samples): use the ranks' set
    rank_stats = wakesleep.build_algorithm("ddc_hm", _model(), **opts).recognizer.stats
    single.recognizer.stats = RunningMoments(rank_stats.decays, index=rank_stats.index)
    ref = []
    for phase in union:
        mem = _sleep_on(single, phase)["recognition_memory"]
        ref.append((mem, [m.clone() for m in single.recognizer.maps]))

    reducer, results, errors = _ThreadAllReduce(world), [None] * world, []

    def work(rank):
        try:
            algo = wakesleep.build_algorithm("ddc_hm", _model(), **opts)
            algo.set_reducer(reducer.for_rank(rank))
            out = []
            for phase in union:
                mem = _sleep_on(algo, [s[rank * n : (rank + 1) * n] for s in phase])["recognition_memory"]
                out.append((mem, [m.clone() for m in algo.recognizer.maps]))
            results[rank] = out
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            reducer.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len({mem for mem, _ in ref}) > 1  # the choice changed at least once (the jump)
    for rank in range(world):
        for (mem, maps), (ref_mem, ref_maps) in zip(results[rank], ref, strict=True):
            assert mem == ref_mem
            for a, b in zip(maps, ref_maps, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_prequential_ridge_option_chooses_from_the_grid():
    from wakesleep.algorithms.ddc_hm.ridge import RIDGE_GRID

    torch.manual_seed(1)
    algo = wakesleep.build_algorithm("ddc_hm", _model(), **OPTS)
    algo.recognizer.prequential_ridge = True
    for _ in range(6):
        algo.sleep()
    assert all(lam in RIDGE_GRID for lam in algo.recognizer.chosen_ridge)
    assert all(torch.isfinite(m).all() for m in algo.recognizer.maps)


def test_ridge_reselection_searches_the_neighbours_of_the_previous_choice():
    from wakesleep.algorithms.ddc_hm.recognition import neighbours
    from wakesleep.algorithms.ddc_hm.ridge import RIDGE_GRID

    assert neighbours(RIDGE_GRID, 1e-3) == (1e-4, 1e-3, 1e-2)
    assert neighbours(RIDGE_GRID, RIDGE_GRID[0]) == RIDGE_GRID[:2]  # at an end of the grid: two points
    assert neighbours(RIDGE_GRID, 1e3) == RIDGE_GRID[-2:]

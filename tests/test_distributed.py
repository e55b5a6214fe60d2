"""Data-parallel training (wakesleep.distributed) with the gloo backend and 2 processes on the CPU.

One spawn of 2 ranks (module-scoped fixture) does all the distributed work and saves its results; the tests
compare them with single-process computations:

1. DDC-HM with an all-reduce reducer on 2 ranks, each with its own (injected) sleep samples and minibatch,
   gives the same recognition maps, DDC representations and wake gradient as one process on the union of
   the samples and minibatches (float64);
2. gradient averaging for an algorithm without global gradients (RWS) keeps the ranks' parameters identical;
3. a short data-parallel DDC-HM training run of a linear-Gaussian model raises the exact log-likelihood of
   the data, and both ranks end with the same parameters.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch

import wakesleep

N_PER_RANK, B_PER_RANK, WORLD = 60, 8, 2
SBN = {
    "layers": [
        {"name": "z2", "family": "bernoulli", "dim": 3},
        {"name": "z1", "family": "bernoulli", "dim": 4, "link": "linear"},
        {"name": "x", "family": "bernoulli", "dim": 6, "link": "linear"},
    ],
    "dtype": "float64",
    "seed": 3,
}
DDC_OPTS = {"features": 7, "recognition_hidden": 12, "recognition_ridge": 1e-3, "seed": 5}
LG_CONFIG = {
    "model": {
        "layers": [
            {"name": "z", "family": "gaussian", "dim": 2},
            {"name": "x", "family": "gaussian", "dim": 3, "link": "linear"},
        ],
        "dtype": "float64",
    },
    "algorithm": {"name": "ddc_hm", "sleep_samples": 100, "features": 30, "recognition_hidden": 30},
    "train": {"epochs": 100, "batch_size": 50, "lr": 2e-2, "seed": 0, "max_iters": 40, "log_every": 20, "threads": 1},
    "data": {"source": "model", "n": 400},
}


def _union():
    """The union of both ranks' sleep samples and minibatches (deterministic, identical in every process)."""
    model = wakesleep.build_model(SBN)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        samples = model.sample(WORLD * N_PER_RANK, generator=gen)
        x = model.sample(WORLD * B_PER_RANK, generator=gen)[-1]
        x_eval = model.sample(5, generator=gen)[-1]
    return samples, x, x_eval


def _lg_data() -> torch.Tensor:
    """400 points of a linear-Gaussian model far from the initial one (x = 3 W z + noise)."""
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    z = torch.randn(400, 2, generator=gen, dtype=torch.float64)
    return 3 * z @ w.T + 0.3 * torch.randn(400, 3, generator=gen, dtype=torch.float64)


def _ddc_results(algo, x, x_eval, samples):
    algo.sleep(samples=[s.clone() for s in samples])
    grads = algo.wake_gradient(x)
    return {
        "maps": [m.clone() for m in algo.recognizer.maps],
        "r": [r.clone() for r in algo.recognise(x_eval)],
        "grads": {k: v.clone() for k, v in grads.items()},
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from wakesleep.distributed import DataParallelAlgorithm, train_distributed

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = {}
        # 1. DDC-HM sufficient statistics, with this rank's share of the union injected as its sleep samples
        samples, x, x_eval = _union()
        model = wakesleep.build_model(SBN)
        mine = [s[rank * N_PER_RANK : (rank + 1) * N_PER_RANK] for s in samples]
        algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=N_PER_RANK, **DDC_OPTS)
        wrapped = DataParallelAlgorithm(algo, world_size=world)
        assert algo.global_gradients and wrapped.global_gradients
        xb = x[rank * B_PER_RANK : (rank + 1) * B_PER_RANK]
        res["ddc"] = [_ddc_results(wrapped, xb, x_eval, mine) for _ in range(2)]  # 2nd phase: standardisers fitted
        # 2. gradient averaging (RWS): a few Trainer steps, parameters must stay identical across ranks
        from wakesleep.training import Trainer

        torch.manual_seed(100 + rank)  # different proposal initialisation per rank: the wrapper broadcasts rank 0's
        m2 = wakesleep.build_model(SBN)
        rws = DataParallelAlgorithm(wakesleep.build_algorithm("rws", m2, k=3), world_size=world)
        Trainer(rws, epochs=1, batch_size=4, seed=rank, monitor_samples=0, log_every=100).fit(x[rank::world])
        res["rws_params"] = {k: v.detach().clone() for k, v in m2.named_parameters()}
        res["rws_q"] = [p.detach().clone() for p in rws.recognition_parameters()]
        # 3. a short data-parallel training run
        from wakesleep import runs
        from wakesleep.eval import exact_log_likelihood
        from wakesleep.spec import RunSpec

        spec = RunSpec.from_mapping(LG_CONFIG)
        data = _lg_data()
        torch.manual_seed(0)
        before = float(exact_log_likelihood(runs.build_model(spec), data).mean())
        model3, _, trainer = train_distributed(
            spec,
            os.path.join(out, "run") if rank == 0 else None,
            rank=rank,
            world_size=world,
            data=data,
            monitor_samples=0,
        )
        res["train"] = {
            "before": before,
            "after": float(exact_log_likelihood(model3, data).mean()),
            "iterations": trainer.n_iter_,
            "params": {k: v.detach().clone() for k, v in model3.named_parameters()},
        }
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(
        _worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail("distributed workers did not finish within 240 s")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_allreduced_statistics_equal_single_process_on_union(ranks):
    _, res = ranks
    samples, x, x_eval = _union()
    model = wakesleep.build_model(SBN)
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=WORLD * N_PER_RANK, **DDC_OPTS)
    single = [_ddc_results(algo, x, x_eval, samples) for _ in range(2)]
    for phase in range(2):
        ref = single[phase]
        for rank in range(WORLD):
            got = res[rank]["ddc"][phase]
            for a, b in zip(got["maps"], ref["maps"], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
            for a, b in zip(got["r"], ref["r"], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
            assert got["grads"].keys() == ref["grads"].keys()
            for k in ref["grads"]:
                torch.testing.assert_close(got["grads"][k], ref["grads"][k], rtol=1e-8, atol=1e-10)


def test_gradient_averaging_keeps_ranks_identical(ranks):
    _, res = ranks
    for k, v in res[0]["rws_params"].items():
        torch.testing.assert_close(v, res[1]["rws_params"][k], rtol=0, atol=1e-12)
    for a, b in zip(res[0]["rws_q"], res[1]["rws_q"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_distributed_training_runs_and_improves_likelihood(ranks):
    out, res = ranks
    t0, t1 = res[0]["train"], res[1]["train"]
    assert t0["iterations"] == t1["iterations"] == LG_CONFIG["train"]["max_iters"]
    for k, v in t0["params"].items():
        torch.testing.assert_close(v, t1["params"][k], rtol=0, atol=1e-12)
    assert t1["before"] == pytest.approx(t0["before"])
    assert t0["after"] > t0["before"] + 0.1, (t0["before"], t0["after"])
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "distributed.json"):
        assert (out / "run" / name).is_file()


def test_single_process_fallback_without_torchrun(monkeypatch):
    from wakesleep.distributed import DataParallelAlgorithm, allreduce_sum, init_process_group

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_process_group("cpu") == (0, 1, "cpu")
    t = torch.arange(3.0)
    assert allreduce_sum(t) is t
    model = wakesleep.build_model(SBN)
    algo = DataParallelAlgorithm(wakesleep.build_algorithm("rws", model, k=2))
    assert algo.world_size == 1 and not algo.global_gradients
    assert algo.averages_recognition  # capabilities.trained_recognition
    assert algo.proposal is algo.algo.proposal  # attributes of the wrapped algorithm pass through
    ddc = DataParallelAlgorithm(wakesleep.build_algorithm("ddc_hm", wakesleep.build_model(SBN), **DDC_OPTS))
    assert ddc.global_gradients and not ddc.averages_recognition  # capabilities.data_parallel == "statistics"


def test_output_is_staged_with_the_marker_and_replaced_as_a_whole(tmp_path, monkeypatch):
    """Rank 0 writes the run aside and swaps it in (with the .wakesleep marker) when training has finished:
    --overwrite replaces the old run as a whole instead of mixing its files with the new ones."""
    from wakesleep.distributed import train_distributed
    from wakesleep.errors import WakesleepError
    from wakesleep.outdirs import read_marker
    from wakesleep.spec import RunSpec

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    spec = RunSpec.from_mapping({**LG_CONFIG, "train": {**LG_CONFIG["train"], "max_iters": 3, "log_every": 1}})
    out = tmp_path / "run"
    kwargs = {"rank": 0, "world_size": 1, "data": _lg_data(), "monitor_samples": 0}
    _, _, trainer = train_distributed(spec, out, **kwargs)
    assert trainer.n_iter_ == 3 and (read_marker(out) or {}).get("complete") is True
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "samples.npz", "distributed.json"):
        assert (out / name).is_file()
    (out / "stray.txt").write_text("from an older run")
    with pytest.raises(WakesleepError, match="--overwrite"):
        train_distributed(spec, out, **kwargs)
    assert (out / "stray.txt").is_file()
    train_distributed(spec, out, overwrite=True, **kwargs)
    assert not (out / "stray.txt").exists() and (out / "distributed.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging directory left beside it

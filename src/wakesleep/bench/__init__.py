"""Benchmark algorithms on the paper's sigmoid belief network: time, memory, floating-point work, MMD and NLL.

:func:`run_bench` (``wakesleep bench sbn --epochs E --out DIR`` on the command line) trains every algorithm
of the SBN experiment (``configs/sbn.yaml``: DDC-HM, VIMCO K = 50, RWS, wake-sleep) for E epochs on binarised
Fashion-MNIST, each in its own process (so its peak memory is its own), one after the other on the same
machine, and writes ``DIR/bench.json``, ``DIR/bench.md`` and ``DIR/<label>_samples.png`` with, per algorithm:

* seconds per epoch (wall and CPU time of training only; evaluations during training are excluded);
* peak resident memory of the process (and peak CUDA memory on a GPU);
* floating-point work of one iteration: matrix products counted by ``torch.utils.flop_counter`` (forward and
  backward), plus the Cholesky factorisations and triangular solves of DDC-HM's ridge regressions, which it
  does not see (n^3 / 3 per factorisation, 2 n^2 m per solve with m right-hand sides), stated as a fraction of
  the machine's measured matrix-multiply rate (float32 2048 x 2048 products in the same process and threads):
  the achieved rate over the physical limit; an entry trained with ``train.precision: bfloat16`` (mixed
  precision) also gets the rate of bfloat16 products, the limit for the share of its work that is lowered;
* the test MMD^2 (Gaussian kernel, median-heuristic width on the test images) and importance-sampled NLL
  reached at the end, and an MMD^2 learning curve against training wall time (``--evals`` points) from which
  the time DDC-HM needs to reach VIMCO's final MMD^2 is read.

Everything (settings, config, entries, data, the output directory) is checked before anything is written,
and ``DIR`` appears only when the benchmark has finished. The pieces: :class:`BenchSettings`
(:mod:`~wakesleep.bench.settings`), :mod:`~wakesleep.bench.flops` (FLOP counting and the matrix-multiply
rate), :mod:`~wakesleep.bench.sbn` (the case: entries as :class:`~wakesleep.spec.RunSpec`, built and trained
through :mod:`wakesleep.runs`; :func:`run_one`), :mod:`~wakesleep.bench.report` (summary, ``bench.md``),
:mod:`~wakesleep.bench.runner` (:func:`run_bench`: one process per entry).
"""

from wakesleep.bench.flops import MatmulFlops, iteration_flops, matmul_rate, sleep_cycle, solver_flops
from wakesleep.bench.report import markdown, summary
from wakesleep.bench.runner import run_bench, run_in_process
from wakesleep.bench.sbn import check_inputs, entry_specs, independent_pixels_row, run_one
from wakesleep.bench.settings import BENCHMARKS, BenchSettings

__all__ = [
    "BENCHMARKS",
    "BenchSettings",
    "MatmulFlops",
    "check_inputs",
    "entry_specs",
    "independent_pixels_row",
    "iteration_flops",
    "markdown",
    "matmul_rate",
    "run_bench",
    "run_in_process",
    "run_one",
    "sleep_cycle",
    "solver_flops",
    "summary",
]

"""The whole benchmark: every entry in its own process, then ``bench.json`` and ``bench.md``.

:func:`run_bench` checks everything first (:func:`wakesleep.bench.sbn.check_inputs`: settings, config,
entries, data; and the output directory), so that a mistake fails before anything is written. It then works
in a hidden staging directory beside ``out`` (:func:`wakesleep.outdirs.staged_dir`), which is swapped in, with the
``.wakesleep`` marker, only when the benchmark has finished: ``out`` appears complete or not at all.

Each entry is trained and measured by :func:`wakesleep.bench.sbn.run_one` in a fresh Python process
(``python -m wakesleep.bench.worker``), so that its peak memory is its own; an entry that fails or times out
gets ``{"error": ...}`` in place of its row and the others go on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wakesleep import io as wio
from wakesleep import outdirs
from wakesleep.bench.report import markdown, summary
from wakesleep.bench.sbn import check_inputs, independent_pixels_row
from wakesleep.bench.settings import BenchSettings

__all__ = ["run_bench", "run_in_process"]


def run_in_process(
    settings: BenchSettings, label: str, out_dir: str | os.PathLike, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run :func:`wakesleep.bench.sbn.run_one` for ``label`` in a fresh process.

    Parameters
    ----------
    settings : BenchSettings
    label : str
        The entry.
    out_dir : path
        An existing directory: the entry's ``<label>_samples.png`` goes there (its row passes through a
        hidden file there too, removed after).
    log : callable, optional
        Receives a progress line before and after the entry.

    Returns
    -------
    dict
        The entry's row, or ``{"error": <the last line the process wrote>}`` (or the timeout).
    """
    out_dir = Path(out_dir)
    tmp = out_dir / f".{label}.json"
    cmd = [
        sys.executable,
        "-m",
        "wakesleep.bench.worker",
        json.dumps(settings.to_dict()),
        label,
        str(out_dir),
        str(tmp),
    ]
    if log is not None:
        log(f"bench {settings.benchmark}: {label} ...")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.timeout, env=env)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        return {"error": f"timed out after {settings.timeout} s"}
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:300]}
    row = json.loads(tmp.read_text())
    tmp.unlink()
    if log is not None:
        log(f"  {row['seconds_per_epoch']:.1f} s/epoch, MMD^2 {row['final_mmd2']:.3g}, NLL {row['nll']['nll']:.2f}")
    return row


def run_bench(
    settings: BenchSettings,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark every entry of ``settings`` and write ``out/bench.json``, ``out/bench.md`` and sample grids.

    Parameters
    ----------
    settings : BenchSettings
    out : path
        The output directory; it appears only when the benchmark has finished (entries that failed are
        recorded in it).
    overwrite : bool, default False
        Replace an existing non-empty ``out`` written by wakesleep.
    command : str, optional
        The command line recorded in the report (default: the settings).
    log : callable, optional
        Receives progress lines.

    Returns
    -------
    dict
        The content of ``bench.json``: ``algorithms`` (label -> row or ``{"error": ...}``), ``summary``,
        ``independent_pixels``, the machine.

    Raises
    ------
    WakesleepError
        A bad setting (``exc.setting`` names it), config, data or output directory; raised before anything
        is written.
    """
    settings.validate()
    outdirs.check_output_dir(out, overwrite, kind="bench")
    specs, dataset = check_inputs(settings)
    with outdirs.staged_dir(out, overwrite, kind="bench") as tmp:
        rows = {label: run_in_process(settings, label, tmp, log) for label in specs}
        first = next((r for r in rows.values() if "error" not in r), {})
        result = {
            "independent_pixels": independent_pixels_row(settings, dataset, first),
            "benchmark": settings.benchmark,
            "epochs": settings.epochs,
            "n_train": first.get("n_train"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{first.get('threads')} torch threads, device {first.get('device')}, torch {torch.__version__}",
            "command": command if command is not None else repr(settings),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "algorithms": rows,
            "summary": summary(rows),
        }
        wio.save_json(tmp / "bench.json", result)
        wio.write_text(tmp / "bench.md", markdown(result))
    return result

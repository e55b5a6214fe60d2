"""Paired test NLL differences between models scored by AIS on the same test images, from the result files of
``bench_ddc_recognition.py`` (``{label: {"ais_test": ...}}``) and ``sample_test_ranking.py``
(``{"models": {label: {"nll_test": ...}}}``).

Each model is named ``FILE:LABEL`` (``FILE`` alone when it holds one model). Every row is a model of
``--models``; every column after its NLL is its paired difference (``wakesleep.eval.compare.
paired_nll_difference``: mean and standard error over the images of NLL_row - NLL_column) with a model of
``--against``. Both must have scored the same images (same ``points``, same data); that is checked.

Usage::

    python benchmarks/paired_nll.py --models A.json B.json:label --against C.json:vimco_k50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from wakesleep.eval.compare import paired_nll_difference


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2 (bad input)."""
    print(f"paired_nll: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(spec: str) -> tuple[str, dict]:
    """``(label, nll record)`` of ``FILE[:LABEL]``."""
    path, _, label = spec.partition(":")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    entries = data.get("models", data)
    if not label:
        if len(entries) != 1:
            fail(f"{path} holds {', '.join(entries)}: name one as {path}:LABEL")
        label = next(iter(entries))
    if label not in entries:
        fail(f"{path} has no entry {label!r} (it has {', '.join(entries)})")
    record = entries[label].get("ais_test") or entries[label].get("nll_test")
    if not record or "log_px" not in record:
        fail(f"{path}:{label} has no per-image AIS log-likelihoods")
    return label, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="FILE[:LABEL] of each row")
    ap.add_argument("--against", nargs="*", default=[], help="FILE[:LABEL] of each paired column")
    args = ap.parse_args()
    rows = [load(s) for s in args.models]
    cols = [load(s) for s in args.against]
    print("| model | test AIS NLL |" + "".join(f" minus {c} ({r['nll']:.2f}), paired |" for c, r in cols))
    print("| --- " * (2 + len(cols)) + "|")
    for label, rec in rows:
        cells = [label, f"{rec['nll']:.2f} +- {rec['sem']:.2f}"]
        for c, ref in cols:
            if len(ref["log_px"]) != len(rec["log_px"]):
                fail(f"{label} and {c} scored different numbers of images")
            d = paired_nll_difference(rec, ref)
            cells.append(f"{d['mean']:+.2f} +- {d['sem']:.2f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""The reliability table of docs/RESULTS.md: bad inputs tried, faults injected, and what came of them.

Runs the reliability tests with pytest (JUnit XML) and counts their cases by kind:

* ``tests/test_catalogue.py``: named bad inputs per command (exit status 2, exactly one ``error:`` line, no
  traceback, the disk unchanged) and Python API mistakes (one-line ``WakesleepError``);
* ``tests/test_property_inputs.py``, ``tests/test_support_model_fuzz.py``: generated configs, option values,
  model sections and data arrays (hypothesis examples per test are printed by ``--hypothesis-show-statistics``);
* ``tests/test_kill_resume.py``: real training processes of every algorithm killed (SIGKILL, SIGTERM, SIGINT)
  and resumed, compared with an uninterrupted run byte for byte;
* ``tests/test_io_safety.py``: refused output paths, interrupted directory swaps, kills during staging;
* ``tests/test_divergence.py``, ``tests/test_support_data.py``: divergence and data against each family.

Usage::

    python benchmarks/reliability.py [--out table.md]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "sample", "experiment", "evaluate", "bench")
FILES = {
    "tests/test_catalogue.py": "named bad inputs and API mistakes",
    "tests/test_property_inputs.py": "generated configs, options and data arrays (2 tests: 700 + 500 examples)",
    "tests/test_support_model_fuzz.py": "generated model sections",
    "tests/test_support_data.py": "data against each family's support",
    "tests/test_kill_resume.py": "killed training processes resumed",
    "tests/test_io_safety.py": "output directories: refusals, interrupted swaps, kills",
    "tests/test_divergence.py": "divergence and rollback",
}


def kind_of(case: dict) -> str:
    """The row a test case counts in: the command of a catalogue case, else its file's description."""
    name = case["name"]
    if case["file"].endswith("test_catalogue.py") and "[" in name:
        label = name.split("[", 1)[1].rstrip("]")
        if name.startswith("test_api"):
            return "catalogue: Python API"
        command = label.split(":")[0].split(" ")[0]
        return "catalogue: " + (command if command in COMMANDS else "command line (no, unknown command or flag)")
    return FILES[case["file"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *FILES]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        root = ET.parse(xml).getroot()
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for tc in root.iter("testcase"):
        file = tc.get("classname", "").replace(".", "/") + ".py"
        file = next((f for f in FILES if file.endswith(Path(f).name)), file)
        case = {"file": file, "name": tc.get("name", "")}
        outcome = "failed" if tc.find("failure") is not None or tc.find("error") is not None else "passed"
        if tc.find("skipped") is not None:
            outcome = "skipped"
        rows[kind_of(case)][outcome] += 1
    lines = ["| what was tried | cases | kept every promise | broke one | skipped |", "| --- | --- | --- | --- | --- |"]
    total: collections.Counter = collections.Counter()
    for kind in sorted(rows):
        c = rows[kind]
        total.update(c)
        lines.append(f"| {kind} | {sum(c.values())} | {c['passed']} | {c['failed']} | {c['skipped']} |")
    lines.append(f"| **all** | {sum(total.values())} | {total['passed']} | {total['failed']} | {total['skipped']} |")
    table = "\n".join(lines)
    print(table)
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    return 0 if total["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

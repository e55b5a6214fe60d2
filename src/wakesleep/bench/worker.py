"""One benchmark entry in its own process (started by :func:`wakesleep.bench.runner.run_in_process`).

``python -m wakesleep.bench.worker SETTINGS_JSON LABEL OUT_DIR ROW_FILE`` runs
:func:`wakesleep.bench.sbn.run_one` and writes its row to ``ROW_FILE`` (atomically). A mistake prints one
``error:`` line on stderr and exits with status 2. Not a user command: the arguments are positional and
produced by the runner.
"""

from __future__ import annotations

import json
import sys

from wakesleep.errors import WakesleepError


def main(argv: list[str] | None = None) -> int:
    """Run one entry; returns the exit status."""
    from wakesleep import io as wio
    from wakesleep.bench.sbn import run_one
    from wakesleep.bench.settings import BenchSettings
    from wakesleep.runtime import keep_freed_memory

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print("error: usage: python -m wakesleep.bench.worker SETTINGS_JSON LABEL OUT_DIR ROW_FILE", file=sys.stderr)
        return 2
    settings_json, label, out_dir, row_file = args
    keep_freed_memory()  # as the command line does: the entry is timed as `wakesleep` runs it
    try:
        row = run_one(BenchSettings.from_dict(json.loads(settings_json)), label, out_dir)
    except WakesleepError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    wio.write_text(row_file, json.dumps(row))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

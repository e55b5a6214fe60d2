"""Output directories: built aside, marked as the tool's, swapped in atomically, recoverable after a kill.

A directory is only ever replaced or deleted if the tool wrote it (it carries the ``.wakesleep`` marker), and
never the root, the home or the current directory or an ancestor. The names are also importable from
:mod:`wakesleep.io`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wakesleep.errors import WakesleepError
from wakesleep.fsutil import UMASK, fsync_dir
from wakesleep.io import save_json

__all__ = [
    "MARKER",
    "safe_output_path",
    "read_marker",
    "write_marker",
    "check_output_dir",
    "recover_interrupted_swap",
    "staged_dir",
    "partial_dir",
    "find_resumable",
    "Stage",
    "resumable_dir",
]

MARKER = ".wakesleep"
# the files of a checkpoint directory written before markers existed (one holding only these is replaceable)
_CHECKPOINT_FILES = frozenset(
    {"model.safetensors", "algorithm.safetensors", "algorithm.pt", "optimizer.pt", "rng.safetensors", "state.json"}
)


def _token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _norm(out: str | os.PathLike) -> Path:
    """``out`` made absolute, its parent's symlinks resolved (the last component is kept as given)."""
    path = Path(out).absolute()
    return path.resolve() if path.name in ("", "..") else path.parent.resolve() / path.name


def safe_output_path(out: str | os.PathLike) -> Path:
    """``out`` as an absolute path, or :class:`WakesleepError` if writing or replacing it could hit user files.

    Refused (symlinks resolved, whatever the spelling: ``.``, ``..``, ``a/..``): the empty string (an unset
    shell variable), the filesystem root, the home directory (``$HOME``), the current directory and every
    directory that contains it.
    """
    text = os.fspath(out)
    if not text:
        raise WakesleepError("--out: the path is empty (an unset shell variable?); refusing to write there")
    path = _norm(text)
    real = path.resolve()
    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:  # the current directory was deleted
        cwd = None
    why = None
    if real == Path(real.anchor):
        why = "is the filesystem root"
    elif real == Path(os.path.expanduser("~")).resolve():
        why = "is the home directory"
    elif real == cwd:
        why = "is the current directory"
    elif cwd is not None and real in cwd.parents:
        why = f"contains the current directory {cwd}"
    if why is not None:
        shown = text if str(real) == str(text) else f"{text} ({real})"
        raise WakesleepError(f"--out: {shown} {why}; refusing to write or replace it (give a new directory)")
    return path


def read_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``.wakesleep`` marker of directory ``path`` (a dict with ``"tool": "wakesleep"``), or None."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("tool") == "wakesleep" else None


def write_marker(path: str | os.PathLike, kind: str, complete: bool = False) -> None:
    """Write ``path/.wakesleep``: ``{"tool": "wakesleep", "kind", "complete"}``.

    No time stamp: identical seeded runs write identical files.

    ``complete`` is set just before a staged directory is swapped in: recovery promotes only complete ones.
    """

    save_json(Path(path) / MARKER, {"tool": "wakesleep", "kind": kind, "complete": complete})


def _owned(path: Path, kind: str = "run") -> bool:
    """Whether the directory ``path`` may be replaced: empty, marked, or (kind checkpoint) only checkpoint files."""
    names = {p.name for p in path.iterdir()}
    return not names or read_marker(path) is not None or (kind == "checkpoint" and names <= _CHECKPOINT_FILES)


def _not_ours(path: Path, label: str = "--out: ") -> WakesleepError:
    why = f"not a directory written by wakesleep (no {MARKER} marker); refusing to replace it"
    return WakesleepError(f"{label}{path}: {why}")


def _check_target(out: Path, overwrite: bool, kind: str) -> None:
    """Raise :class:`WakesleepError` unless the finished directory may be renamed onto ``out`` now."""
    label = "" if kind == "checkpoint" else "--out: "
    if out.is_symlink():
        raise WakesleepError(f"{label}{out} is a symbolic link; refusing to replace it (give the directory itself)")
    if out.exists():
        if not out.is_dir():
            raise WakesleepError(f"{label}{out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise WakesleepError(
                    f"{label}{out} exists and is not empty (choose another directory or pass --overwrite)"
                )
            if not _owned(out, kind):
                raise _not_ours(out, label)
    if out.parent.exists() and not out.parent.is_dir():
        raise WakesleepError(f"{label}{out.parent} is not a directory")


def check_output_dir(out: str | os.PathLike, overwrite: bool = False, *, kind: str = "run") -> Path:
    """Return ``out`` (absolute) if it can become a fresh output directory, else raise :class:`WakesleepError`.

    Parameters
    ----------
    out : path
        Refused as in :func:`safe_output_path`; an interrupted swap at ``out`` is recovered first
        (:func:`recover_interrupted_swap`).
    overwrite : bool, default False
        Allow replacing a non-empty ``out``, which must carry the ``.wakesleep`` marker.
    kind : {"run", "experiment", "checkpoint"}
        What is written. ``"checkpoint"`` (internal) also replaces an unmarked directory holding only
        checkpoint files (as written before markers existed), and its messages lack the ``--out:`` prefix.
    """
    out = safe_output_path(out)
    recover_interrupted_swap(out, kind)
    _check_target(out, overwrite, kind)
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile (by another process recovering the same directory)
        return 0.0


def _siblings(out: Path, what: str) -> list[Path]:
    """The directories ``.<name>.<what>-<token>`` beside ``out``, oldest first."""
    pattern = re.compile(re.escape(f".{out.name}.{what}-") + r"[\w-]+")
    try:
        found = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
    return sorted(found, key=_mtime)


def _discard(path: Path, out: Path) -> None:
    """Delete ``path`` (beside ``out``) by renaming it to ``.<name>.deleting-<token>`` first: a kill midway
    leaves a name that :func:`recover_interrupted_swap` finishes deleting, never a half-deleted run."""
    trash = out.parent / f".{out.name}.deleting-{_token()}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _promote(tmp: Path, out: Path, kind: str) -> None:
    """Swap the finished directory ``tmp`` in at ``out`` (already checked); the old ``out`` stays reachable.

    Marker set complete, then ``out -> .<name>.old-<token>``, ``tmp -> out``, then the old one is deleted.
    """
    write_marker(tmp, kind, complete=True)
    old = None
    if os.path.lexists(out):
        old = out.parent / f".{out.name}.old-{_token()}"
        os.rename(out, old)
    os.rename(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        _discard(old, out)


def recover_interrupted_swap(out: str | os.PathLike, kind: str = "run") -> str | None:
    """Finish or undo a replacement of ``out`` that a kill interrupted (see :func:`staged_dir`).

    Rolls forward when it can: if ``out`` is missing and a staged directory of it (``<out>.partial`` or
    ``.<name>.partial-*``) has a complete marker, it is renamed to ``out`` (the newest, if several) and the
    old runs ``.<name>.old-*`` are deleted; if none is complete, the newest ``.<name>.old-*`` (marked or
    empty) is renamed back to ``out``. If ``out`` exists with a complete marker, leftover marked
    ``.<name>.old-*`` are deleted. ``.<name>.deleting-*`` are always deleted. ``kind="checkpoint"`` also
    counts old checkpoint directories without a marker as the tool's (see :func:`check_output_dir`).

    Returns
    -------
    str or None
        ``"promoted"``, ``"restored"``, ``"cleaned"``, or None when nothing was left to recover.
    """
    out = _norm(out)
    did = None
    for p in _siblings(out, "deleting"):
        shutil.rmtree(p, ignore_errors=True)
        did = "cleaned"
    olds = [p for p in _siblings(out, "old") if _owned(p, kind)]
    if os.path.lexists(out):
        if olds and (read_marker(out) or {}).get("complete"):
            for p in olds:
                _discard(p, out)
            did = "cleaned"
        return did
    staged = [p for p in (partial_dir(out), *_siblings(out, "partial")) if (read_marker(p) or {}).get("complete")]
    source = max(staged, key=lambda p: _mtime(p / MARKER)) if staged else (olds[-1] if olds else None)
    if source is None:
        return did
    try:
        os.rename(source, out)
    except OSError:  # another process recovered it first
        return did
    fsync_dir(out.parent)
    if not staged:
        return "restored"
    for p in olds:
        _discard(p, out)
    return "promoted"


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False, *, kind: str = "run") -> Iterator[Path]:
    """Yield a hidden directory ``.<name>.partial-*`` beside ``out``; on success swap it in, on failure delete it.

    ``out`` either appears complete or not at all. It is checked by :func:`check_output_dir` on entry and
    again before the swap, and gets the ``.wakesleep`` marker (``kind``, complete) just before it. The
    swap keeps the old ``out`` as ``.<name>.old-<token>`` until the new one is in place; a kill in between
    is repaired by :func:`recover_interrupted_swap` on the next call for ``out``.
    """
    out = check_output_dir(out, overwrite, kind=kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it private; the final directory should not be
        yield tmp
        _check_target(out, overwrite, kind)
    except BaseException:
        _discard(tmp, out)
        raise
    _promote(tmp, out, kind)


def partial_dir(out: str | os.PathLike) -> Path:
    """Where an interrupted resumable run for ``out`` is kept: the visible sibling ``<out>.partial``."""
    out = _norm(out)
    return out.parent / f"{out.name}.partial"


def find_resumable(out: str | os.PathLike) -> Path | None:
    """The directory a resumed run for ``out`` continues: ``<out>.partial`` if an interrupted run is kept there
    (it wins: it is newer), else ``out`` if it is a directory (a finished run), else None.

    Refuses ``out`` as :func:`safe_output_path` does; recovers an interrupted swap first.
    """
    out = safe_output_path(out)
    recover_interrupted_swap(out)
    partial = partial_dir(out)
    if partial.is_dir():
        return partial
    return out if out.is_dir() else None


class Stage:
    """The working directory of :func:`resumable_dir`.

    Attributes
    ----------
    path : Path
        Where the run writes its files.
    resumed : bool
        True when ``path`` is an existing ``<out>.partial`` being continued.
    keep : bool
        Set (by :meth:`mark_started`) once work worth keeping has begun, or when resuming: a failure then
        keeps ``path`` instead of deleting it.
    kept : Path or None
        Set on a failure that kept the directory: the ``<out>.partial`` path.
    """

    def __init__(self, path: Path, resumed: bool) -> None:
        self.path = path
        self.resumed = resumed
        self.keep = resumed
        self.kept: Path | None = None

    def mark_started(self) -> None:
        """From now on a failure keeps the directory as ``<out>.partial``."""
        self.keep = True


@contextlib.contextmanager
def resumable_dir(
    out: str | os.PathLike, overwrite: bool = False, resume: bool = False, *, kind: str = "run"
) -> Iterator[Stage]:
    """Like :func:`staged_dir`, but the work is done in ``<out>.partial``, kept after a failure once started.

    Parameters
    ----------
    out : path
        The final directory; it appears (``<out>.partial`` swapped in) only when the block succeeds.
    overwrite : bool, default False
        Replace an existing non-empty ``out`` on success, and discard an existing ``<out>.partial`` now;
        both only if they carry the ``.wakesleep`` marker (or are empty).
    resume : bool, default False
        Continue in the existing ``<out>.partial`` (:func:`partial_dir`); a failure leaves it in place.
    kind : str, default "run"
        The marker's kind (``"run"``, ``"experiment"``), written into ``<out>.partial`` when it is created.

    Yields
    ------
    Stage
        Its ``path`` is ``<out>.partial``. Without ``resume``, a failure before :meth:`Stage.mark_started`
        deletes it (a mistake caught before any real work leaves nothing behind); after it, or when resuming,
        any exception (``KeyboardInterrupt`` included) keeps it and sets ``stage.kept``. A killed process
        leaves it too. Only a successful swap, or a later ``overwrite``, removes it.

    Raises
    ------
    WakesleepError
        If ``out`` cannot become a fresh output directory (:func:`check_output_dir`), if ``resume`` and
        ``<out>.partial`` is not a directory, or if not ``resume`` and ``<out>.partial`` exists without
        ``overwrite`` (it would be lost otherwise) or is not the tool's.
    """
    out = check_output_dir(out, overwrite, kind=kind)
    partial = partial_dir(out)
    held = f"--out: {partial} holds an interrupted run: continue it with --resume, or remove it to start afresh"
    if resume:
        if not partial.is_dir():
            raise WakesleepError(f"--resume: {partial} not found (no interrupted run of --out {out} to continue)")
    else:
        if os.path.lexists(partial):
            if not overwrite:
                raise WakesleepError(held + " (or pass --overwrite)")
            if partial.is_symlink() or not partial.is_dir() or not _owned(partial, kind):
                raise _not_ours(partial)
            _discard(partial, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(partial)
        except FileExistsError:
            raise WakesleepError(held) from None
    stage = Stage(partial, resumed=resume)
    try:
        if not resume:
            write_marker(partial, kind)
        yield stage
        _check_target(out, overwrite, kind)
    except BaseException:
        if stage.keep:
            stage.kept = partial
        else:
            _discard(partial, out)
        raise
    _promote(partial, out, kind)

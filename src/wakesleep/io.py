"""Files: atomic writes (temporary file in the same directory, fsync, rename), JSON, npz, safetensors; and
output directories that are built aside, marked as the tool's, and swapped in atomically.

Every writer here either leaves the complete new file or the old one (or none): a crash or an exception
never leaves a half-written file behind. A directory is only ever replaced or deleted if the tool wrote it
(it carries the ``.wakesleep`` marker), and never the root, the home or the current directory or an ancestor.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError

__all__ = [
    "atomic_write",
    "write_bytes",
    "write_text",
    "save_json",
    "load_json",
    "append_jsonl",
    "read_jsonl",
    "save_npz",
    "load_npz",
    "save_safetensors",
    "load_safetensors",
    "save_tensors",
    "load_tensors",
    "load_params_npz",
    "to_jsonable",
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort; not every platform can open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on a clean exit fsync it and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the final file should not be
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy scalars/arrays and paths to plain JSON values (non-finite floats -> null)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def save_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON, atomically."""
    write_text(path, json.dumps(to_jsonable(obj), indent=indent, sort_keys=False) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise WakesleepError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WakesleepError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line; the line is written with a single ``write`` and flushed to disk.

    Appending cannot be made atomic by renaming, but a single small write of a complete line means a
    reader sees either the whole record or none of it (partial trailing lines are skipped by
    :func:`read_jsonl`).
    """
    line = json.dumps(to_jsonable(record), separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read every complete JSON line of ``path`` (a trailing partial line is ignored)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Write arrays (numpy or torch) to an uncompressed ``.npz``, atomically."""
    conv = {}
    for k, v in arrays.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        conv[k] = np.asarray(v)
    buf = io.BytesIO()
    np.savez(buf, **conv)
    write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file; a missing or unreadable file raises :class:`WakesleepError`."""
    path = Path(path)
    if not path.is_file():
        raise WakesleepError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise WakesleepError(f"{path}: not a readable .npz file ({str(exc).splitlines()[0]})") from None


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a dict of tensors as safetensors, atomically (tensors are made contiguous, copied to CPU).

    The bytes depend only on the tensors and ``metadata``: the JSON header is rewritten with sorted keys
    (``safetensors`` writes the metadata in hash order, which differs between processes).
    """
    from safetensors.torch import save

    clean = {k: tensors[k].detach().cpu().contiguous() for k in sorted(tensors)}
    raw = save(clean, metadata=dict(sorted(metadata.items())) if metadata else None)
    n = int.from_bytes(raw[:8], "little")
    text = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    header = text.encode() + b" " * (-len(text.encode()) % 8)  # data offsets count from the header's end
    write_bytes(path, len(header).to_bytes(8, "little") + header + raw[8 + n :])


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise WakesleepError(f"{path}: file not found")
    try:
        return load(path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types
        raise WakesleepError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def save_safetensors(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Save ``model.state_dict()`` (parameters and buffers) to ``path`` in safetensors format."""
    save_tensors(path, model.state_dict(), metadata={"format": "pt", "library": "wakesleep"})


def load_safetensors(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> torch.nn.Module:
    """Load a state dict saved by :func:`save_safetensors` into ``model`` (dtype/device follow the model)."""
    state = load_tensors(path)
    own = model.state_dict()
    if strict:
        missing = sorted(set(own) - set(state))
        unknown = sorted(set(state) - set(own))
        if missing:
            raise WakesleepError(f"{path}: missing tensor {missing[0]!r} for this model")
        if unknown:
            raise WakesleepError(f"{path}: unknown tensor {unknown[0]!r} for this model")
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise WakesleepError(
                f"{path}: tensor {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=strict)
    return model


def load_params_npz(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Set model parameters (or buffers) from an ``.npz`` whose keys are parameter names.

    Keys not given keep their current values. An unknown name, a wrong shape or a non-finite value raises
    :class:`WakesleepError` naming the key and the file.
    """
    arrays = load_npz(path)
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    with torch.no_grad():
        for key, value in arrays.items():
            if key not in named:
                known = ", ".join(n for n, _ in model.named_parameters())
                raise WakesleepError(f"{path}: unknown parameter {key!r} (model parameters: {known})")
            target = named[key]
            if tuple(value.shape) != tuple(target.shape):
                raise WakesleepError(
                    f"{path}: parameter {key!r} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}"
                )
            if value.dtype.kind not in "fiub":
                raise WakesleepError(f"{path}: parameter {key!r} is not numeric (dtype {value.dtype})")
            if not np.all(np.isfinite(value)):
                raise WakesleepError(f"{path}: parameter {key!r} contains NaN or inf")
            target.copy_(torch.as_tensor(value, dtype=target.dtype, device=target.device))
    return model


# --------------------------------------------------------------------------------------------------------
# output directories: built aside, marked, swapped in atomically, recoverable after a kill
# --------------------------------------------------------------------------------------------------------
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
    _fsync_dir(out.parent)
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
    _fsync_dir(out.parent)
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
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private; the final directory should not be
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

"""Files: atomic writes (temporary file in the same directory, fsync, rename), JSON, npz, safetensors.

Every writer here either leaves the complete new file or the old one (or none): a crash or an exception
never leaves a half-written file behind. Output directories (built aside, marked as the tool's, swapped in
atomically) are in :mod:`wakesleep.outdirs`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError
from wakesleep.fsutil import UMASK, fsync_dir

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
]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on a clean exit fsync it and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes it private; the final file should not be
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


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
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for k, v in conv.items():  # np.savez's layout, with a fixed time stamp: identical runs, identical bytes
            info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, v, allow_pickle=False)
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

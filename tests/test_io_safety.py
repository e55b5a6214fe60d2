"""Output directories: refusals, the ``.wakesleep`` marker, atomic recoverable swaps, resumable staging;
and byte-reproducible safetensors files (issue 17)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wakesleep import io as wio
from wakesleep import outdirs
from wakesleep.errors import WakesleepError


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def make_run(out: Path, text: str = "old") -> Path:
    """A finished run written by the tool at ``out``, holding ``a.txt``."""
    with outdirs.staged_dir(out) as tmp:
        (tmp / "a.txt").write_text(text)
    return out


# --------------------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------------------
def test_empty_path_is_refused():
    for call in (lambda: outdirs.check_output_dir("", overwrite=True), lambda: outdirs.find_resumable("")):
        with pytest.raises(WakesleepError, match="path is empty") as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("overwrite", [False, True])
def test_root_home_cwd_and_ancestors_are_refused(tmp_path, monkeypatch, overwrite):
    home, work = tmp_path / "home", tmp_path / "home" / "proj" / "sub"
    work.mkdir(parents=True)
    (home / "keep.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (tmp_path / "link").symlink_to(work)
    cases = {
        "/": "filesystem root",
        str(home): "home directory",
        "~": None,  # not expanded by the tool: a relative directory named "~" is fine
        ".": "current directory",
        str(work): "current directory",
        str(tmp_path / "link"): "current directory",  # symlinks are resolved
        "..": "contains the current directory",
        "../..": "home directory",
        str(tmp_path): "contains the current directory",
        "../sub/../..": "home directory",
    }
    for out, needle in cases.items():
        if needle is None:
            assert outdirs.check_output_dir(out, overwrite) == work / "~"
            continue
        for call in (outdirs.check_output_dir, lambda o, w: outdirs.staged_dir(o, w).__enter__()):
            with pytest.raises(WakesleepError, match=needle) as info:
                call(out, overwrite)
            message = str(info.value)
            assert "\n" not in message and out in message, message
    assert (home / "keep.txt").read_text() == "mine"
    assert names(tmp_path) == ["home", "link"] and names(work) == []


def test_existing_file_and_symlink_are_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WakesleepError, match="is not a directory"):
        outdirs.check_output_dir(tmp_path / "f", overwrite=True)
    target = make_run(tmp_path / "run")
    (tmp_path / "ln").symlink_to(target)
    with pytest.raises(WakesleepError, match="symbolic link"):
        outdirs.check_output_dir(tmp_path / "ln", overwrite=True)
    assert (tmp_path / "f").read_text() == "x" and (tmp_path / "ln").is_symlink()


def test_overwrite_needs_the_marker(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(WakesleepError, match="not empty"):
        outdirs.check_output_dir(out)
    for enter in (
        lambda: outdirs.check_output_dir(out, overwrite=True),
        lambda: outdirs.staged_dir(out, overwrite=True).__enter__(),
        lambda: outdirs.resumable_dir(out, overwrite=True).__enter__(),
    ):
        with pytest.raises(WakesleepError) as info:
            enter()
        assert str(info.value) == (
            f"--out: {out}: not a directory written by wakesleep (no .wakesleep marker); refusing to replace it"
        )
    assert names(out) == ["thesis.tex"] and names(tmp_path) == ["mine"]
    # a file put into --out while the run was working is checked again before the swap
    run = make_run(tmp_path / "run")
    with pytest.raises(WakesleepError, match="not empty"):
        outdirs.staged_dir(run).__enter__()
    with pytest.raises(WakesleepError, match="no .wakesleep marker"), outdirs.staged_dir(run, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
        (run / ".wakesleep").unlink()
    assert names(run) == ["a.txt"] and names(tmp_path) == ["mine", "run"]


def test_marker_and_overwrite_of_a_marked_or_empty_directory(tmp_path):
    out = make_run(tmp_path / "run")
    marker = json.loads((out / ".wakesleep").read_text())
    assert marker["tool"] == "wakesleep" and marker["kind"] == "run" and marker["complete"] is True
    with outdirs.staged_dir(out, overwrite=True, kind="experiment") as tmp:
        (tmp / "b.txt").write_text("new")
    assert names(out) == [".wakesleep", "b.txt"] and names(tmp_path) == ["run"]
    assert outdirs.read_marker(out)["kind"] == "experiment"
    (tmp_path / "empty").mkdir()
    make_run(tmp_path / "empty")  # an empty directory is replaced without --overwrite
    assert names(tmp_path / "empty") == [".wakesleep", "a.txt"]


def test_checkpoint_kind_replaces_unmarked_checkpoint_files_only(tmp_path):
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    for name in ("model.safetensors", "state.json"):  # as written before markers existed
        (ckpt / name).write_text("{}")
    with outdirs.staged_dir(ckpt, overwrite=True, kind="checkpoint") as tmp:
        (tmp / "state.json").write_text("{}")
    assert names(ckpt) == [".wakesleep", "state.json"]
    (ckpt / ".wakesleep").unlink()
    (ckpt / "notes.txt").write_text("mine")
    with pytest.raises(WakesleepError, match="no .wakesleep marker") as info:
        outdirs.check_output_dir(ckpt, overwrite=True, kind="checkpoint")
    assert not str(info.value).startswith("--out")


# --------------------------------------------------------------------------------------------------------
# the swap, interrupted at each point, then recovered
# --------------------------------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no ``except Exception`` catches it)."""


def kill_at(monkeypatch, name: str, call: int) -> None:
    """Make the ``call``-th call (1-based) of ``os.<name>`` (or ``shutil.rmtree``) raise :class:`Killed`."""
    module = outdirs.shutil if name == "rmtree" else outdirs.os
    real, count = getattr(module, name), {"n": 0}

    def fake(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fake)


@pytest.mark.parametrize(
    ("point", "left", "result"),
    [
        # out -> .run.old-*, then killed before the new directory is renamed in: the new one is complete
        (("rename", 2), [".run.old-", ".run.partial-"], "promoted"),
        # both renames done, killed before the old run was deleted
        (("rename", 3), ["run", ".run.old-"], "cleaned"),
        # the old run renamed to .run.deleting-*, killed while deleting it
        (("rmtree", 1), ["run", ".run.deleting-"], "cleaned"),
    ],
)
@pytest.mark.parametrize("entry", ["check", "staged", "resumable", "find"])
def test_interrupted_swap_is_recovered(tmp_path, monkeypatch, point, left, result, entry):
    out = make_run(tmp_path / "run")
    kill_at(monkeypatch, *point)
    with pytest.raises(Killed), outdirs.staged_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    monkeypatch.undo()
    got = names(tmp_path)
    assert len(got) == len(left) and all(any(n.startswith(s) for n in got) for s in left), got
    if entry == "check":
        outdirs.check_output_dir(out, overwrite=True)
    elif entry == "staged":
        with pytest.raises(RuntimeError), outdirs.staged_dir(out, overwrite=True):
            raise RuntimeError
    elif entry == "resumable":
        with pytest.raises(RuntimeError), outdirs.resumable_dir(out, overwrite=True):
            raise RuntimeError
    else:
        assert outdirs.find_resumable(out) == out
    assert names(tmp_path) == ["run"] and names(out) == [".wakesleep", "b.txt"]
    assert outdirs.recover_interrupted_swap(out) is None  # nothing left to do


def test_interrupted_swap_restores_the_old_run_when_the_new_one_is_gone(tmp_path, monkeypatch):
    out = make_run(tmp_path / "run")
    kill_at(monkeypatch, "rename", 2)
    with pytest.raises(Killed), outdirs.staged_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    monkeypatch.undo()
    for p in tmp_path.glob(".run.partial-*"):
        outdirs.shutil.rmtree(p)
    assert outdirs.recover_interrupted_swap(out) == "restored"
    assert names(tmp_path) == ["run"] and (out / "a.txt").read_text() == "old"


def test_incomplete_staging_and_unmarked_leftovers_are_not_promoted(tmp_path):
    out = tmp_path / "run"
    (tmp_path / ".run.partial-abc").mkdir()  # a staging directory killed while being written
    outdirs.write_marker(tmp_path / ".run.partial-abc", "run")
    (tmp_path / ".run.old-1").mkdir()
    (tmp_path / ".run.old-1" / "x").write_text("not ours")
    assert outdirs.recover_interrupted_swap(out) is None
    assert names(tmp_path) == [".run.old-1", ".run.partial-abc"]


def test_exception_in_staged_dir_leaves_nothing(tmp_path):
    out = make_run(tmp_path / "run")
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc), outdirs.staged_dir(out, overwrite=True) as tmp:
            (tmp / "half.txt").write_text("x")
            raise exc
    assert names(tmp_path) == ["run"] and names(out) == [".wakesleep", "a.txt"]


# --------------------------------------------------------------------------------------------------------
# resumable staging
# --------------------------------------------------------------------------------------------------------
def test_resumable_dir_failure_before_start_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), outdirs.resumable_dir(out) as stage:
        (stage.path / "config.yaml").write_text("x")
        raise KeyboardInterrupt
    assert names(tmp_path) == [] and outdirs.find_resumable(out) is None


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_resumable_dir_keeps_the_partial_directory(tmp_path, exc):
    out = tmp_path / "run"
    with pytest.raises(exc), outdirs.resumable_dir(out) as stage:
        assert stage.path == tmp_path / "run.partial" == outdirs.partial_dir(out)
        stage.mark_started()
        (stage.path / "ckpt.txt").write_text("step 4")
        raise exc
    assert stage.kept == tmp_path / "run.partial" and names(tmp_path) == ["run.partial"]
    assert outdirs.find_resumable(out) == stage.kept
    # a fresh run is refused ...
    with pytest.raises(WakesleepError, match="holds an interrupted run.*--resume"):
        outdirs.resumable_dir(out).__enter__()
    # ... a resumed one that fails again keeps it ...
    with pytest.raises(exc), outdirs.resumable_dir(out, resume=True) as stage:
        assert (stage.path / "ckpt.txt").read_text() == "step 4" and stage.resumed
        raise exc
    assert names(tmp_path) == ["run.partial"]
    # ... and one that succeeds promotes it
    with outdirs.resumable_dir(out, resume=True) as stage:
        (stage.path / "model.txt").write_text("done")
    assert names(tmp_path) == ["run"] and names(out) == [".wakesleep", "ckpt.txt", "model.txt"]
    assert outdirs.read_marker(out)["complete"] is True and outdirs.find_resumable(out) == out


def test_resumable_dir_overwrite_discards_a_marked_partial_only(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), outdirs.resumable_dir(out, kind="experiment") as stage:
        stage.mark_started()
        raise RuntimeError
    with pytest.raises(RuntimeError), outdirs.resumable_dir(out, overwrite=True, kind="experiment") as stage:
        assert names(stage.path) == [".wakesleep"]
        raise RuntimeError  # not started: removed
    assert names(tmp_path) == []
    partial = tmp_path / "run.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("mine")
    with pytest.raises(WakesleepError, match="no .wakesleep marker"):
        outdirs.resumable_dir(out, overwrite=True).__enter__()
    assert names(partial) == ["notes.txt"]
    with pytest.raises(WakesleepError, match="--resume: .*other.partial not found"):
        outdirs.resumable_dir(tmp_path / "other", resume=True).__enter__()


def test_killed_process_leaves_a_resumable_partial_directory(tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from wakesleep import outdirs
        with outdirs.resumable_dir({str(out)!r}) as stage:
            stage.mark_started()
            (stage.path / "checkpoint.txt").write_text("step 7")
            print("ready", flush=True)
            sys.stdin.readline()  # wait to be killed
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    found = outdirs.find_resumable(out)
    assert found == tmp_path / "run.partial" and (found / "checkpoint.txt").read_text() == "step 7"
    with outdirs.resumable_dir(out, resume=True) as stage:
        (stage.path / "done.txt").write_text("x")
    assert names(out) == [".wakesleep", "checkpoint.txt", "done.txt"]


# --------------------------------------------------------------------------------------------------------
# byte-reproducible safetensors
# --------------------------------------------------------------------------------------------------------
def test_safetensors_bytes_are_reproducible(tmp_path):
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5), "a": torch.zeros(2, dtype=torch.float64)}
    metadata = {f"k{i}": str(i) for i in range(12)}
    for i in range(5):
        wio.save_tensors(tmp_path / f"{i}.safetensors", tensors, metadata=metadata)
    blobs = {(tmp_path / f"{i}.safetensors").read_bytes() for i in range(5)}
    assert len(blobs) == 1
    back = wio.load_tensors(tmp_path / "0.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    from safetensors import safe_open

    with safe_open(tmp_path / "0.safetensors", "pt") as f:
        assert f.metadata() == metadata
    # in other processes too (the hash order of safetensors' metadata changes from process to process)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    wio.save_safetensors(model, tmp_path / "m.safetensors")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    code = (
        "import sys, torch; from wakesleep import io as wio; "
        "sd = torch.load(sys.argv[1]); wio.save_tensors(sys.argv[2], sd, {'format': 'pt', 'library': 'wakesleep'})"
    )
    for i in range(3):
        subprocess.run([sys.executable, "-c", code, tmp_path / "state.pt", tmp_path / f"m{i}.st"], check=True)
        assert (tmp_path / f"m{i}.st").read_bytes() == (tmp_path / "m.safetensors").read_bytes()

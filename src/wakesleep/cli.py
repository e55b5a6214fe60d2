"""The ``wakesleep`` command line: a thin argparse layer over the Python API.

Subcommands::

    wakesleep train --config FILE.yaml --out DIR [--set key=value ...] [--resume]
    wakesleep sample --run DIR -n N --out FILE.npz
    wakesleep experiment NAME --out DIR [--quick] [--config FILE.yaml] [--set key=value ...] [--resume]

plus plug-in subcommands registered in :data:`COMMANDS` (``evaluate``, ``bench``, ``diagnose``, ``plot``): a module of
:mod:`wakesleep.commands` with
``add_arguments(parser)`` and ``run(args) -> int | None``, imported lazily. A user's mistake
(:class:`~wakesleep.errors.WakesleepError`, a missing file, bad YAML) prints ``error: <one line>`` on stderr and
exits with status 2, without a traceback and without creating ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from pathlib import Path

from wakesleep.commands import add_overrides
from wakesleep.errors import WakesleepError

#: plug-in subcommands: name -> (module, one-line help). The module provides add_arguments(parser), run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": ("wakesleep.commands.evaluate", "evaluate a trained run (MMD, log-likelihood, posteriors)"),
    "bench": ("wakesleep.commands.bench", "time algorithms on standard models"),
    "diagnose": ("wakesleep.commands.diagnose", "a trained run's wake gradient and posteriors against references"),
    "plot": ("wakesleep.commands.plot", "draw the learning curves of runs (metrics.jsonl) into a PNG"),
}

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` on stderr (exit status 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_USER_ERROR, f"error: {message} (see '{self.prog} --help')\n")


def _add_progress(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show a progress bar (default: only on a terminal)",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


def _add_run_options(p: argparse.ArgumentParser, resume_help: str) -> None:
    """``--set``, ``--overwrite``, ``--resume`` (``resume_help``) and the progress flags of a command writing DIR."""
    add_overrides(p)
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    p.add_argument("--resume", action="store_true", help=resume_help)
    _add_progress(p)


# --------------------------------------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------------------------------------
#: train settings that a resumed run may change: the length, and what does not change the trajectory
RESUMABLE_CHANGES = (
    "train.epochs",
    "train.max_iters",
    "train.checkpoint_every",
    "train.log_every",
    "train.samples",
    "train.threads",
    "train.on_divergence",
    "train.max_rollbacks",
    "train.tensorboard",
)


def cmd_train(args: argparse.Namespace) -> int:
    """``train``: a fresh run in ``DIR.partial`` (kept if interrupted), promoted to ``--out`` at the end."""
    from wakesleep.outdirs import check_output_dir, resumable_dir
    from wakesleep.runs import prepare
    from wakesleep.spec import RunSpec

    if args.resume:
        return _resume_train(args)
    check_output_dir(args.out, args.overwrite, kind="run")
    run = prepare(RunSpec.load(args.config, args.overrides))  # everything the user gave is checked here
    t0 = time.perf_counter()
    with _kept_notice(args), resumable_dir(args.out, args.overwrite, kind="run") as stage:
        stage.mark_started()
        trainer = run.fit(stage.path, progress=args.progress, handle_signals=True)
    print(f"wrote {args.out} ({trainer.n_iter_} iterations in {time.perf_counter() - t0:.1f} s{_gap(trainer)})")
    return 0


def _resume_train(args: argparse.Namespace) -> int:
    """``train --resume``: continue a finished run in ``--out`` or an interrupted one in ``--out``.partial.

    The config must equal the run's saved ``config.yaml`` but for :data:`RESUMABLE_CHANGES`. An interrupted
    run continues from its checkpoint, or from the start if it was stopped before its first one, and becomes
    ``--out`` when training has finished. Everything that can fail on the user's input is checked before
    anything in the run changes.
    """
    from wakesleep.outdirs import find_resumable, partial_dir, resumable_dir
    from wakesleep.runs import prepare
    from wakesleep.spec import RunSpec
    from wakesleep.training.checkpoint import checkpoint_step

    if args.overwrite:
        raise WakesleepError("--resume: cannot be combined with --overwrite (resuming continues the run in --out)")
    found = find_resumable(args.out)
    if found is None:
        raise WakesleepError(
            f"--out: {args.out}: directory not found (--resume continues a run written by 'wakesleep train')"
        )
    spec = RunSpec.load(args.config, args.overrides)
    saved = found / "config.yaml"
    if saved.is_file():
        key = spec.first_difference(RunSpec.load(saved), ignore=RESUMABLE_CHANGES)
        if key is not None:
            raise WakesleepError(
                f"--resume: the config differs from the run's ({saved}) in {key}; only "
                f"{', '.join(RESUMABLE_CHANGES)} may change"
            )
    run = prepare(spec)
    t0 = time.perf_counter()
    if found != partial_dir(args.out):  # a finished run: continue in place
        trainer = run.fit(found, progress=args.progress, resume_from=found / "checkpoint", handle_signals=True)
    else:
        with _kept_notice(args), resumable_dir(args.out, overwrite=True, resume=True, kind="run") as stage:
            ckpt = stage.path / "checkpoint"
            step = checkpoint_step(ckpt)
            if step is not None and step >= run.total_iterations():  # stopped while writing the run's files
                run.finish_from_checkpoint(stage.path, ckpt)
                print(f"wrote {args.out} (training had finished at iteration {step})")
                return 0
            if step is None:  # killed before its first checkpoint: start again
                (stage.path / "metrics.jsonl").unlink(missing_ok=True)
            resume_from = ckpt if step is not None else None
            trainer = run.fit(stage.path, progress=args.progress, resume_from=resume_from, handle_signals=True)
    done = trainer.n_iter_ - trainer.start_iter_
    print(
        f"wrote {args.out} (resumed at iteration {trainer.start_iter_}: {done} more, {trainer.n_iter_} in all, "
        f"in {time.perf_counter() - t0:.1f} s{_gap(trainer)})"
    )
    return 0


def _gap(trainer) -> str:
    last = trainer.history_[-1] if trainer.history_ else {}
    return f", cov_gap {last['cov_gap']:.3g}" if "cov_gap" in last else ""


@contextlib.contextmanager
def _kept_notice(args: argparse.Namespace):
    """On any failure after training started, say that ``--resume`` continues the kept ``DIR.partial``."""
    from wakesleep.outdirs import partial_dir

    try:
        yield
    except BaseException:
        partial = partial_dir(args.out)
        if partial.is_dir() and any(partial.iterdir()):
            print(
                f"kept the unfinished run in {partial}: 'wakesleep train --config {args.config} --out {args.out} "
                "--resume' (with the same --set options) continues it",
                file=sys.stderr,
            )
        raise


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from wakesleep.io import save_npz
    from wakesleep.runs import load_run
    from wakesleep.training import sample_observations

    if args.n <= 0:
        raise WakesleepError(f"-n: must be a positive integer, got {args.n}")
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise WakesleepError(f"--out: {out} is a directory")
    _, model = load_run(args.run, device=args.device)
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    if args.latents:
        with torch.no_grad():
            values = model.sample(args.n, generator=gen)
        arrays = {"x": values[-1]}
        for name, z in zip(model.latent_names, values[:-1], strict=True):
            arrays[f"latent_{name}"] = z
    else:
        arrays = {"x": sample_observations(model, args.n, gen)}
    save_npz(out, **arrays)
    print(f"wrote {out} ({args.n} samples)")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from wakesleep.experiments import run_experiment

    t0 = time.perf_counter()
    results = run_experiment(
        args.name,
        args.out,
        quick=args.quick,
        overrides=args.overrides,
        config_path=args.config,
        progress=args.progress,
        overwrite=args.overwrite,
        resume=args.resume,
    )
    summary = results.get("summary") if isinstance(results, dict) else None
    resumed = " (resumed)" if args.resume else ""
    print(f"wrote {args.out}{resumed} in {time.perf_counter() - t0:.1f} s" + (f": {summary}" if summary else ""))
    return 0


# --------------------------------------------------------------------------------------------------------
def _command_of(argv: list[str] | None) -> str | None:
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. Plug-in modules are imported only when ``argv`` asks for their subcommand."""
    from wakesleep import __version__ as ver
    from wakesleep.experiments import EXPERIMENTS

    parser = _Parser(prog="wakesleep", description="Wake-sleep learning of hierarchical latent-variable models.")
    parser.add_argument("--version", action="version", version=f"wakesleep {ver}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description=(
            "Train a model; writes DIR/config.yaml (resolved), metrics.jsonl, model.safetensors, samples.npz "
            "and checkpoint/. DIR appears only when training succeeded. With --resume, training continues in DIR "
            "from DIR/checkpoint."
        ),
    )
    p.add_argument("--config", required=True, metavar="FILE.yaml")
    p.add_argument("--out", required=True, metavar="DIR")
    _add_run_options(
        p,
        resume_help=(
            "continue the run in DIR from DIR/checkpoint up to the config's train.epochs (or train.max_iters) "
            "iterations in all, appending to DIR/metrics.jsonl; the config must describe the same model, "
            "algorithm, data and batch size"
        ),
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "sample",
        help="draw samples from a trained run",
        description=("Draw N samples from the model of a run directory and write them to FILE.npz (array x)."),
    )
    p.add_argument("--run", required=True, metavar="DIR")
    p.add_argument("-n", type=int, required=True, metavar="N")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: the run's train.device)")
    p.add_argument("--latents", action="store_true", help="also write latent layers as latent_<name>")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "experiment",
        help="run a paper experiment",
        description=(
            f"Run an experiment ({', '.join(EXPERIMENTS)}); writes DIR/results.json, report.md and PNG plots."
        ),
    )
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--quick", action="store_true", help="scaled-down settings (minutes on a laptop)")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="replace the built-in config")
    _add_run_options(
        p,
        resume_help=(
            "continue the interrupted run kept in DIR.partial (sbn and patches; the same --quick, --config and "
            "--set options): finished algorithm entries are reloaded, not retrained; an entry with a checkpoint "
            "(train.checkpoint_every) continues from it"
        ),
    )
    p.set_defaults(func=cmd_experiment)

    wanted = _command_of(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        module = None
        if name == wanted:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name is None or not module_name.startswith(exc.name):
                    raise
        if module is None or not hasattr(module, "add_arguments"):
            # a placeholder: not asked for (so not imported), or not available in this version
            sub.add_parser(name, help=help_text)
            if name == wanted:
                parser.unavailable = name  # type: ignore[attr-defined]
            continue
        p = sub.add_parser(name, help=help_text, description=getattr(module, "__doc__", None))
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _one_line(message: object) -> str:
    text = " ".join(str(message).split())
    return text or "unknown error"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wakesleep`` console script; returns the exit status."""
    parser = build_parser(argv)
    if getattr(parser, "unavailable", None):
        print(f"error: {parser.unavailable}: not available in this version", file=sys.stderr)
        return EXIT_USER_ERROR
    args = parser.parse_args(argv)
    from wakesleep.runtime import keep_freed_memory

    keep_freed_memory()  # reuse freed blocks instead of page-faulting fresh ones (wakesleep.runtime)
    try:
        return int(args.func(args) or 0)
    except WakesleepError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except FileNotFoundError as exc:
        print(
            f"error: {exc.filename or ''}: file not found" if exc.filename else f"error: {_one_line(exc)}",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        from wakesleep.training import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):  # SIGINT or SIGTERM: the checkpoint is written
            print(f"stopped: {exc}", file=sys.stderr)
            return 128 + exc.signum
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

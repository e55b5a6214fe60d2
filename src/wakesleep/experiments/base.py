"""The base of every experiment: :class:`Experiment`, the :class:`ExperimentContext` it runs in, report helpers.

An experiment is a module of science: its options, its run, its report. Adding one, ``NAME``:

1. ``src/wakesleep/experiments/configs/NAME.yaml``, its defaults (the one source of them): the run sections
   ``model``, ``algorithm``, ``train``, ``data`` and an ``experiment:`` section with the experiment's own keys,
   plus ``quick:``, the dotted overrides ``--quick`` applies. ``configs/NAME.yaml`` at the repository root is a
   relative link to it.
2. ``src/wakesleep/experiments/NAME.py``::

       @dataclass(frozen=True)
       class Options:                         # the experiment: section; types and ranges, no defaults
           n: int = option(minimum=1, doc="points drawn")

       class Toy(Experiment):
           name = "toy"
           Options = Options

           def run(self, ctx: ExperimentContext) -> dict:   # ctx.options.n, ctx.spec, ctx.train(...), ctx.out_dir
               ...
               return {"summary": "...", ...}

           def report(self, results: dict) -> str:         # the text of report.md
               return "\\n".join(["# Toy", "", *table(["a", "b"], [[1, 2]])])

       EXPERIMENT = Toy()

   and its line ``"NAME": "wakesleep.experiments.NAME"`` in :data:`wakesleep.experiments.EXPERIMENTS` (or
   :func:`wakesleep.experiments.register` for an experiment defined elsewhere).

``wakesleep experiment NAME --out DIR [--quick] [--set k=v]`` then resolves the config (the YAML <- ``--config``
<- ``--quick`` <- ``--set``), validates the ``experiment:`` section against ``Options`` (one-line errors naming
``experiment.KEY``) and :meth:`Experiment.check`, runs :meth:`Experiment.run` in a staged directory and writes
``results.json`` (``{"experiment", "quick", **results, "config"}``), ``report.md`` and ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from wakesleep import io as wio
from wakesleep.errors import WakesleepError
from wakesleep.schema import parse, with_source

__all__ = [
    "CONFIG_DIR",
    "Experiment",
    "ExperimentContext",
    "fmt",
    "fmt_p",
    "fmt_nll",
    "table",
    "pyplot",
    "save_figure",
]

#: the shipped defaults of the experiments, ``NAME.yaml`` (package data)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: keys of the experiment section handled here rather than by an experiment's ``Options``
QUICK_KEY = "quick"
#: keys older versions wrote into a run's config.yaml (ignored when such a file is given to ``--config``)
LEGACY_KEYS = ("name", "quick_run")


class Experiment:
    """One experiment: a name, an ``Options`` record for its ``experiment:`` section, ``run`` and ``report``.

    Subclasses set :attr:`name` and :attr:`Options` and implement :meth:`run` and :meth:`report`; the
    defaults come from :attr:`defaults_file` (``configs/NAME.yaml`` of this package).

    Attributes
    ----------
    name : str
        The name given to ``wakesleep experiment``.
    Options : type
        A frozen dataclass whose fields are declared with :func:`wakesleep.schema.option` (types, ranges,
        one line of documentation, and no defaults: the YAML holds them); its ``validate(prefix)`` method, if
        any, does the checks across fields.
    resumable : bool
        Whether ``--resume`` may continue an interrupted run: the experiment trains its entries with
        :meth:`ExperimentContext.train` (an :class:`~wakesleep.experiments.entries.EntryRunner` keeps them).
    algorithm : str or None
        The algorithm the ``algorithm`` section must name, if only one will do (checked by :meth:`check`).
    defaults_path : path or None
        The YAML file of the defaults of an experiment defined outside this package (None: ``configs/NAME.yaml``
        of this package).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type]
    resumable: ClassVar[bool] = False
    algorithm: ClassVar[str | None] = None
    defaults_path: ClassVar[str | os.PathLike | None] = None

    @property
    def defaults_file(self) -> Path:
        """The YAML file of the defaults: :attr:`defaults_path`, by default ``configs/NAME.yaml`` of this package."""
        return Path(self.defaults_path) if self.defaults_path is not None else CONFIG_DIR / f"{self.name}.yaml"

    def defaults_text(self) -> str:
        """The defaults as YAML text."""
        return self.defaults_file.read_text(encoding="utf-8")

    def defaults(self) -> dict[str, Any]:
        """The defaults as a new mapping (the parsed :attr:`defaults_file`)."""
        return copy.deepcopy(_load_defaults(self.defaults_file))

    def parse_options(self, section: Mapping[str, Any] | None, source: str | None = None) -> Any:
        """The ``experiment:`` section as an ``Options`` record, over the shipped defaults.

        Parameters
        ----------
        section : mapping or None
            The section given (keys missing take the values of :attr:`defaults_file`); ``quick`` and keys
            written by older versions are not options.
        source : str, optional
            Where it came from, for error messages.

        Raises
        ------
        WakesleepError
            One line naming the key, e.g. ``config: experiment.datasets must be an integer, got 'x' in FILE``.
        """
        shipped = self.defaults().get("experiment") or {}
        merged = {**shipped, **dict(section or {})}
        merged = {k: v for k, v in merged.items() if k != QUICK_KEY and k not in LEGACY_KEYS}
        try:
            return parse(self.Options, merged, "experiment")
        except WakesleepError as exc:
            raise with_source(exc, source, prefix="config: ") if source else exc from None

    def check(self, config: Mapping[str, Any], options: Any) -> None:
        """Checks across sections (e.g. ``data.source``), before anything is written; raise WakesleepError.

        The default checks ``algorithm.name`` against :attr:`algorithm`.
        """
        if self.algorithm is not None and config["algorithm"]["name"] != self.algorithm:
            raise WakesleepError(f"experiment {self.name}: algorithm.name must be {self.algorithm}")

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Do the work in ``ctx.out_dir`` and return the results (without ``experiment``, ``quick``, ``config``)."""
        raise NotImplementedError

    def report(self, results: dict[str, Any]) -> str:
        """The text of ``report.md`` from the full results (with ``quick`` and ``config``)."""
        raise NotImplementedError


@functools.lru_cache(maxsize=32)
def _load_defaults_cached(path: str, mtime: float) -> dict[str, Any]:
    from wakesleep.config import load_yaml

    return load_yaml(path)


def _load_defaults(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WakesleepError(f"experiment: its defaults {path} are missing (a broken installation?)")
    return _load_defaults_cached(str(path), path.stat().st_mtime)


# --------------------------------------------------------------------------------------------------------
# the context
# --------------------------------------------------------------------------------------------------------
@dataclass
class ExperimentContext:
    """What an experiment's :meth:`~Experiment.run` works with.

    Attributes
    ----------
    experiment : Experiment
        The experiment being run.
    config : dict
        The resolved config (``model``, ``algorithm``, ``train``, ``data``, ``experiment``), saved as
        ``config.yaml`` and in ``results.json``.
    options : object
        The ``experiment:`` section as the experiment's ``Options`` record.
    out_dir : Path
        Where the run writes (a staged directory, renamed to ``--out`` when the run succeeds).
    quick : bool
        Whether ``--quick`` was given (its overrides are already in ``config``).
    progress : bool or None
        Progress bars of training (None: when stderr is a terminal).
    runner : EntryRunner or None
        Trains, continues or reloads the entries of a resumable experiment (None: plain training).
    """

    experiment: Experiment
    config: dict[str, Any]
    options: Any
    out_dir: Path
    quick: bool = False
    progress: bool | None = None
    runner: Any = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def name(self) -> str:
        """The experiment's name."""
        return self.experiment.name

    @functools.cached_property
    def spec(self) -> Any:
        """The config as a :class:`~wakesleep.spec.RunSpec`."""
        from wakesleep.spec import RunSpec

        return RunSpec.from_mapping(self.config, source=f"experiment {self.name}")

    def seconds(self) -> float:
        """Seconds since the context was made."""
        return time.perf_counter() - self.started

    def train(
        self,
        spec: Any,
        name: str | os.PathLike,
        *,
        data: Any = None,
        callback: Callable[[Any, dict], None] | None = None,
    ) -> Any:
        """Train the run ``spec`` in ``out_dir / name`` (through :mod:`wakesleep.runs`).

        Parameters
        ----------
        spec : RunSpec or mapping
            The run (a resolved config mapping is parsed).
        name : path
            Its run directory, relative to :attr:`out_dir`.
        data : tensor or DataSet, optional
            Training data instead of ``spec.data``.
        callback : callable, optional
            ``callback(trainer, record)`` after each logged record (not with a resumable experiment's runner).

        Returns
        -------
        Entry
            ``model``, ``algorithm``, ``run_dir``, ``info`` (``seconds``, ``iterations``, ``epochs``,
            ``final_metrics``), ``evaluation`` (saved by an earlier session of a resumed run, else None).
        """
        from wakesleep import runs
        from wakesleep.experiments.entries import Entry, train_info

        run_dir = self.out_dir / name
        if self.runner is not None:
            if callback is not None:
                raise TypeError("ExperimentContext.train: a resumable run's entries take no callback")
            return self.runner.run(spec, run_dir, data)
        spec = runs.as_spec(spec)
        t0 = time.perf_counter()
        run = runs.train(spec, run_dir, progress=self.progress, data=data, callback=callback)
        info = train_info(spec, run.trainer, time.perf_counter() - t0)
        return Entry(run.model, run.algorithm, run_dir, info, None, trained=True, data=run.data)

    def algorithm(self, model: Any) -> Any:
        """The config's algorithm (``algorithm`` section) for a model the experiment built itself."""
        from wakesleep.runs import build_algorithm

        return build_algorithm(self.spec, model)

    def fit(
        self,
        algorithm: Any,
        data: Any,
        *,
        track: Callable[[], Mapping[str, Any]] | None = None,
        image_shape: Sequence[int] | None = None,
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Train an algorithm the experiment built itself (its own model) with the ``train`` section; no run directory.

        ``train.max_iters``, when set, ends the run (the epochs are then unbounded); no moment-gap monitor. With
        ``train.tensorboard`` the records and the tracked numbers go to ``out_dir/tensorboard/`` (the one file
        written), with grids of model samples when the observations are images.

        Parameters
        ----------
        algorithm : object
            The algorithm (its ``model`` is trained).
        data : tensor
            The training data.
        track : callable, optional
            Called at every logged step; its numbers join ``step``, ``seconds`` and ``grad_norm`` in the history.
        image_shape : sequence of int, optional
            The shape of one observation as an image, for TensorBoard's sample grids (default: 28 x 28 for 784
            columns, else none).

        Returns
        -------
        (Trainer, list of dict)
            The fitted trainer (``n_iter_``, ``seconds_``, ...) and the history of tracked numbers.
        """
        from wakesleep.runs import make_trainer

        history: list[dict[str, Any]] = []
        t = self.spec.train
        board = None
        if t.tensorboard:
            from wakesleep.training.tensorboard import TENSORBOARD_DIR, TensorBoardWriter, image_shape_of

            shape = image_shape if image_shape is not None else image_shape_of(None, int(data.shape[-1]))
            board = TensorBoardWriter(self.out_dir / TENSORBOARD_DIR, image_shape=shape, seed=t.seed)

        def callback(trainer: Any, rec: Mapping[str, Any]) -> None:
            extra = track() if track is not None else {}  # first, as the measures may draw samples
            if track is not None:
                history.append(
                    {"step": rec["step"], "seconds": rec["seconds"], "grad_norm": rec.get("grad_norm"), **extra}
                )
            if board is not None:
                board(trainer, {**rec, **extra})

        epochs = t.epochs if t.max_iters is None else 10**6
        trainer = make_trainer(
            algorithm,
            t,
            epochs=epochs,
            progress=self.progress,
            callback=callback if track is not None or board is not None else None,
            monitor_samples=0,
        )
        with board if board is not None else contextlib.nullcontext():
            return trainer.fit(data), history

    def finish(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """``{"experiment", "quick", **results, "config"}``, saved as results.json with report.md and config.yaml."""
        from wakesleep.config import dump_config

        full = {"experiment": self.name, "quick": self.quick, **results, "config": self.config}
        wio.save_json(self.out_dir / "results.json", full)
        wio.write_text(self.out_dir / "report.md", self.experiment.report(full))
        wio.write_text(self.out_dir / "config.yaml", dump_config(self.config))
        return full


# --------------------------------------------------------------------------------------------------------
# report helpers
# --------------------------------------------------------------------------------------------------------
def fmt(v: Any, digits: int = 3) -> str:
    """A number for a report: ``digits`` significant digits for floats, ``n/a`` for None.

    Parameters
    ----------
    v : object
        The value (a float, an int, None, anything with ``str``).
    digits : int
        Significant digits of a float.

    Returns
    -------
    str
    """
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def fmt_p(log10_p: float | None) -> str:
    """A p-value from its log10, readable down to 1e-1000 and beyond (``< 1e-22``); ``n/a`` for None or NaN.

    Parameters
    ----------
    log10_p : float or None

    Returns
    -------
    str
    """
    if log10_p is None or not math.isfinite(log10_p):
        return "n/a"
    if log10_p > -3:
        return f"{10**log10_p:.3g}"
    return f"< 1e{math.floor(log10_p) + 1}"


def fmt_nll(r: Mapping[str, float] | None) -> str:
    """An NLL estimate as ``nll +- sem (median ESS)``, one decimal; ``n/a`` when missing.

    Parameters
    ----------
    r : mapping or None
        With ``nll``, ``sem``, ``ess_median``.

    Returns
    -------
    str
    """
    if not r:
        return "n/a"
    return f"{r['nll']:.1f} +- {r['sem']:.1f} ({r['ess_median']:.0f})"


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table (cells as given: strings, or formatted with ``str``).

    Parameters
    ----------
    header : sequence
        The column titles.
    rows : iterable of sequences
        The rows, each as long as ``header``.

    Returns
    -------
    list of str
    """
    lines = [_row(header), _row(["---"] * len(header))]
    return lines + [_row(r) for r in rows]


def _row(cells: Sequence[Any]) -> str:
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """``tight_layout``, save ``fig`` as ``path`` (PNG) at ``dpi``, close it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : path
    dpi : int
    """
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)

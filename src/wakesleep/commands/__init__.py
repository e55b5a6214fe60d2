"""Command-line plug-ins of ``wakesleep`` (registered in :data:`wakesleep.cli.COMMANDS`).

Each module provides ``add_arguments(parser)`` and ``run(args) -> int``: it turns the parsed flags into the
library's typed settings, calls the library, and prints a summary. Nothing below this layer sees argparse;
errors about a setting raised by the library (``exc.setting``) are reported under the flag's name
(:func:`naming_flags`).

* :mod:`wakesleep.commands.evaluate`: ``wakesleep evaluate --run DIR`` (:func:`wakesleep.eval.run.evaluate_run`);
* :mod:`wakesleep.commands.bench`: ``wakesleep bench sbn --out DIR`` (:func:`wakesleep.bench.run_bench`).
* :mod:`wakesleep.commands.plot`: ``wakesleep plot --run DIR`` (:func:`wakesleep.eval.curves.plot_learning_curves`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from wakesleep.errors import WakesleepError

__all__ = ["add_overrides", "flag_of", "naming_flags", "settings_from_flags"]


def add_overrides(
    p: argparse.ArgumentParser,
    help_text: str = "override a config value with a dotted key, e.g. --set train.lr=1e-3 (repeatable)",
) -> None:
    """Register ``--set KEY=VALUE`` (repeatable; the values go to ``args.overrides``, a list)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def settings_from_flags(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """The settings record ``cls`` (a dataclass) of the parsed flags, not yet validated.

    Each field is ``values[field]`` when given (a flag that needs converting), else the flag of the same name
    (``args.<field>``, as :func:`flag_of` spells it).
    """
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: values[name] if name in values else getattr(args, name) for name in names})


def flag_of(setting: str, flags: Mapping[str, str] | None = None) -> str:
    """The flag of a setting: ``flags[setting]``, else ``--`` and the name with dashes (``nll_k`` -> ``--nll-k``)."""
    if flags and setting in flags:
        return flags[setting]
    return "--" + setting.replace("_", "-")


@contextlib.contextmanager
def naming_flags(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Within the block, a :class:`WakesleepError` about a setting is raised again naming its flag.

    The library raises ``"<setting>: <detail>"`` with ``exc.setting`` and ``exc.detail`` (and ``exc.value``);
    this turns it into ``"--<flag>: <detail>"`` (``"--<flag> <value>: <detail>"``). Other errors pass unchanged.

    Parameters
    ----------
    flags : mapping, optional
        Setting name -> flag, where :func:`flag_of`'s default spelling does not fit.
    """
    try:
        yield
    except WakesleepError as exc:
        setting = getattr(exc, "setting", None)
        if setting is None:
            raise
        flag = flag_of(setting, flags)
        if hasattr(exc, "value"):
            flag = f"{flag} {exc.value}"
        raise WakesleepError(f"{flag}: {exc.detail}") from None  # type: ignore[attr-defined]

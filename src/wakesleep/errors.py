"""Errors that mean *the user* made a mistake (bad config, bad data, missing file, a call out of order)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["NotReadyError", "WakesleepError", "import_registered", "setting_error"]

_NO_VALUE = object()


class WakesleepError(ValueError):
    """A user-facing error: the CLI prints ``error: <message>`` on one line and exits with status 2.

    A ``ValueError``, so that code catching bad values catches it; every mistake a user can make through the
    Python API (``build_model``, ``build_algorithm``, ``Trainer``, ``wakesleep.eval``) raises it with the same
    one-line message the command line prints.
    """


class NotReadyError(WakesleepError, RuntimeError):
    """A method called before the step it needs (e.g. ``wake_gradient`` before the first ``sleep()``)."""


def setting_error(setting: str, detail: str, value: Any = _NO_VALUE) -> WakesleepError:
    """A :class:`WakesleepError` about one setting: ``"<setting>: <detail>"`` (``"<setting> <value>: ..."``).

    The setting's name, the problem and the value are kept on the exception (``exc.setting``, ``exc.detail``,
    ``exc.value``), so that a caller can name the setting its own way (the command line names its flag).

    Parameters
    ----------
    setting : str
        The setting's name, kept as ``exc.setting``.
    detail : str
        What is wrong, kept as ``exc.detail``.
    value : optional
        The value the detail is about, kept as ``exc.value`` and shown after the name.

    Returns
    -------
    WakesleepError
    """
    shown = setting if value is _NO_VALUE else f"{setting} {value}"
    exc = WakesleepError(f"{shown}: {detail}")
    exc.setting, exc.detail = setting, detail  # type: ignore[attr-defined]
    if value is not _NO_VALUE:
        exc.value = value  # type: ignore[attr-defined]
    return exc


def import_registered(module_name: str, where: str, name: str) -> ModuleType:
    """Import ``module_name``, the module a registry lists under ``name`` (imported only when asked for).

    A module that is not there is ``"<where>: '<name>' is not available in this version"``; a module that is
    there but fails to import (a missing dependency of it included) raises as it is.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise WakesleepError(f"{where}: {name!r} is not available in this version") from None
        raise

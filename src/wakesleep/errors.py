"""Errors that mean *the user* made a mistake (bad config, bad data, missing file, a call out of order)."""


class WakesleepError(ValueError):
    """A user-facing error: the CLI prints ``error: <message>`` on one line and exits with status 2.

    A ``ValueError``, so that code catching bad values catches it; every mistake a user can make through the
    Python API (``build_model``, ``build_algorithm``, ``Trainer``, ``wakesleep.eval``) raises it with the same
    one-line message the command line prints.
    """


class NotReadyError(WakesleepError, RuntimeError):
    """A method called before the step it needs (e.g. ``wake_gradient`` before the first ``sleep()``)."""

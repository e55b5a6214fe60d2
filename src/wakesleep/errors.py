"""Errors that mean *the user* made a mistake (bad config, bad data, missing file)."""


class WakesleepError(Exception):
    """A user-facing error: the CLI prints ``error: <message>`` on one line and exits with status 2."""

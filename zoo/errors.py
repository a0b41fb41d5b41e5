"""User-facing errors: one line, a non-zero exit status, never a traceback."""

from __future__ import annotations


class ZooError(Exception):
    """A mistake the user can fix (bad recipe, unknown name, missing data). Exit status 2."""

    exit_code = 2


class DataNotFoundError(ZooError):
    """Data is neither in the local mirror nor reachable on the hub."""


class TrainingFailed(ZooError):
    """A run that started but could not finish (NaN loss, crash). Exit status 1."""

    exit_code = 1

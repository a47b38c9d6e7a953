"""Errors that carry a message for the user and the command line's exit code."""
from __future__ import annotations


class LungSegError(Exception):
    """Base class: ``str(error)`` says what is wrong and what to do about it."""

    exit_code = 1


class InputError(LungSegError):
    """The input image cannot be segmented as given (unreadable, not 3-D, not CT, not HU...)."""

    exit_code = 3


class OutputError(LungSegError):
    """The output cannot be written (exists without --overwrite, unknown format, no permission)."""

    exit_code = 4


class ModelError(LungSegError):
    """The model file is missing, corrupted (checksum) or incompatible."""

    exit_code = 5


class Cancelled(LungSegError):
    """The run was cancelled by the user; nothing was written."""

    exit_code = 130


class PlausibilityError(LungSegError):
    """``--strict`` (``strict=True``): the result carries plausibility warnings, so it was not written.

    ``findings`` holds the :class:`LungSegLib.core.checks.Finding` objects that failed.
    """

    exit_code = 7

    def __init__(self, message: str, findings=()):
        super().__init__(message)
        self.findings = list(findings)

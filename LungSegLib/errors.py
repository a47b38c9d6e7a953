"""Errors that carry a message for the user and the command line's exit code."""
from __future__ import annotations


class LungSegError(Exception):
    """Base class: ``str(error)`` says what is wrong and what to do about it."""

    exit_code = 1


class UsageError(LungSegError, ValueError):
    """The request contradicts itself (e.g. ``--format nii.gz`` with an output named ``.nrrd``); also a
    ``ValueError`` for Python callers."""

    exit_code = 2


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


# --- the exit-code table -----------------------------------------------------------------------------
#: What each error's exit code means: the CLI's and the worker's ``--help`` tables are built from it.
MEANINGS = {
    InputError: "bad input (unreadable, not a 3-D CT, not in HU, ...)",
    OutputError: "output problem (exists without --overwrite, unknown format, cannot write)",
    ModelError: "model problem (missing, checksum mismatch, incompatible)",
    PlausibilityError: ("--strict: the result has plausibility warnings (no lung, a lung missing, volumes "
                        "beyond anatomy, ...); nothing was written"),
    Cancelled: "cancelled; nothing was written",
}
#: The errors with their own exit code, in code order.
LIBRARY_ERRORS = tuple(MEANINGS)
#: ``argparse``'s exit code for a command line it cannot parse (also that of a contradictory request).
USAGE_EXIT_CODE = 2


def exit_meanings(errors=None, notes=None) -> dict:
    """``{exit code: meaning}`` of a program: success, internal error and usage, then one row per error
    class it raises (``errors``: default the library's own, :data:`LIBRARY_ERRORS`, described by
    :data:`MEANINGS`; a class of a program's own, like the worker's ``DependencyError``, carries a
    ``meaning`` attribute).

    ``notes`` (``{code: text}``) adds what a code means for that program in particular ("the output
    file is complete", how a cancel arrives): appended after the common meaning with ": " for 0 and
    in parentheses otherwise.
    """
    table = {0: "success", LungSegError.exit_code: "unexpected internal error",
             USAGE_EXIT_CODE: "wrong command-line usage"}
    for cls in LIBRARY_ERRORS if errors is None else errors:
        table[cls.exit_code] = MEANINGS[cls] if cls in MEANINGS else cls.meaning
    for code, note in (notes or {}).items():
        if code == 0:
            table[code] = f"{table[code]}: {note}"
        elif code == Cancelled.exit_code:
            table[code] = table[code].replace("cancelled", f"cancelled ({note})", 1)
        else:
            table[code] = f"{table[code]} ({note})"
    return dict(sorted(table.items()))


def exit_codes_help(meanings: dict, width: int = 100) -> str:
    """The ``exit codes:`` block of a program's ``--help`` (argparse epilog) from :func:`exit_meanings`."""
    import textwrap

    lines = ["exit codes:"]
    for code, text in meanings.items():
        lines += textwrap.wrap(text, width, initial_indent=f"  {code:<5}", subsequent_indent=" " * 7)
    return "\n".join(lines) + "\n"

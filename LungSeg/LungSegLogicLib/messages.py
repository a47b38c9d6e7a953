"""Errors worded for the Slicer panel: what went wrong and what to click, never a command-line flag.

The library and the worker word their advice for the command line (``--no-hu-check``, ``--model``);
the worker also reports a stable ``code`` and the ``reason`` without advice. This module turns an
error into the text the panel shows, keyed on that code, with a guard for any flag that slips
through (:func:`panelMessage` never returns text containing ``--``).
"""
from __future__ import annotations

import re
from typing import Dict

#: Panel advice per error code (``LungSegLib.worker.run.NotHounsfieldError.code`` ...).
PANEL_ADVICE: Dict[str, str] = {
    "not_hu": "If you are sure this is a CT in Hounsfield units, tick \"Allow non-HU input\" in the "
              "Advanced section and click Apply again.",
    "license": "Click Apply and accept the model licence, or pass acceptModelLicense=True from a script.",
}

#: Command-line advice sentences the library may still include, and what the panel says instead.
_CLI_SENTENCES = (
    (re.compile(r"\s*If you are sure it is CT in HU, rerun with --no-hu-check \(check_hu=False\)\."),
     " " + PANEL_ADVICE["not_hu"]),
    (re.compile(r"Reinstall LungSeg or pass --model PATH\."),
     "Reinstall the LungSeg extension (Extensions Manager)."),
    (re.compile(r"[^.]*unless you pass --overwrite[^.]*\."),
     "Choose another output."),
)
_FLAG = re.compile(r"\s*\(?--[a-z][a-z0-9-]*(?: [A-Z]+)?\)?")


def panelMessage(error: BaseException) -> str:
    """The message to show in the panel for ``error`` (a LungSeg or worker error)."""
    code = getattr(error, "code", None)
    reason = getattr(error, "reason", None)
    if code in PANEL_ADVICE and reason:
        return f"{reason} {PANEL_ADVICE[code]}"
    text = str(error)
    for pattern, replacement in _CLI_SENTENCES:
        text = pattern.sub(replacement, text)
    return _FLAG.sub("", text).strip()

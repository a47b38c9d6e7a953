"""Start TensorFlow without its start-up chatter, keeping its real errors.

Importing TensorFlow 2.16+ prints, on every run and twice (two of its libraries each log it), absl's
"All log messages before absl::InitializeLog() is called are written to STDERR", an INFO line about
oneDNN custom operations and one about CPU instructions (``cpu_feature_guard``). They are logged before
``TF_CPP_MIN_LOG_LEVEL`` is read, so the variable alone does not hide them. :func:`import_tensorflow`
captures the process's standard error (file descriptor 2, where the C++ code writes) while TensorFlow is
imported and passes on every line except INFO/WARNING lines and that absl notice; errors (``E``/``F``
lines) and anything else still reach the user. After the import ``TF_CPP_MIN_LOG_LEVEL=2`` (set here
unless the user set it) keeps later INFO/WARNING lines away, and Python-side TensorFlow/absl logging
shows errors only.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from types import ModuleType

#: C++ log lines (glog/absl format: level letter, date, time, thread, file:line]) of level INFO or WARNING.
_INFO_OR_WARNING = re.compile(r"^[IW]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] ")
_NOTICES = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
            # the second line of cpu_feature_guard's INFO message
            "To enable the following instructions:")


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's informational start-up lines (never an error)."""
    return bool(_INFO_OR_WARNING.match(line)) or line.startswith(_NOTICES)


def import_tensorflow() -> ModuleType:
    """``import tensorflow`` with the start-up lines filtered out (see the module docstring)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    captured = b""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (e.g. a GUI): nothing to filter
        saved = None
    if saved is None:
        import tensorflow as tf
    else:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                import tensorflow as tf
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                captured = capture.read()
        kept = [line for line in captured.decode("utf-8", "replace").splitlines()
                if line.strip() and not is_startup_noise(line)]
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")
            sys.stderr.flush()
    for name in ("tensorflow", "absl", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return tf

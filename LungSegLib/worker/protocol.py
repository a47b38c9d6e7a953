"""The segmentation worker: one CT file in, one labelmap file out, JSON progress on stdout.

3D Slicer runs this in a separate process (``PythonSlicer -m LungSegLib.worker ...``) so that the
application stays responsive and a Cancel can simply end the process. Anything else that wants to
drive LungSeg from another program can use the same protocol::

    python -m LungSegLib.worker --input ct.nrrd --output lungs.nrrd [--model M] [--batch-size N]
                                [--threads N] [--device auto|cpu|gpu] [--no-postprocess]
                                [--no-hu-check] [--overwrite] [--watch-stdin] [--cleanup-dir DIR]

Every line on stdout is one JSON object with an ``"event"`` key (nothing else is ever written to
stdout; library and TensorFlow messages go to stderr):

* ``{"event": "started", "pid": ..., "version": ...}`` as soon as the arguments are accepted;
* ``{"event": "status", "message": "..."}`` before each stage (loading the model, post-processing);
* ``{"event": "model", "name": ..., "device": "cpu"|"gpu"}`` once the model is loaded;
* ``{"event": "progress", "done": n, "total": N}`` after every batch of slices (``done`` grows to ``total``);
* ``{"event": "done", "output": path, "volumes_ml": {...}, "timings_s": {...}, "warnings": [...]}``
  after the output file is complete; each warning is ``{"code": ..., "message": ..., "lung": ...}``
  (a named finding, :class:`LungSegLib.core.checks.Finding`; ``lung`` is "right"/"left" or null);
* ``{"event": "error", "type": "InputError", "message": "...", "exit_code": 3}`` before a failure exit.

The output is written atomically only after the whole volume is done, so an error, a cancel
(SIGTERM / SIGINT, or stdin closing with ``--watch-stdin``: see :mod:`.guard`) or a kill leaves no
output file; a cancel stops the worker at once, whatever stage it is in, with exit code 130. The helpers :func:`write_volume` and
:func:`read_labelmap` are the file side of the protocol for callers that hold arrays (Slicer's logic).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import __version__
from .. import defaults
from ..errors import Cancelled, InputError, LungSegError, ModelError, OutputError, exit_codes_help, exit_meanings
from ..core.atomic import atomic_path
from ..core.checks import Finding  # noqa: F401  (the done event's warnings, as dicts)
from ..core.review import ReviewItem  # noqa: F401  (the done event's review list, as dicts)
from ..core.geometry import Geometry

DEVICES = defaults.DEVICES


class DependencyError(LungSegError):
    """A package the worker needs (TensorFlow, Keras) is not installed or fails to import."""

    exit_code = 6
    meaning = "a required Python package (TensorFlow) is missing or cannot be imported"


EXIT_CODES = exit_codes_help(exit_meanings(
    (InputError, OutputError, ModelError, DependencyError, Cancelled),
    notes={0: "the output file is complete", LungSegError.exit_code: 'the "error" event and stderr say what',
           Cancelled.exit_code: "SIGTERM, SIGINT, or stdin closed with --watch-stdin"}))


#: Error types the worker reports by name, so a caller can raise the same class again.
ERROR_TYPES = {cls.__name__: cls for cls in (LungSegError, InputError, OutputError, ModelError, Cancelled,
                                              DependencyError)}


class WorkerError(LungSegError):
    """The worker failed; ``details`` holds what it wrote to stderr (a traceback, TensorFlow's log)."""

    def __init__(self, message: str, exit_code: int = 1, details: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.details = details


def error_from_event(event: Dict[str, Any], details: str = "") -> LungSegError:
    """The exception a worker ``error`` event stands for: the library's own class where the worker
    named one (InputError, ModelError, ...), else :class:`WorkerError`; ``details`` is attached."""
    cls = ERROR_TYPES.get(str(event.get("type")))
    message = str(event.get("message") or "the segmentation worker failed")
    if cls is None:
        exc: LungSegError = WorkerError(f"{event.get('type', 'Error')}: {message}",
                                        int(event.get("exit_code", 1)), details)
    else:
        exc = cls(message)
        exc.details = details  # type: ignore[attr-defined]
    # an error kind and the message without command-line advice, where the worker gave them
    exc.code = event.get("code")  # type: ignore[attr-defined]
    exc.reason = event.get("reason")  # type: ignore[attr-defined]
    return exc


def parse_event(line: str) -> Optional[Dict[str, Any]]:
    """One stdout line as an event dict, or None when the line is not a worker event."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def worker_command(python: str, input_path: os.PathLike, output_path: os.PathLike, *,
                   model: Optional[os.PathLike] = None, batch_size: int = defaults.WORKER_BATCH_SIZE,
                   threads: Optional[int] = None,
                   device: str = "auto", postprocess: bool = True, check_hu: bool = True,
                   watch_stdin: bool = False, cleanup_dir: Optional[os.PathLike] = None,
                   review: bool = False, flip: bool = False) -> List[str]:
    """The argv that runs the worker with the Python interpreter ``python``.

    ``watch_stdin``: the worker cancels itself when its stdin closes (the caller must pass a pipe and
    keep it open while it wants the result). ``cleanup_dir``: a folder the worker removes when it is
    cancelled or its caller goes away (the caller's temporary folder). ``review``: the ``done`` event
    also carries the confidence, density measures and review list; ``flip``: test-time flip."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    argv = [python, "-m", "LungSegLib.worker", "--input", str(input_path), "--output", str(output_path),
            "--batch-size", str(int(batch_size)), "--device", device]
    if model:
        argv += ["--model", str(model)]
    if threads:
        argv += ["--threads", str(int(threads))]
    if not postprocess:
        argv.append("--no-postprocess")
    if not check_hu:
        argv.append("--no-hu-check")
    if watch_stdin:
        argv.append("--watch-stdin")
    if cleanup_dir is not None:
        argv += ["--cleanup-dir", str(cleanup_dir)]
    if review:
        argv.append("--review")
    if flip:
        argv.append("--flip")
    return argv


# --- the file side of the protocol --------------------------------------------------------------------
def write_volume(volume: np.ndarray, ijk_to_ras: np.ndarray, path: os.PathLike) -> Path:
    """Write a ``[k, j, i]`` scalar volume with its 4x4 IJK-to-RAS matrix (Slicer's convention) as an
    uncompressed NRRD (LPS header, as every NRRD reader expects), atomically."""
    import SimpleITK as sitk

    path = Path(path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume))
    Geometry.from_ijk_to_ras(ijk_to_ras).apply_to_sitk(image)
    with atomic_path(path, ".nrrd") as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=False)
    return path


def read_labelmap(path: os.PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """A labelmap file as (uint8 ``[k, j, i]`` array, 4x4 IJK-to-RAS matrix)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).astype(np.uint8, copy=False), Geometry.from_sitk(image).ijk_to_ras()

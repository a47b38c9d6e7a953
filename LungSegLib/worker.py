"""The segmentation worker: one CT file in, one labelmap file out, JSON progress on stdout.

3D Slicer runs this in a separate process (``PythonSlicer -m LungSegLib.worker ...``) so that the
application stays responsive and a Cancel can simply end the process. Anything else that wants to
drive LungSeg from another program can use the same protocol::

    python -m LungSegLib.worker --input ct.nrrd --output lungs.nrrd [--model M] [--batch-size N]
                                [--threads N] [--device auto|cpu|gpu] [--no-postprocess]
                                [--no-hu-check] [--overwrite]

Every line on stdout is one JSON object with an ``"event"`` key (nothing else is ever written to
stdout; library and TensorFlow messages go to stderr):

* ``{"event": "started", "pid": ..., "version": ...}`` as soon as the arguments are accepted;
* ``{"event": "status", "message": "..."}`` before each stage (loading the model, post-processing);
* ``{"event": "model", "name": ..., "placeholder": bool, "device": "cpu"|"gpu"}`` once the model is loaded;
* ``{"event": "progress", "done": n, "total": N}`` after every batch of slices (``done`` grows to ``total``);
* ``{"event": "done", "output": path, "volumes_ml": {...}, "timings_s": {...}, "warnings": [...]}``
  after the output file is complete;
* ``{"event": "error", "type": "InputError", "message": "...", "exit_code": 3}`` before a failure exit.

The output is written atomically only after the whole volume is done, so an error, a cancel
(SIGTERM / SIGINT) or a kill leaves no output file. The helpers :func:`write_volume` and
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

from . import __version__
from .errors import Cancelled, InputError, LungSegError, ModelError, OutputError
from .geometry import Geometry

EXIT_CODES = """exit codes:
  0    success: the output file is complete
  1    unexpected internal error (the "error" event and stderr say what)
  2    wrong command-line usage
  3    bad input (unreadable, not a 3-D CT, not in HU, ...)
  4    output problem (exists without --overwrite, unknown format, cannot write)
  5    model problem (missing, checksum mismatch, incompatible)
  6    a required Python package (TensorFlow) is missing or cannot be imported
  130  cancelled (SIGTERM or SIGINT); nothing was written
"""

DEVICES = ("auto", "cpu", "gpu")


class DependencyError(LungSegError):
    """A package the worker needs (TensorFlow, Keras) is not installed or fails to import."""

    exit_code = 6


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
    return exc


def parse_event(line: str) -> Optional[Dict[str, Any]]:
    """One stdout line as an event dict, or None when the line is not a worker event."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def worker_command(python: str, input_path: os.PathLike, output_path: os.PathLike, *,
                   model: Optional[os.PathLike] = None, batch_size: int = 4, threads: Optional[int] = None,
                   device: str = "auto", postprocess: bool = True, check_hu: bool = True) -> List[str]:
    """The argv that runs the worker with the Python interpreter ``python``."""
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
    return argv


# --- the file side of the protocol --------------------------------------------------------------------
def write_volume(volume: np.ndarray, ijk_to_ras: np.ndarray, path: os.PathLike) -> Path:
    """Write a ``[k, j, i]`` scalar volume with its 4x4 IJK-to-RAS matrix (Slicer's convention) as an
    uncompressed NRRD (LPS header, as every NRRD reader expects), atomically."""
    import SimpleITK as sitk

    path = Path(path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume))
    Geometry.from_ijk_to_ras(ijk_to_ras).apply_to_sitk(image)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.nrrd")
    try:
        sitk.WriteImage(image, str(tmp), useCompression=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_labelmap(path: os.PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """A labelmap file as (uint8 ``[k, j, i]`` array, 4x4 IJK-to-RAS matrix)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).astype(np.uint8, copy=False), Geometry.from_sitk(image).ijk_to_ras()


# --- the worker process ---------------------------------------------------------------------------------
class _Events:
    """Writes events to the real stdout; fd 1 itself is pointed at stderr so that stray prints from
    TensorFlow or Keras (Python or C++) can never corrupt the JSON stream."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._stream: IO[str] = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def emit(self, event: str, **fields: Any) -> None:
        self._stream.write(json.dumps(dict(event=event, **fields)) + "\n")
        self._stream.flush()


def _select_device(device: str) -> None:
    """Hide GPUs for ``cpu`` (must run before TensorFlow is imported)."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"


def _import_tensorflow():
    try:
        import tensorflow as tf
    except Exception as exc:  # ImportError, or a broken install failing in its own way
        raise DependencyError(
            f"TensorFlow cannot be imported ({type(exc).__name__}: {exc}). Install it in this Python "
            "(in 3D Slicer the LungSeg module offers to do it on the first Apply; elsewhere: "
            "pip install 'tensorflow-cpu>=2.16,<3').") from exc
    return tf


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m LungSegLib.worker",
        description="Segment the lungs of one CT file and report JSON progress lines on stdout "
                    "(the process 3D Slicer's LungSeg module runs).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="CT image file or DICOM series folder")
    p.add_argument("--output", required=True, help="labelmap to write (.nrrd, .seg.nrrd, .nii.gz, .nii, .mha)")
    p.add_argument("--model", help="a .keras model with its .json card (default: the bundled model)")
    p.add_argument("--batch-size", type=int, default=4, help="slices per network call (default 4)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="cpu hides GPUs; gpu warns and runs on the CPU when TensorFlow sees none")
    p.add_argument("--no-postprocess", action="store_true", help="keep the raw network output")
    p.add_argument("--no-hu-check", action="store_true", help="do not refuse non-HU intensities")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    return p


def run(args: argparse.Namespace, events: _Events, cancel: threading.Event) -> int:
    from .writers import check_output_path

    check_output_path(args.output, args.overwrite)  # fail fast, before TensorFlow loads
    if not Path(args.input).exists():
        raise InputError(f"Input not found: {args.input}")
    _select_device(args.device)
    events.emit("status", message="Loading TensorFlow and the model")
    tf = _import_tensorflow()
    warnings: List[str] = []
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if args.device == "gpu" and not has_gpu:
        warnings.append("No GPU is visible to TensorFlow; the segmentation ran on the CPU.")
    from .api import LungSegmenter

    segmenter = LungSegmenter(args.model, batch_size=args.batch_size, threads=args.threads,
                              postprocess=not args.no_postprocess, check_hu=not args.no_hu_check)
    card = segmenter.model.card
    events.emit("model", name=str(card.get("name", segmenter.model.path.name)),
                placeholder=segmenter.model.is_placeholder, device="gpu" if has_gpu else "cpu")
    if segmenter.model.is_placeholder:
        warnings.append("The model is an untrained placeholder: the result is not a real segmentation.")

    def progress(done: int, total: int) -> None:
        events.emit("progress", done=int(done), total=int(total))
        if done >= total:
            events.emit("status", message="Post-processing and writing the result")

    events.emit("status", message="Segmenting")
    result = segmenter.segment_file(args.input, args.output, overwrite=args.overwrite, progress=progress,
                                    cancel=cancel)
    events.emit("done", output=str(args.output), volumes_ml=result.volumes_ml(),
                timings_s={k: round(v, 4) for k, v in result.timings_s.items()},
                warnings=warnings + list(result.warnings))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        build_parser().error("--batch-size must be at least 1")
    events = _Events()
    cancel = threading.Event()

    def on_signal(signum, frame) -> None:  # the main thread sees it between batches
        cancel.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    events.emit("started", pid=os.getpid(), version=__version__)
    try:
        return run(args, events, cancel)
    except LungSegError as exc:
        events.emit("error", type=type(exc).__name__, message=str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    except Exception as exc:  # report anything, then let the traceback reach stderr for the details
        import traceback

        traceback.print_exc()
        events.emit("error", type=type(exc).__name__, message=str(exc) or repr(exc), exit_code=1)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The worker process itself: ``python -m LungSegLib.worker`` (see :mod:`.protocol` for the events)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO, Any, List, Optional, Sequence

from .. import __version__
from ..errors import InputError, LungSegError
from .protocol import DEVICES, EXIT_CODES, DependencyError

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
    from ..core.writers import check_output_path

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
    from ..api import LungSegmenter

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

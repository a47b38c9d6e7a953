"""The worker process itself: ``python -m LungSegLib.worker`` (see :mod:`.protocol` for the events)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any, Callable, List, Optional, Sequence

from .. import __version__
from ..errors import Cancelled, InputError, LungSegError, OutputError
from .guard import CANCELLED_EXIT, CancelGuard
from ..defaults import WORKER_BATCH_SIZE
from .protocol import DEVICES, EXIT_CODES, DependencyError

class _Events:
    """Writes events to the real stdout; fd 1 itself is pointed at stderr so that stray prints from
    TensorFlow or Keras (Python or C++) can never corrupt the JSON stream. Thread-safe (the cancel
    threads report too); after :meth:`close` nothing more is written."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._stream: IO[str] = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._lock = threading.Lock()
        self._closed = False
        #: called when the reader is gone (broken pipe): the caller died, so the run is cancelled
        self.on_reader_gone: Optional[Callable[[], None]] = None

    def emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._stream.write(json.dumps(dict(event=event, **fields)) + "\n")
                self._stream.flush()
            except (BrokenPipeError, OSError):
                self._closed = True
                gone = self.on_reader_gone
            else:
                return
        if gone is not None:
            gone()

    def final(self, event: str, **fields: Any) -> None:
        """The last event: written, then the stream is closed to every other thread."""
        self.emit(event, **fields)
        with self._lock:
            self._closed = True


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
            "pip install 'tensorflow-cpu>=2.20,<3' 'keras>=3.10,<4').") from exc
    return tf


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m LungSegLib.worker",
        description="Segment the lungs of one CT file and report JSON progress lines on stdout "
                    "(the process 3D Slicer's LungSeg module runs).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="CT image file or DICOM series folder")
    p.add_argument("--output", required=True, help="labelmap to write (.nrrd, .seg.nrrd, .nii.gz, .nii, .mha)")
    p.add_argument("--model", help="exported weights (.npz) or a .keras model, with its .json card "
                                   "(default: the bundled model)")
    p.add_argument("--batch-size", type=int, default=WORKER_BATCH_SIZE,
                   help=f"slices per network call (default {WORKER_BATCH_SIZE})")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="cpu hides GPUs; gpu warns and runs on the CPU when TensorFlow sees none")
    p.add_argument("--no-postprocess", action="store_true", help="keep the raw network output")
    p.add_argument("--no-hu-check", action="store_true", help="do not refuse non-HU intensities")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--review", action="store_true",
                   help="add the network confidence, density measures and the review list to the done event")
    p.add_argument("--flip", action="store_true", help="test-time flip (second, mirrored network pass)")
    p.add_argument("--watch-stdin", action="store_true",
                   help="cancel as soon as stdin closes (the caller holds it open while it wants the result; "
                        "this also stops the worker when the caller dies)")
    p.add_argument("--cleanup-dir", metavar="DIR",
                   help="a folder of the caller's to remove if the run is cancelled or the caller ends")
    return p


class NotHounsfieldError(InputError):
    """The input does not look like CT in Hounsfield units. ``reason`` says why, without the advice
    (which depends on where the user is: a command line, a script or 3D Slicer's panel)."""

    code = "not_hu"

    def __init__(self, reason: str):
        super().__init__(f"{reason} If you are sure it is CT in HU, rerun with --no-hu-check (check_hu=False).")
        self.reason = reason


def _check_hounsfield(volume) -> None:
    from ..core.intensity import hounsfield_problem

    problem = hounsfield_problem(volume)
    if problem is not None:
        raise NotHounsfieldError(problem)


def run(args: argparse.Namespace, events: _Events, guard: CancelGuard) -> int:
    import time

    import SimpleITK as sitk

    from ..core.geometry import Geometry
    from ..core.imageio import read_ct
    from ..core.writers import write_labelmap

    output = _checked_output(args)
    # Read and check the input before TensorFlow loads: a refusal comes in a second, not after the import.
    t0 = time.perf_counter()
    image = read_ct(args.input)
    t_read = time.perf_counter() - t0
    if not args.no_hu_check:
        _check_hounsfield(sitk.GetArrayViewFromImage(image))
    guard.check()
    segmenter, warnings = _load_segmenter(args, events, guard)

    def progress(done: int, total: int) -> None:
        events.emit("progress", done=int(done), total=int(total))
        if done >= total:
            events.emit("status", message="Post-processing")

    events.emit("status", message="Segmenting")
    geometry = Geometry.from_sitk(image)
    result = segmenter.segment_array(sitk.GetArrayViewFromImage(image), geometry, progress=progress,
                                     cancel=guard.cancel)
    guard.check()
    events.emit("status", message="Writing the result")
    t1 = time.perf_counter()
    staging = guard.make_staging_dir(output)
    try:
        staged = write_labelmap(result.labels, geometry, staging / output.name)
        result.timings_s["write"] = time.perf_counter() - t1
        result.timings_s["read"] = t_read
        guard.commit(staged, output, args.overwrite, then=lambda: events.final(
            "done", output=str(args.output), volumes_ml=result.volumes_ml(),
            timings_s={k: round(v, 4) for k, v in result.timings_s.items()},
            warnings=[w.to_dict() for w in warnings + list(result.warnings)], **_review_fields(result)))
    finally:
        guard.discard(staging)
    return 0


def _checked_output(args: argparse.Namespace) -> Path:
    """The output path, after refusing (before TensorFlow loads) a missing input, an output that exists
    without --overwrite, would replace the input or lies in a folder that does not exist."""
    from ..core.writers import check_output_path

    output = Path(args.output)
    check_output_path(output, args.overwrite)
    if not Path(args.input).exists():
        raise InputError(f"Input not found: {args.input}")
    if output.resolve() == Path(args.input).resolve():
        raise OutputError("The output would replace the input CT; choose another output file.")
    if not output.parent.is_dir():  # never created here: a missing folder means the caller gave up
        raise OutputError(f"The output folder {output.parent} does not exist; create it first.")
    return output


def _load_segmenter(args: argparse.Namespace, events: _Events, guard: CancelGuard):
    """Select the device, import TensorFlow and load the model (emitting ``status`` then ``model``);
    returns the segmenter and the warnings so far (``no_gpu`` when a GPU was asked for and none is seen)."""
    _select_device(args.device)
    events.emit("status", message="Loading TensorFlow and the model")
    tf = _import_tensorflow()
    guard.check()
    from ..core.checks import Finding

    warnings: List[Finding] = []
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if args.device == "gpu" and not has_gpu:
        warnings.append(Finding("no_gpu", "No GPU is visible to TensorFlow; the segmentation ran on the CPU."))
    from ..api import LungSegmenter

    segmenter = LungSegmenter(args.model, batch_size=args.batch_size, threads=args.threads,
                              postprocess=not args.no_postprocess, check_hu=not args.no_hu_check,
                              review=args.review, flip=args.flip)
    card = segmenter.model.card
    events.emit("model", name=str(card.get("name", segmenter.model.path.name)), device="gpu" if has_gpu else "cpu")
    return segmenter, warnings


def _review_fields(result) -> dict:
    """The review aids for the ``done`` event (JSON-ready), when they were computed: ``review`` (list of
    :meth:`ReviewItem.to_dict`), ``measures`` (:meth:`LungMeasures.to_dict`), ``confidence``."""
    out = {}
    if result.measures is not None:
        out["measures"] = result.measures.to_dict()
    if result.confidence is not None:
        out["confidence"] = result.confidence.to_dict()
        out["review"] = [item.to_dict() for item in result.review]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        build_parser().error("--batch-size must be at least 1")
    events = _Events()
    guard = CancelGuard(lambda message: events.final("error", type="Cancelled", message=message,
                                                     exit_code=CANCELLED_EXIT),
                        cleanup_dir=args.cleanup_dir)
    events.on_reader_gone = lambda: guard.abort("The caller stopped reading; cancelled.")
    guard.handle_signals()  # before any other thread starts: they inherit the blocked signals
    if args.watch_stdin:
        guard.watch_stdin()
    events.emit("started", pid=os.getpid(), version=__version__)
    try:
        return run(args, events, guard)
    except Cancelled:
        guard.abort()
        return CANCELLED_EXIT  # not reached: abort ends the process
    except LungSegError as exc:
        # code/reason: a stable error kind and the message without CLI advice, for callers that word
        # the advice their own way (3D Slicer's panel)
        extra = {k: getattr(exc, k) for k in ("code", "reason") if getattr(exc, k, None)}
        name = "InputError" if isinstance(exc, NotHounsfieldError) else type(exc).__name__
        events.final("error", type=name, message=str(exc), exit_code=exc.exit_code, **extra)
        return exc.exit_code
    except Exception as exc:  # report anything, then let the traceback reach stderr for the details
        import traceback

        traceback.print_exc()
        events.final("error", type=type(exc).__name__, message=str(exc) or repr(exc), exit_code=1)
        return 1

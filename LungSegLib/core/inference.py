"""Slice-by-slice inference over a whole volume, in bounded memory, with progress and cancel."""
from __future__ import annotations

import os
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from threadpoolctl import threadpool_limits

from ..defaults import BATCH_SIZE, DEFAULT_PRECISION, GRID_PIXEL_MM, MAX_SLICE_STEP_MM, PRECISIONS, SLICE_STEP_MM
from ..errors import Cancelled, InputError, UsageError
from ..labels import MAX_LABEL, volume_names
from .counts import label_counts
from .confidence import ConfidenceOptions, SliceConfidence, SliceScorer
from .geometry import Geometry
from .checks import Finding, check_spacing, input_findings, result_findings
from .intensity import check_hounsfield, clear_non_finite, count_non_finite, hounsfield_problem, hu_to_unit
from .model import LoadedModel
from .postprocess import PostprocessOptions, postprocess, split_by_side
from .preprocess import BODY_HU, PreparedVolume, prepare_volume

ProgressCallback = Callable[[int, int], None]
CancelFlag = Union[Callable[[], bool], "threading.Event", None]  # noqa: F821



@dataclass(frozen=True)
class ThreadSettings:
    """TensorFlow's CPU thread pools as they are in effect in this process.

    ``applied`` is False when TensorFlow had started before LungSeg could set them (e.g. in a notebook
    that ran TensorFlow first): its own pools were kept and ``note`` says so.
    """

    intra_op: int
    inter_op: int
    applied: bool
    note: str = ""


_thread_settings: Optional[ThreadSettings] = None


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def configure_threads(threads: Optional[int] = None) -> int:
    """Set TensorFlow's thread pools (once per process, before the first model runs) and return the
    number of threads per operation actually in effect (see :func:`thread_settings`).

    ``threads`` defaults to all cores this process may use. The pools cannot change once TensorFlow
    runs: when TensorFlow had already started, or an earlier call set other pools, the pools in effect
    are returned, and a logged warning (logger ``LungSegLib.core.inference``) says so when ``threads``
    asked for another number.
    """
    global _thread_settings
    wanted = int(threads or available_cores())
    if _thread_settings is None:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(wanted)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, wanted))
            _thread_settings = ThreadSettings(wanted, min(2, wanted), True)
        except RuntimeError:  # TensorFlow already started: its pools stay (0 = its default, all cores)
            _thread_settings = ThreadSettings(
                tf.config.threading.get_intra_op_parallelism_threads() or available_cores(),
                tf.config.threading.get_inter_op_parallelism_threads() or available_cores(), False,
                "TensorFlow had already started in this process, so its own thread pools were kept")
    settings = _thread_settings
    if threads and settings.intra_op != wanted:
        reason = settings.note or "an earlier call in this process set them"
        logging.getLogger(__name__).warning(
            "%d CPU threads were asked for, but TensorFlow runs with %d (%s; they cannot change while the "
            "process runs).", wanted, settings.intra_op, reason)
    return settings.intra_op


def thread_settings() -> Optional[ThreadSettings]:
    """The thread pools :func:`configure_threads` found or set, or None before its first call."""
    return _thread_settings


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86 AVX512_BF16 or AMX-BF16, read from Linux's
    /proc/cpuinfo; False where that cannot be told)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split()))
    except OSError:
        pass
    return False


def _is_cancelled(cancel: CancelFlag) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


@dataclass
class SegmentationResult:
    """A labelmap on the input grid (0 background, 1 right lung, 2 left lung) and how it was made."""

    labels: np.ndarray
    geometry: Geometry
    timings_s: Dict[str, float] = field(default_factory=dict)
    #: named warnings (:class:`.checks.Finding`; ``str(f)`` is the sentence, ``f.code`` the stable name)
    warnings: List[Finding] = field(default_factory=list)
    #: per-slice/per-lung network confidence (only when asked for; see :mod:`.confidence`)
    confidence: Optional[SliceConfidence] = None
    #: "review these slices" (:class:`LungSegLib.core.review.ReviewItem`), most urgent first
    review: list = field(default_factory=list)
    #: density measures (:class:`LungSegLib.core.quantify.LungMeasures`), when asked for
    measures: Optional[object] = None
    #: the few CT slices the one-page report draws (:class:`LungSegLib.core.report.ReportImages`)
    report_images: Optional[object] = field(default=None, repr=False)
    #: the plausibility flags the review shows (:func:`LungSegLib.core.review.review_flags`), when asked for
    flags: Optional[list] = None
    #: input slices (index along the axial axis) that were smoothed for noise, with their noise (HU SD on
    #: the model grid), when they are single slices rather than the whole scan (see :func:`noise_findings`)
    noisy_slices: Dict[int, float] = field(default_factory=dict)
    #: the network's arithmetic that ran ("float32" or "bfloat16"; ``compute_dtype="auto"`` resolved)
    precision: str = "float32"
    #: slices the network ran on (the others interpolated between them; see ``slice_step_mm``)
    network_slices: int = 0

    def volumes_ml(self) -> Dict[str, float]:
        """Lung volumes in mL."""
        voxel = self.geometry.voxel_volume_ml()
        counts = label_counts(self.labels, MAX_LABEL + 1)  # not bincount: 8 bytes per voxel
        return {name: float(counts[value] * voxel) for value, name in volume_names().items()}


class _Predictor:
    """The model as one compiled function for any batch size (traced once, no retracing between batches).

    The batch axis is left dynamic: a full batch runs as fast as with a fixed shape (measured: 0.69 s per
    8 slices either way), and the short last batch of a volume runs on its own slices only (padding it to
    a full batch cost a full batch's memory: 4.4 GB for a 48-slice CT at batch size 256).

    The graph is the lean version of the Keras model (BatchNorm folded into the convolutions, fused
    convolution + bias + ReLU; see :mod:`.lean_graph`); it returns the output channels first
    (``[B, C, size, size]``), the layout the way back to the input grid needs.
    """

    def __init__(self, model: LoadedModel, batch_size: int, compute_dtype: str = "float32"):
        import tensorflow as tf

        from .lean_graph import lean_function

        size, channels = model.spec.size, model.spec.channels
        forward = lean_function(model.keras_model, compute_dtype)
        self.batch_size = batch_size

        @tf.function(input_signature=[tf.TensorSpec((None, size, size, channels), tf.float32)],
                     jit_compile=False, reduce_retracing=True)
        def predict(x):
            return tf.transpose(forward(x), (0, 3, 1, 2))

        self._predict = predict

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``[n, size, size, channels]`` model input (``n <= batch_size``; :meth:`PreparedVolume.model_input`)
        -> ``[n, C, size, size]`` float32."""
        return self._predict(batch).numpy()


_predictors: Dict[tuple, _Predictor] = {}


def _predictor(model: LoadedModel, batch_size: int, compute_dtype: str = "float32") -> _Predictor:
    key = (id(model.keras_model), batch_size, compute_dtype)
    if key not in _predictors:
        _predictors.clear()  # one model at a time: do not keep old graphs alive
        _predictors[key] = _Predictor(model, batch_size, compute_dtype)
    return _predictors[key]


def _body_level(spec) -> float:
    """The −500 HU body threshold in the model's [0, 1] input scale: a model-grid slice with nothing
    above it shows no body and is background without asking the network."""
    return hu_to_unit(BODY_HU, spec.hu_window)


#: Where every lung probability on the model grid is below this, every input pixel interpolated
#: from there (a weighted mean) is below it too, so background (at least 1 - 2 x 0.3) wins: the way
#: back to the input grid can skip those rows and columns.
_NEGLIGIBLE = 0.3


def _lung_box(lungs: np.ndarray) -> Optional[Tuple[Tuple[int, int], Tuple[int, int]]]:
    """Model-grid (rows, cols) ranges holding every lung probability >= :data:`_NEGLIGIBLE` in a
    ``[B, C, S, S]`` batch, or None when there is none."""
    hot = (lungs >= _NEGLIGIBLE).any(axis=(0, 1))
    rows, cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    if rows.size == 0:
        return None
    return (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)


def _labels_from_lungs(lungs: np.ndarray) -> np.ndarray:
    """``[B, 2, h, w]`` right/left lung probabilities -> uint8 labels by the most likely class.

    Background is ``1 - right - left``; ties go to the lower label, as ``argmax`` over
    (background, right, left) would.
    """
    right, left = lungs[:, 0], lungs[:, 1]
    background = 1.0 - (right + left)
    out = (left > right).view(np.uint8) + np.uint8(1)
    out[(background >= right) & (background >= left)] = 0
    return out


def network_slices(n_slices: int, slice_mm: float, step_mm: float) -> np.ndarray:
    """The canonical slices the network runs on: every ``m``-th of ``n_slices`` slices ``slice_mm`` apart, the
    largest ``m`` that keeps them at most ``step_mm`` apart (every slice when ``step_mm`` is 0 or less than
    twice the slice spacing), always with the first and the last. The slices between are interpolated."""
    m = max(1, int(np.floor(step_mm / slice_mm + 1e-6))) if step_mm > 0 and slice_mm > 0 else 1
    picked = np.arange(0, n_slices, m, dtype=np.int64)
    if picked.size and picked[-1] != n_slices - 1:
        picked = np.append(picked, n_slices - 1)
    return picked


def _shows_body(slice_hu: np.ndarray) -> bool:
    """Whether an input slice (HU) holds anything denser than :data:`BODY_HU` (non-finite voxels are
    outside the field of view, not body)."""
    slice_hu = np.asarray(slice_hu)
    dense = slice_hu > BODY_HU
    if slice_hu.dtype.kind == "f":
        dense &= np.isfinite(slice_hu)
    return bool(dense.any())


def _between(first: int, first_map: Optional[np.ndarray], indices: np.ndarray,
             maps: np.ndarray) -> Tuple[int, np.ndarray]:
    """Model-grid maps for every slice from ``first`` (the slice after the previous computed one) to
    ``indices[-1]``: the computed ``maps`` of ``indices`` and, between two computed slices, their linear
    interpolation (``first_map``: the previous computed slice's map, None when there is none). Returns the
    first slice and the ``[n, C, S, S]`` block."""
    block = np.empty((int(indices[-1]) + 1 - first,) + maps.shape[1:], dtype=np.float32)
    prev_k, prev = (first - 1, first_map) if first_map is not None else (None, None)
    for k, current in zip(indices, maps):
        k = int(k)
        if prev is not None:
            gap = k - prev_k
            for j in range(1, gap):
                w = np.float32(j / gap)
                block[prev_k + j - first] = (1 - w) * prev + w * current
        block[k - first] = current
        prev_k, prev = k, current
    return first, block


def _run_batches(prepared: PreparedVolume, canonical_labels: np.ndarray, predictor: _Predictor,
                 binary: bool, body_level: float, batch_size: int, progress: Optional[ProgressCallback],
                 cancel: CancelFlag, timings: Dict[str, float], scorer: Optional[SliceScorer] = None,
                 step_mm: float = 0.0, n_lungs: int = 2) -> int:
    """Label ``prepared`` batch by batch into ``canonical_labels`` (its canonical stack); a
    ``scorer`` sees each batch's probabilities (and may average in a mirrored pass). The network runs on
    :func:`network_slices` for ``step_mm`` (every slice with the scorer's flip); the lung probabilities of the
    slices between are interpolated on the model grid. Returns the number of slices the network ran on."""
    resampler = prepared.resampler
    total = prepared.canonical.shape[0]
    flip = scorer is not None and scorer.options.flip
    computed = network_slices(total, prepared.orientation.slice_spacing_mm, 0.0 if flip else step_mm)
    every = computed.size == total
    centre = resampler.spec.channels // 2  # the slice itself among the input channels
    reuse: Dict[int, np.ndarray] = {}
    t_model = t_map = 0.0
    if scorer is not None:
        scorer.writer = lambda indices, lung: _write_slices(canonical_labels, resampler, binary, indices, lung)
    next_slice, last_map = 0, None
    for start in range(0, computed.size, batch_size):
        if _is_cancelled(cancel):
            raise Cancelled("Segmentation cancelled; nothing was written.")
        indices = computed[start:start + batch_size]
        t1 = time.perf_counter()
        x = prepared.model_input(indices, reuse)
        body = x[..., centre].reshape(len(x), -1).max(axis=1) >= body_level
        t2 = time.perf_counter()
        if body.any():
            probs = predictor(x)
            t3 = time.perf_counter()
            lung = probs if binary else probs[:, 1:]  # background = 1 - the rest
            lung[~body] = 0
            if scorer is not None and every:
                lung = scorer.observe(int(indices[0]), x, lung, body, predictor, binary)
        else:
            t3 = t2
            lung = np.zeros((len(indices), n_lungs) + x.shape[1:3], np.float32)
        if scorer is not None and not every:
            scorer.score_network_slices(indices, lung)
        first, block = _between(next_slice, last_map, indices, lung)
        next_slice, last_map = int(indices[-1]) + 1, lung[-1].copy()
        ran = set(indices.tolist())
        for k in range(first, next_slice):
            if k not in ran and not _shows_body(prepared.canonical[k]):
                block[k - first] = 0  # a blank slice between the network's: background, as if run
        for k0 in range(0, len(block), batch_size):  # the input grid's maps, a batch at a time
            part = block[k0:k0 + batch_size]
            _write_slices(canonical_labels, resampler, binary, np.arange(first + k0, first + k0 + len(part)), part)
        t_map += (t2 - t1) + (time.perf_counter() - t3)
        t_model += t3 - t2
        if progress is not None:
            progress(next_slice, total)
    if scorer is not None:
        t5 = time.perf_counter()
        scorer.finish(predictor, binary)  # the selective flip's last queued slices
        t_model += time.perf_counter() - t5
    timings["resample"] = t_map
    timings["inference"] = t_model
    return int(computed.size)


@dataclass
class InputCheck:
    """What :func:`check_input` found about an input that may be segmented: named warnings
    (:class:`.checks.Finding`) and the number of NaN/infinite voxels."""

    warnings: List[Finding] = field(default_factory=list)
    non_finite_voxels: int = 0


def check_input(volume: np.ndarray, geometry: Geometry, *, check_hu: bool = True,
                grid_pixel_mm: float = GRID_PIXEL_MM) -> InputCheck:
    """Refuse an input that cannot be segmented (:class:`InputError`), before any model is loaded.

    Needs only NumPy: ``lungseg segment`` runs it before TensorFlow starts. ``grid_pixel_mm`` is the
    model's grid pixel (mm, from its card), which sets the accepted voxel spacing.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"Expected a 3-D volume ([k, j, i] array), got an array of shape {volume.shape}.")
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise InputError(f"Expected a numeric CT volume, got dtype {volume.dtype}.")
    non_finite = count_non_finite(volume)
    if volume.size and non_finite == volume.size:
        raise InputError("Every voxel of the image is NaN or infinite: there is no image to segment. "
                         "Check the conversion that produced it.")
    check_spacing(geometry, grid_pixel_mm=grid_pixel_mm)  # refuses a spacing no chest CT has; the margins are warnings below
    non_hu_reason = None
    if check_hu:
        check_hounsfield(volume)
    else:
        non_hu_reason = hounsfield_problem(volume)
    warnings = input_findings(geometry, non_finite_voxels=non_finite, total_voxels=volume.size,
                              non_hu_reason=non_hu_reason, grid_pixel_mm=grid_pixel_mm)
    return InputCheck(list(warnings), int(non_finite))


def _write_slices(canonical_labels: np.ndarray, resampler, binary: bool, indices: np.ndarray,
                  lung: np.ndarray) -> None:
    """Label canonical slices ``indices`` from their ``[n, C, S, S]`` model-grid lung probabilities,
    replacing what was there (the selective flip relabels slices with its averaged ones)."""
    canonical_labels[indices] = 0
    within = _lung_box(lung)
    if within is None:
        return
    back, (rows, cols) = resampler.to_input(lung, channel_axis=1, within=within)
    out = (back[:, 0] > 0.5).view(np.uint8) if binary else _labels_from_lungs(back)
    for n, k in enumerate(indices):
        canonical_labels[k, rows, cols] = out[n]


def checked_step(step_mm: float) -> float:
    """``slice_step_mm`` as a float, refusing a negative or non-finite one."""
    step = float(step_mm)
    if not np.isfinite(step) or step < 0 or step > MAX_SLICE_STEP_MM:
        raise UsageError(f"The slice step must be 0 (every slice) to {MAX_SLICE_STEP_MM:g} mm, not {step_mm}: "
                         "beyond that the interpolation between the network's slices would cross anatomy.")
    return step


def _checked_arguments(volume: np.ndarray, batch_size: int, compute_dtype: str) -> str:
    """Refuse a volume that is not a 3-D numeric array or a bad batch size or precision; return the
    precision to compute in ("auto" resolved for this CPU)."""
    if volume.ndim != 3:
        raise InputError(f"Expected a 3-D volume, got an array of shape {volume.shape}.")
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise InputError(f"Expected a numeric CT volume, got dtype {volume.dtype}.")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if compute_dtype == "auto":
        compute_dtype = "bfloat16" if native_bfloat16() else "float32"
    if compute_dtype not in PRECISIONS or compute_dtype == "auto":
        raise ValueError(f"compute_dtype must be one of {', '.join(PRECISIONS)}, not {compute_dtype!r}")
    return compute_dtype


def _clean_up(canonical_labels: np.ndarray, prepared, binary: bool,
              postprocess_options: Optional[PostprocessOptions]) -> None:
    """Sides for a binary model's lung mask, then the post-processing steps, in place on the canonical
    labels."""
    if binary:
        canonical_labels[...] = split_by_side(canonical_labels > 0)
    if postprocess_options is not None:
        # in place on the canonical view (a copy would cost a byte per voxel; the steps work on the
        # lungs' box and accept any strides); the canonical CT (a view) lets the HU-based steps run
        postprocess(canonical_labels, postprocess_options, ct=prepared.canonical,
                    spacing=prepared.orientation.spacing_zyx)


def _run_network(prepared: PreparedVolume, canonical_labels: np.ndarray, model: LoadedModel, batch_size: int,
                 compute_dtype: str, progress: Optional[ProgressCallback], cancel: CancelFlag,
                 timings: Dict[str, float], confidence: Optional[ConfidenceOptions],
                 step_mm: float = 0.0) -> Tuple[Optional[SliceScorer], int]:
    """Label ``canonical_labels`` slice by slice with the network; the confidence scorer if asked for (with
    the flip every slice runs, ``step_mm`` ignored), and the number of slices the network ran on.
    Raises :class:`Cancelled` (nothing written) when ``cancel`` is set."""
    canonical = prepared.canonical
    batch_size = min(batch_size, max(1, canonical.shape[0]))  # a full batch never exceeds the volume
    predictor = _predictor(model, batch_size, compute_dtype)
    binary = model.n_classes == 1
    scorer = None if confidence is None else SliceScorer(
        canonical.shape[0], 1 if binary else model.n_classes - 1, model.spec.pixel_mm, confidence)
    # NumPy's BLAS on one thread: its idle threads would spin on the cores TensorFlow is using
    with threadpool_limits(1, user_api="blas"):
        ran = _run_batches(prepared, canonical_labels, predictor, binary, _body_level(model.spec), batch_size,
                           progress, cancel, timings, scorer, step_mm=step_mm,
                           n_lungs=1 if binary else model.n_classes - 1)
    if _is_cancelled(cancel):
        raise Cancelled("Segmentation cancelled; nothing was written.")
    return scorer, ran


#: When more than this fraction of the slices with tissue was smoothed, the noise belongs to the scan (dose,
#: reconstruction kernel, thin slices), not to single corrupted slices: one warning, no per-slice review items.
SCAN_NOISE_FRACTION = 0.25


def noise_findings(prepared: PreparedVolume, n_slices: int, flipped: bool) -> Tuple[List[Finding], Dict[int, float]]:
    """The ``noisy_slices`` warning and the smoothed input slices (index -> noise, HU) of a run.

    ``n_slices`` and ``flipped`` give the input order of the canonical slices. Returns no slices when the
    whole scan is noisy (more than :data:`SCAN_NOISE_FRACTION` of the slices with tissue smoothed)."""
    spec = prepared.resampler.spec
    if spec.noise_trigger_hu <= 0:
        return [], {}
    measured = {k: v for k, v in prepared.noise_hu.items() if v > 0}
    smoothed = {(n_slices - 1 - k if flipped else k): v for k, v in measured.items() if v > spec.noise_trigger_hu}
    if not smoothed:
        return [], {}
    worst = max(smoothed.values())
    grid = f"on the model's {spec.pixel_mm:g} mm grid, where it takes up to {spec.noise_trigger_hu:g} HU unsmoothed"
    if len(smoothed) > SCAN_NOISE_FRACTION * len(measured):
        message = (f"The scan is noisier than the model was trained on ({len(smoothed)} of {len(measured)} slices, "
                   f"up to {worst:.0f} HU SD {grid}; low dose, a sharp kernel or thin slices): they were smoothed "
                   "before segmentation. Check the lung boundary, or segment a softer-kernel or thicker-slice "
                   "reconstruction if there is one.")
        return [Finding("noisy_slices", message)], {}
    shown = ", ".join(str(k) for k in sorted(smoothed)[:8]) + (", ..." if len(smoothed) > 8 else "")
    message = (f"{len(smoothed)} slice(s) ({shown}) are far noisier than the rest of the scan (up to {worst:.0f} HU SD "
               f"{grid}): they were smoothed before segmentation. Check them (a corrupted slice?).")
    return [Finding("noisy_slices", message)], smoothed


def segment_array(volume: np.ndarray, geometry: Geometry, model: LoadedModel, *,
                  batch_size: int = BATCH_SIZE, postprocess_options: Optional[PostprocessOptions] = PostprocessOptions(),
                  check_hu: bool = True, progress: Optional[ProgressCallback] = None,
                  cancel: CancelFlag = None, compute_dtype: str = DEFAULT_PRECISION,
                  confidence: Optional[ConfidenceOptions] = None,
                  checked: Optional["InputCheck"] = None,
                  slice_step_mm: float = SLICE_STEP_MM) -> SegmentationResult:
    """Segment the lungs in a CT volume.

    Args:
        volume: ``[k, j, i]`` array in HU (any integer or float dtype); never modified.
        geometry: its voxel grid (spacing in mm, LPS origin and direction).
        model: from :func:`LungSegLib.core.model.load_model`.
        batch_size: slices per model call; memory grows with it (about 3 MB per slice).
        postprocess_options: clean-up steps, or None for the raw network output.
        check_hu: refuse inputs that do not look like Hounsfield units.
        progress: called with (slices done, total) after every batch; reaches total once.
        cancel: a ``threading.Event`` or a callable; checked between batches, raises :class:`Cancelled`.
        compute_dtype: ``"auto"`` (default): bfloat16 for the network's hidden layers where the CPU
            multiplies it natively (AVX512_BF16 or AMX: 30-40 % less network time), float32 elsewhere;
            ``"float32"``: the same labels on every machine; ``"bfloat16"``: always (slower than float32
            on CPUs without it). ``result.precision`` says which ran.
        checked: the result of :func:`check_input` on this volume when the caller ran it already
            (before loading the model, as ``segment_file`` does); None runs it here.
        confidence: collect per-slice network confidence (and with ``flip=True`` average in the
            left-right mirrored pass) into ``result.confidence``; None (default) computes nothing.
            The flip needs the network on every slice (``slice_step_mm`` is then ignored); without it the
            slices between the network's get their neighbours' statistics, linearly interpolated.
        slice_step_mm: the network runs on slices at most this far apart (mm; :func:`network_slices`) and
            the lung probabilities of the thinner slices between are interpolated linearly on the model
            grid; 0 runs it on every slice. Slices thicker than half of it are all run.

    Slices in which nothing is denser than −500 HU (no body) are background without running the model.
    NaN/infinite voxels (float inputs) are taken as outside the field of view: air for the network,
    label 0 in the result, and a ``non_finite_voxels`` warning; an image with nothing else is refused.
    A voxel spacing outside :data:`.checks.ACCEPTED_PIXEL_RATIO` x the model's grid pixel (0.3-6 mm for
    the bundled model) or :data:`.checks.ACCEPTED_SLICE_MM` is refused (:class:`InputError`); ``result.warnings`` holds the named findings of
    :func:`.checks.plausibility_findings`.

    Returns:
        A :class:`SegmentationResult` whose ``labels`` (uint8) lie on exactly the input grid.
    """
    volume = np.asarray(volume)
    compute_dtype = _checked_arguments(volume, batch_size, compute_dtype)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    if checked is None:
        checked = check_input(volume, geometry, check_hu=check_hu, grid_pixel_mm=model.spec.pixel_mm)
    warnings: List[Finding] = list(checked.warnings)
    unlearned = (model.card.get("training") or {}).get("not_learned") or []
    if unlearned:
        warnings.append(Finding("model_not_learned", f"The model {model.path.name} did not learn the "
                                + " and the ".join(f"{n} lung" if n != "lung" else n for n in unlearned)
                                + " in training (its card: training.not_learned): do not rely on these labels; "
                                "retrain it with another --seed or more --epochs."))
    non_finite = checked.non_finite_voxels
    prepared = prepare_volume(volume, geometry, model.spec)
    orientation = prepared.orientation
    labels = np.zeros(volume.shape, dtype=np.uint8)
    canonical_labels = orientation.to_canonical(labels)  # a writable view of `labels`
    timings["preprocess"] = time.perf_counter() - t0

    scorer, ran = _run_network(prepared, canonical_labels, model, batch_size, compute_dtype, progress, cancel,
                               timings, confidence, checked_step(slice_step_mm))
    t4 = time.perf_counter()
    _clean_up(canonical_labels, prepared, model.n_classes == 1, postprocess_options)
    timings["postprocess"] = time.perf_counter() - t4
    if non_finite:
        clear_non_finite(volume, labels)  # outside the field of view: never lung, whatever the clean-up
    noise_warnings, noisy = noise_findings(prepared, canonical_labels.shape[0], orientation.flips[0])
    warnings += noise_warnings + result_findings(labels, geometry)
    result = SegmentationResult(labels, geometry, timings, warnings, noisy_slices=noisy, precision=compute_dtype,
                                network_slices=ran)
    if scorer is not None:
        result.confidence = scorer.result(orientation.axes[0], orientation.flips[0])
    return result

"""Slice-by-slice inference over a whole volume, in bounded memory, with progress and cancel."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from threadpoolctl import threadpool_limits

from ..defaults import BATCH_SIZE
from ..errors import Cancelled, InputError
from ..labels import MAX_LABEL, volume_names
from .geometry import Geometry
from .intensity import check_hounsfield, hu_to_unit
from .model import LoadedModel
from .postprocess import PostprocessOptions, postprocess, split_by_side
from .preprocess import BODY_HU, prepare_volume

ProgressCallback = Callable[[int, int], None]
CancelFlag = Union[Callable[[], bool], "threading.Event", None]  # noqa: F821

_threads_configured = False


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def configure_threads(threads: Optional[int] = None) -> int:
    """Set TensorFlow's thread pools (once per process, before the first model runs).

    ``threads`` defaults to all cores this process may use. Returns the number set.
    """
    global _threads_configured
    n = int(threads or available_cores())
    if not _threads_configured:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, n))
        except RuntimeError:
            pass  # TensorFlow already started (e.g. in a notebook): keep its pools
        _threads_configured = True
    return n


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
    warnings: List[str] = field(default_factory=list)

    def volumes_ml(self) -> Dict[str, float]:
        """Lung volumes in mL."""
        voxel = self.geometry.voxel_volume_ml()
        counts = np.bincount(self.labels.ravel(), minlength=MAX_LABEL + 1)
        return {name: float(counts[value] * voxel) for value, name in volume_names().items()}


class _Predictor:
    """The model as one compiled function of fixed batch shape (no retracing between batches).

    The graph is the lean version of the Keras model (BatchNorm folded into the convolutions, fused
    convolution + bias + ReLU; see :mod:`.lean_graph`); it returns the output channels first
    (``[B, C, size, size]``), the layout the way back to the input grid needs.
    """

    def __init__(self, model: LoadedModel, batch_size: int, compute_dtype: str = "float32"):
        import tensorflow as tf

        from .lean_graph import lean_function

        size = model.spec.size
        forward = lean_function(model.keras_model, compute_dtype)
        self.batch_size = batch_size

        @tf.function(input_signature=[tf.TensorSpec((batch_size, size, size), tf.float32)],
                     jit_compile=False, reduce_retracing=True)
        def predict(x):
            return tf.transpose(forward(x[..., None]), (0, 3, 1, 2))

        self._predict = predict

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``[n, size, size]`` model-grid slices -> ``[n, C, size, size]`` float32 outputs."""
        n = batch.shape[0]
        if n < self.batch_size:
            batch = np.concatenate([batch, np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)])
        return self._predict(batch).numpy()[:n]


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


def _run_batches(canonical: np.ndarray, canonical_labels: np.ndarray, resampler, predictor: _Predictor,
                 binary: bool, body_level: float, batch_size: int, progress: Optional[ProgressCallback],
                 cancel: CancelFlag, timings: Dict[str, float]) -> None:
    """Label ``canonical`` batch by batch into ``canonical_labels`` (both canonical stacks)."""
    total = canonical.shape[0]
    t_model = t_map = 0.0
    for start in range(0, total, batch_size):
        if _is_cancelled(cancel):
            raise Cancelled("Segmentation cancelled; nothing was written.")
        stop = min(total, start + batch_size)
        t1 = time.perf_counter()
        x = resampler.to_model(canonical[start:stop])
        body = x.reshape(len(x), -1).max(axis=1) >= body_level
        t2 = time.perf_counter()
        if body.any():
            probs = predictor(x)
            t3 = time.perf_counter()
            lung = probs if binary else probs[:, 1:]  # background = 1 - the rest
            lung[~body] = 0
            within = _lung_box(lung)
            if within is not None:
                back, (rows, cols) = resampler.to_input(lung, channel_axis=1, within=within)
                out = (back[:, 0] > 0.5).view(np.uint8) if binary else _labels_from_lungs(back)
                canonical_labels[start:stop, rows, cols] = out
        else:
            t3 = t2
        t_map += (t2 - t1) + (time.perf_counter() - t3)
        t_model += t3 - t2
        if progress is not None:
            progress(stop, total)
    timings["resample"] = t_map
    timings["inference"] = t_model


def segment_array(volume: np.ndarray, geometry: Geometry, model: LoadedModel, *,
                  batch_size: int = BATCH_SIZE, postprocess_options: Optional[PostprocessOptions] = PostprocessOptions(),
                  check_hu: bool = True, progress: Optional[ProgressCallback] = None,
                  cancel: CancelFlag = None, compute_dtype: str = "float32") -> SegmentationResult:
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
        compute_dtype: ``"float32"``, or ``"bfloat16"`` for the network's hidden layers (about twice as
            fast on CPUs with AVX512_BF16 or AMX, slower elsewhere; check the Dice of your model with
            it first), or ``"auto"``: bfloat16 where the CPU has it natively.

    Slices in which nothing is denser than −500 HU (no body) are background without running the model.

    Returns:
        A :class:`SegmentationResult` whose ``labels`` (uint8) lie on exactly the input grid.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"Expected a 3-D volume, got an array of shape {volume.shape}.")
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise InputError(f"Expected a numeric CT volume, got dtype {volume.dtype}.")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if compute_dtype == "auto":
        compute_dtype = "bfloat16" if native_bfloat16() else "float32"
    if compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32', 'bfloat16' or 'auto', not {compute_dtype!r}")
    timings: Dict[str, float] = {}
    warnings: List[str] = []
    t0 = time.perf_counter()
    if check_hu:
        check_hounsfield(volume)
    prepared = prepare_volume(volume, geometry, model.spec)
    orientation, canonical, resampler = prepared.orientation, prepared.canonical, prepared.resampler
    if orientation.obliquity_deg > 1.0:
        warnings.append(f"The volume is oblique by {orientation.obliquity_deg:.1f} degrees: it is segmented "
                        "on its own slices, taken as the nearest axial orientation.")
    labels = np.zeros(volume.shape, dtype=np.uint8)
    canonical_labels = orientation.to_canonical(labels)  # a writable view of `labels`
    timings["preprocess"] = time.perf_counter() - t0

    predictor = _predictor(model, batch_size, compute_dtype)
    binary = model.n_classes == 1
    body_level = _body_level(model.spec)
    # NumPy's BLAS on one thread: its idle threads would spin on the cores TensorFlow is using
    with threadpool_limits(1, user_api="blas"):
        _run_batches(canonical, canonical_labels, resampler, predictor, binary, body_level, batch_size,
                     progress, cancel, timings)
    if _is_cancelled(cancel):
        raise Cancelled("Segmentation cancelled; nothing was written.")

    t4 = time.perf_counter()
    if binary:
        canonical_labels[...] = split_by_side(canonical_labels > 0)
    if postprocess_options is not None:
        work = np.ascontiguousarray(canonical_labels)
        postprocess(work, postprocess_options)
        canonical_labels[...] = work
    timings["postprocess"] = time.perf_counter() - t4
    if not labels.any():
        warnings.append("No lung was found in this image.")
    return SegmentationResult(labels, geometry, timings, warnings)

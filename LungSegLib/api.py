"""The Python API: one small class for the console, scripts and the Slicer worker.

>>> from LungSegLib import LungSegmenter
>>> seg = LungSegmenter()                       # bundled model, all cores
>>> labels = seg.segment(sitk.ReadImage("ct.nrrd"))   # SimpleITK image in -> labelmap image out
>>> seg.segment_file("ct.nrrd", "lungs.seg.nrrd")     # files in and out (what `lungseg segment` does)
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .defaults import BATCH_SIZE, DEFAULT_PRECISION, GRID_PIXEL_MM, MAX_BATCH_SIZE, SLICE_STEP_MM
from .errors import ModelError, OutputError, PlausibilityError, UsageError
from .core.geometry import Geometry
from .core.imageio import read_ct
from .core.inference import (CancelFlag, InputCheck, ProgressCallback, SegmentationResult, available_cores,
                             check_input, configure_threads, segment_array)
from .core.confidence import ConfidenceOptions
from .core.model import BUNDLED_MODEL, LoadedModel, load_model, models_dir, read_card, spec_from_card
from .core.postprocess import PostprocessOptions
from .core.outputs import OutputSet, labelmap_format, refuse_non_regular
from .core.writers import labelmap_image, save_labelmap


#: An extra file of :meth:`LungSegmenter.segment_file`: (path, extension, writer(result, temporary path)).
ExtraOutput = Tuple[Union[str, os.PathLike], str, Callable[[SegmentationResult, Path], None]]

#: The smallest batch size (slices per network call); the largest is :data:`defaults.MAX_BATCH_SIZE`.
MIN_BATCH_SIZE = 1


class LungSegmenter:
    """Segments right (1) and left (2) lung in chest CT.

    Args:
        model: path of a model (exported ``.npz`` weights or ``.keras``) with its card, a loaded model,
            or None for the bundled one.
        batch_size: slices per network call, 1 to :data:`LungSegLib.defaults.MAX_BATCH_SIZE` (memory
            grows with it; a volume with fewer slices runs in one call of its own size).
        threads: CPU threads for TensorFlow (default: all available cores).
        postprocess: run the clean-up (largest components, hole filling, side check); or give
            :class:`PostprocessOptions` to choose steps.
        check_hu: refuse images that do not look like Hounsfield units.
        compute_dtype: ``"auto"`` (default: bfloat16 hidden layers where the CPU has AVX512_BF16/AMX,
            float32 elsewhere), ``"float32"`` (exact everywhere) or ``"bfloat16"``; see
            :func:`inference.segment_array`.
        review: also give the clinician's review aids in each result: per-slice network confidence
            (``result.confidence``), the density measures (``result.measures``) and the ranked
            "review these slices" list (``result.review``); see :mod:`LungSegLib.core.review`.
        flip: test-time flip: average the network's output with its left-right mirrored pass
            (a second network pass) and report the two passes' agreement; implies the confidence.
        lazy: load the model (and start TensorFlow, a few seconds) at its first use instead of now, so
            that :meth:`segment_file` refuses a bad input or output first.
        slice_step_mm: the network runs on axial slices at most this far apart (mm) and the thinner ones
            between are interpolated (default :data:`LungSegLib.defaults.SLICE_STEP_MM`); 0 runs every
            slice. The flip runs every slice (its mirrored pass needs each slice's input).
    """

    def __init__(self, model: Union[None, str, os.PathLike, LoadedModel] = None, *, batch_size: int = BATCH_SIZE,
                 threads: Optional[int] = None, postprocess: Union[bool, PostprocessOptions] = True,
                 check_hu: bool = True, compute_dtype: str = DEFAULT_PRECISION, review: bool = False,
                 flip: bool = False, lazy: bool = False, slice_step_mm: float = SLICE_STEP_MM):
        self._threads = threads
        self.threads = int(threads or available_cores())
        self._model_source = model
        self._model: Optional[LoadedModel] = model if isinstance(model, LoadedModel) else None
        if not MIN_BATCH_SIZE <= int(batch_size) <= MAX_BATCH_SIZE:
            raise UsageError(f"batch_size must be {MIN_BATCH_SIZE}-{MAX_BATCH_SIZE} slices, not {batch_size} "
                             "(memory grows with it; beyond a few dozen slices nothing gets faster).")
        self.batch_size = int(batch_size)
        if not lazy:
            self.load_model()
        if postprocess is True:
            postprocess = PostprocessOptions()
        self.postprocess_options = postprocess or None
        self.check_hu = check_hu
        self.compute_dtype = compute_dtype
        self.review = bool(review)
        self.flip = bool(flip)
        from .core.inference import checked_step

        self.slice_step_mm = checked_step(slice_step_mm)

    def load_model(self) -> LoadedModel:
        """Load the model now (starting TensorFlow); a ``lazy`` segmenter does it at its first use."""
        if self._model is None:
            self.threads = configure_threads(self._threads)
            self._model = load_model(self._model_source)
        return self._model

    @property
    def model(self) -> LoadedModel:
        """The loaded model (loaded on first use by a ``lazy`` segmenter)."""
        return self.load_model()

    @property
    def model_loaded(self) -> bool:
        """Whether the model is loaded (TensorFlow started)."""
        return self._model is not None

    def grid_pixel_mm(self) -> float:
        """The model grid's pixel size (mm), from the loaded model or else its card alone (no TensorFlow),
        so an input can be checked before the model loads."""
        if self._model is not None:
            return float(self._model.spec.pixel_mm)
        try:
            path = Path(self._model_source) if self._model_source else models_dir() / BUNDLED_MODEL
            return float(spec_from_card(read_card(path)).pixel_mm)
        except (ModelError, OSError, TypeError, ValueError):
            return GRID_PIXEL_MM  # the model's own problem is reported when it loads

    @property
    def model_name(self) -> str:
        """The model's name from its card (its file name when the card has none)."""
        return str(self.model.card.get("name") or self.model.path.name)

    def segment_array(self, volume: np.ndarray, geometry: Geometry, *,
                      progress: Optional[ProgressCallback] = None,
                      cancel: CancelFlag = None, confidence: Optional[ConfidenceOptions] = None,
                      checked: Optional[InputCheck] = None) -> SegmentationResult:
        """Segment a ``[k, j, i]`` HU array on ``geometry``; see :func:`inference.segment_array`.

        ``confidence`` overrides what ``review``/``flip`` of the constructor ask for."""
        if confidence is None and (self.review or self.flip):
            confidence = ConfidenceOptions(flip=self.flip)
        result = segment_array(volume, geometry, self.model, batch_size=self.batch_size,
                               postprocess_options=self.postprocess_options, check_hu=self.check_hu,
                               compute_dtype=self.compute_dtype, slice_step_mm=self.slice_step_mm,
                               progress=progress, cancel=cancel, confidence=confidence, checked=checked)
        if self.review:
            from .core.review import add_review

            add_review(result, volume, recheck=False)  # segment_array's warnings hold the checks
        return result

    def segment(self, image: Union[sitk.Image, np.ndarray], spacing: Optional[Sequence[float]] = None,
                origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Optional[np.ndarray] = None, *,
                progress: Optional[ProgressCallback] = None, cancel: CancelFlag = None):
        """Segment a SimpleITK image (returns a uint8 SimpleITK labelmap on the same grid) or a NumPy
        ``[k, j, i]`` array with its LPS ``spacing`` (i, j, k mm), ``origin`` and ``direction`` (returns a
        uint8 array of the same shape)."""
        if isinstance(image, (str, os.PathLike)):
            raise TypeError(f"segment() takes a SimpleITK image or a NumPy [k, j, i] array, not the path "
                            f"{os.fspath(image)!r}: to segment a file use segment_file(input_path, output_path), "
                            "or read it first with SimpleITK.ReadImage(path).")
        if not isinstance(image, (sitk.Image, np.ndarray)):
            raise TypeError(f"segment() takes a SimpleITK image or a NumPy [k, j, i] array, not a "
                            f"{type(image).__name__}; for files use segment_file(input_path, output_path).")
        if isinstance(image, sitk.Image):
            from .core.imageio import as_3d, validate_ct_image

            validate_ct_image(image)
            image = as_3d(image)
            geometry = Geometry.from_sitk(image)
            result = self.segment_array(sitk.GetArrayViewFromImage(image), geometry,
                                        progress=progress, cancel=cancel)
            return labelmap_image(result.labels, geometry)
        if spacing is None:
            raise ValueError("A NumPy volume needs its voxel spacing (i, j, k in mm).")
        geometry = Geometry(spacing, origin, np.eye(3) if direction is None else direction)
        return self.segment_array(np.asarray(image), geometry, progress=progress, cancel=cancel).labels

    def segment_file(self, input_path: Union[str, os.PathLike], output_path: Union[str, os.PathLike], *,
                     fmt: Optional[str] = None, overwrite: bool = False,
                     overview_path: Union[None, str, os.PathLike] = None,
                     progress: Optional[ProgressCallback] = None,
                     cancel: CancelFlag = None,
                     on_stage: Optional[Callable[[str], None]] = None,
                     extra_outputs: Optional[Mapping[str, ExtraOutput]] = None,
                     strict: bool = False) -> SegmentationResult:
        """Read a CT file or DICOM folder, segment it, write the labelmap (and optionally a PNG).

        In this order, so that a refusal comes as early and as cheaply as possible: every output path
        is checked (:class:`.core.outputs.OutputSet`: not the input, not each other, not a device or
        folder, ``overwrite`` obeyed, the extension of its format, a writable folder); the input is read
        and checked (:func:`.core.inference.check_input`); only then does a ``lazy`` segmenter load its
        model. The files are written to temporary names and renamed into place together at the end, so
        a failure, a cancel or ``KeyboardInterrupt`` leaves no file behind.

        ``on_stage`` is called with ``"read"``, ``"model"`` (only when the model is about to load),
        ``"segment"`` and ``"write"`` as the run gets there.

        ``extra_outputs`` adds files to the same checks and the same all-or-nothing write:
        ``{role: (path, extension, writer)}``, where ``writer(result, temporary_path)`` writes the file
        (e.g. a report: ``{"report": ("r.json", "json", write_json)}``).

        ``strict=True`` (``--strict``): when the result carries any warning (``result.warnings``, named
        :class:`.core.checks.Finding` objects) nothing is written and :class:`PlausibilityError`
        (exit code 7) lists them.
        """
        stage = on_stage or (lambda name: None)
        refuse_non_regular("output", output_path)  # /dev/full has no extension, but is the graver problem
        fmt = labelmap_format(output_path, fmt)
        if fmt == "dcm":  # a SEG must reference DICOM source images: refuse other inputs before any work
            from .core.dicomseg import check_dicom_seg_input

            check_dicom_seg_input(input_path)
        extra = dict(extra_outputs or {})
        request = {"output": (output_path, fmt), "overview": (overview_path, "png")}
        request.update({role: (path, ext) for role, (path, ext, _) in extra.items()})
        outputs = OutputSet(input_path, request, overwrite=overwrite)
        with outputs:
            return self._segment_file(input_path, outputs, fmt, stage, progress, cancel,
                                      {role: writer for role, (_, _, writer) in extra.items()}, strict)

    def _segment_file(self, input_path, outputs: OutputSet, fmt: str, stage: Callable[[str], None],
                      progress: Optional[ProgressCallback], cancel: CancelFlag,
                      writers: Mapping[str, Callable], strict: bool = False) -> SegmentationResult:
        output_path = outputs.paths["output"]
        stage("read")
        t0 = time.perf_counter()
        source_files = None
        if fmt == "dcm":
            from .core.imageio import read_dicom_series

            image, source_files = read_dicom_series(input_path)
        else:
            image = read_ct(input_path)
        t_read = time.perf_counter() - t0
        geometry = Geometry.from_sitk(image)
        volume = sitk.GetArrayViewFromImage(image)
        checked = check_input(volume, geometry, check_hu=self.check_hu, grid_pixel_mm=self.grid_pixel_mm())
        if not self.model_loaded:
            stage("model")
            self.load_model()
        stage("segment")
        result = self.segment_array(volume, geometry, progress=progress, cancel=cancel, checked=checked)
        if strict and result.warnings:
            from .core.checks import findings_summary

            raise PlausibilityError(
                f"The result has {len(result.warnings)} plausibility warning(s) and --strict (strict=True) is "
                f"on, so nothing was written: {findings_summary(result.warnings)}. Check the input, or run "
                "without --strict to write the result with its warnings.", result.warnings)
        stage("write")
        t1 = time.perf_counter()
        if "overview" in outputs:  # the one output that needs the CT: first, so the CT can go
            from .core.overview import write_overview

            try:
                write_overview(volume, result.labels, geometry, outputs.temp("overview"))
            except OSError as exc:
                raise OutputError(f"Could not write the overview {outputs.paths['overview']}: "
                                  f"{exc.strerror or exc}") from exc
        del volume, image  # the CT's memory (2 bytes per voxel) is free before the labelmap is copied out
        if source_files is not None:
            from .core.dicomseg import write_dicom_seg

            write_dicom_seg(result.labels, geometry, source_files, outputs.temp("output"), overwrite=True,
                            model_name=self.model_name)
        else:
            save_labelmap(result.labels, geometry, outputs.temp("output"), fmt, target=output_path)
        for role, writer in writers.items():
            if role in outputs:
                writer(result, outputs.temp(role))
        outputs.commit()
        result.timings_s["write"] = time.perf_counter() - t1
        result.timings_s["read"] = t_read
        return result

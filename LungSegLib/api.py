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
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .errors import OutputError
from .core.geometry import Geometry
from .core.imageio import read_ct
from .core.inference import (CancelFlag, ProgressCallback, SegmentationResult, configure_threads,
                        segment_array)
from .core.model import LoadedModel, load_model
from .core.postprocess import PostprocessOptions
from .core.writers import check_output_path, labelmap_image, write_labelmap


class LungSegmenter:
    """Segments right (1) and left (2) lung in chest CT.

    Args:
        model: path of a ``.keras`` model with its card, a loaded model, or None for the bundled one.
        batch_size: slices per network call.
        threads: CPU threads for TensorFlow (default: all available cores).
        postprocess: run the clean-up (largest components, hole filling, side check); or give
            :class:`PostprocessOptions` to choose steps.
        check_hu: refuse images that do not look like Hounsfield units.
        compute_dtype: ``"float32"`` (default), ``"bfloat16"`` for the network's hidden layers (about
            twice as fast on CPUs with AVX512_BF16/AMX) or ``"auto"`` (bfloat16 where the CPU has it);
            see :func:`inference.segment_array`.
    """

    def __init__(self, model: Union[None, str, os.PathLike, LoadedModel] = None, *, batch_size: int = 8,
                 threads: Optional[int] = None, postprocess: Union[bool, PostprocessOptions] = True,
                 check_hu: bool = True, compute_dtype: str = "float32"):
        self.threads = configure_threads(threads)
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.batch_size = int(batch_size)
        if postprocess is True:
            postprocess = PostprocessOptions()
        self.postprocess_options = postprocess or None
        self.check_hu = check_hu
        self.compute_dtype = compute_dtype

    @property
    def model_name(self) -> str:
        """The model's name from its card (its file name when the card has none)."""
        return str(self.model.card.get("name") or self.model.path.name)

    def segment_array(self, volume: np.ndarray, geometry: Geometry, *,
                      progress: Optional[ProgressCallback] = None,
                      cancel: CancelFlag = None) -> SegmentationResult:
        """Segment a ``[k, j, i]`` HU array on ``geometry``; see :func:`inference.segment_array`."""
        return segment_array(volume, geometry, self.model, batch_size=self.batch_size,
                             postprocess_options=self.postprocess_options, check_hu=self.check_hu,
                             compute_dtype=self.compute_dtype,
                             progress=progress, cancel=cancel)

    def segment(self, image: Union[sitk.Image, np.ndarray], spacing: Optional[Sequence[float]] = None,
                origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Optional[np.ndarray] = None, *,
                progress: Optional[ProgressCallback] = None, cancel: CancelFlag = None):
        """Segment a SimpleITK image (returns a uint8 SimpleITK labelmap on the same grid) or a NumPy
        ``[k, j, i]`` array with its LPS ``spacing`` (i, j, k mm), ``origin`` and ``direction`` (returns a
        uint8 array of the same shape)."""
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
                     cancel: CancelFlag = None) -> SegmentationResult:
        """Read a CT file or DICOM folder, segment it, write the labelmap (and optionally a PNG).

        The output is checked before any work (exists? known format?) and written atomically only
        after the whole volume is done, so a failure or a cancel leaves no file behind.
        """
        fmt = check_output_path(output_path, overwrite, fmt)
        if fmt == "dcm":  # a SEG must reference DICOM source images: refuse other inputs before any work
            from .core.dicomseg import check_dicom_seg_input

            check_dicom_seg_input(input_path)
        if Path(output_path).resolve() == Path(input_path).resolve():
            raise OutputError("The output would replace the input CT; choose another output file.")
        if overview_path is not None and Path(overview_path).exists() and not overwrite:
            raise OutputError(f"{overview_path} already exists; LungSeg does not overwrite it unless you "
                              "pass --overwrite (overwrite=True).")
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
        result = self.segment_array(volume, geometry, progress=progress, cancel=cancel)
        t1 = time.perf_counter()
        if source_files is not None:
            from .core.dicomseg import write_dicom_seg

            write_dicom_seg(result.labels, geometry, source_files, output_path, overwrite=overwrite,
                            model_name=self.model_name)
        else:
            write_labelmap(result.labels, geometry, output_path, fmt=fmt, overwrite=overwrite)
        result.timings_s["write"] = time.perf_counter() - t1
        result.timings_s["read"] = t_read
        if overview_path is not None:
            from .core.overview import write_overview

            try:
                Path(overview_path).parent.mkdir(parents=True, exist_ok=True)
                write_overview(volume, result.labels, geometry, overview_path)
            except OSError as exc:
                raise OutputError(f"Could not write the overview {overview_path}: "
                                  f"{exc.strerror or exc}") from exc
        return result

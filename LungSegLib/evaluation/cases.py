"""Ground-truth cases and the lung labelmaps compared in an evaluation: finding them, reading them (also
Slicer ``.seg.nrrd`` files, by segment name) and putting a prediction on the ground truth's voxel grid.

A ground-truth folder holds one sub-folder per case with a CT (``ct.nrrd``, ``ct.nii.gz``, ...) and a
0/1/2 labelmap (``label.nrrd``, ``label.seg.nrrd``, ``label.nii.gz``, ...) on the same grid, and
optionally an ``info.json`` whose ``suspect_slices_label_z`` lists slices whose ground truth is
known to be broken (entries ``[label, k]``: that lung on slice ``k`` of array axis 0; or ``k``: both
lungs): those slices are left out of that lung's metrics.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..core.geometry import Geometry
from ..labels import MAX_LABEL, by_side

LABEL_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha", ".mhd", ".nhdr")
GT_CT_STEM = "ct"
GT_LABEL_STEM = "label"
#: File stems tried inside ``PRED/<case>/`` (``PRED/<case>.<suffix>`` is tried first).
PRED_STEMS = ("label", "lungs", "segmentation", "prediction")

#: Grids agree when spacing differs by < 0.1 %, origins by < 1 % of a voxel, directions by < 1e-4.
SPACING_RTOL = 1e-3
ORIGIN_TOL_VOXELS = 1e-2
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class GroundTruthCase:
    """One ground-truth case: its name, labelmap, CT (None if absent) and slices to leave out as
    ``(label, k)`` pairs (label 0 = both lungs)."""

    name: str
    label_path: Path
    ct_path: Optional[Path]
    excluded_slices: Tuple[Tuple[int, int], ...] = ()


def _find_with_stem(folder: Path, stem: str) -> Optional[Path]:
    for suffix in LABEL_SUFFIXES:
        path = folder / (stem + suffix)
        if path.is_file():
            return path
    return None


def excluded_slices_from_info(info: Dict[str, Any]) -> Tuple[Tuple[int, int], ...]:
    """``(label, k)`` pairs from ``info['suspect_slices_label_z']`` (entries ``[label, k]``, or ``k`` for
    both lungs, given as label 0); ``k`` indexes array axis 0."""
    out = set()
    for entry in info.get("suspect_slices_label_z") or ():
        if isinstance(entry, (list, tuple)):
            out.add((int(entry[0]), int(entry[1])))
        else:
            out.add((0, int(entry)))
    return tuple(sorted(out))


def find_ground_truth(gt_dir: os.PathLike, names: Optional[Sequence[str]] = None) -> List[GroundTruthCase]:
    """The cases in ``gt_dir`` (sub-folders holding a ``label.*`` file), sorted by name.

    ``names`` restricts them (each must exist). Raises :class:`InputError` when the folder is missing,
    holds no case, or a named case is absent.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise InputError(f"Ground-truth folder not found: {gt_dir}")
    cases = []
    for folder in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
        label = _find_with_stem(folder, GT_LABEL_STEM)
        if label is None:
            continue
        info_path = folder / "info.json"
        excluded: Tuple[Tuple[int, int], ...] = ()
        if info_path.is_file():
            try:
                excluded = excluded_slices_from_info(json.loads(info_path.read_text(encoding="utf-8")))
            except (ValueError, TypeError, IndexError) as exc:
                raise InputError(f"{info_path} is not valid case info: {exc}") from exc
        cases.append(GroundTruthCase(folder.name, label, _find_with_stem(folder, GT_CT_STEM), excluded))
    if not cases:
        raise InputError(f"{gt_dir} holds no ground-truth case: expected sub-folders <case>/ with "
                         f"{GT_LABEL_STEM}.nrrd (or .seg.nrrd, .nii.gz, .nii, .mha) and {GT_CT_STEM}.nrrd.")
    if names:
        by_name = {c.name: c for c in cases}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(f"No ground truth for case(s) {', '.join(missing)} in {gt_dir} "
                             f"(it has: {', '.join(by_name)}).")
        cases = [by_name[n] for n in names]
    return cases


def find_prediction(pred_dir: Path, case: str) -> Optional[Path]:
    """``PRED/<case>.seg.nrrd`` (or .nrrd, .nii.gz, ...) or ``PRED/<case>/label.*`` (or lungs.*, ...)."""
    direct = _find_with_stem(pred_dir, case)
    if direct is not None:
        return direct
    folder = pred_dir / case
    if folder.is_dir():
        for stem in PRED_STEMS:
            found = _find_with_stem(folder, stem)
            if found is not None:
                return found
    return None


#: Words that name a patient side in segment names ("Lung_R", "RT LUNG", "Left lung").
_SIDE_WORDS = {"right": {"right", "r", "rt"}, "left": {"left", "l", "lt"}}


def _side_of_segment(name: str) -> int:
    """The lung label value for a segment name like "Right lung", "Lung_R", "RT LUNG"; 0 for anything else."""
    low = name.lower()
    if "lung" not in low:
        return 0
    words = set(re.split(r"[^a-z]+", low.replace("lung", " ")))
    for side, abbreviations in _SIDE_WORDS.items():
        if words & abbreviations:
            return by_side(side).value
    return 0


def read_lung_labelmap(path: os.PathLike) -> Tuple[np.ndarray, Geometry]:
    """Read a lung labelmap as (uint8 ``[k, j, i]`` with 0/1/2, geometry).

    Slicer ``.seg.nrrd`` files are mapped by segment name ("Right lung" → 1, "Left lung" → 2, also
    "Lung R", "RT LUNG", ...), whatever their label values and layers; other files must already hold
    LungSeg's label values (:mod:`LungSegLib.labels`: 0 background, 1 right lung, 2 left lung).
    """
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"Cannot read labelmap {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise InputError(f"{path.name} is not a 3-D labelmap (size {image.GetSize()}).")
    geometry = Geometry.from_sitk(image)
    array = sitk.GetArrayFromImage(image)
    keys = set(image.GetMetaDataKeys())
    n_segments = sum(1 for k in keys if re.fullmatch(r"Segment\d+_Name", k))
    if n_segments:
        if array.ndim == 3:
            array = array[..., None]
        labels = np.zeros(array.shape[:3], dtype=np.uint8)
        for n in range(n_segments):
            side = _side_of_segment(image.GetMetaData(f"Segment{n}_Name"))
            if not side:
                continue
            value = int(image.GetMetaData(f"Segment{n}_LabelValue")) if f"Segment{n}_LabelValue" in keys else 1
            layer = int(image.GetMetaData(f"Segment{n}_Layer")) if f"Segment{n}_Layer" in keys else 0
            labels[array[..., layer] == value] = side
        names = [image.GetMetaData(f"Segment{n}_Name") for n in range(n_segments)]
        if not any(_side_of_segment(name) for name in names):
            raise InputError(f"{path.name} has no right/left lung segment (segments: {', '.join(names)}).")
        return labels, geometry
    if array.ndim != 3:
        raise InputError(f"{path.name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "expected a scalar 0/1/2 labelmap.")
    values = np.unique(array)
    if not set(values.tolist()) <= set(range(MAX_LABEL + 1)):
        raise InputError(f"{path.name} holds labels {values[:10].tolist()}; expected 0 background, "
                         "1 right lung, 2 left lung.")
    return array.astype(np.uint8), geometry


def _grid_text(shape: Sequence[int], geometry: Geometry) -> str:
    return (f"size {tuple(int(s) for s in shape[::-1])}, spacing "
            f"{tuple(round(s, 4) for s in geometry.spacing)} mm, origin "
            f"{tuple(round(o, 3) for o in geometry.origin)}")


def align_to_grid(labels: np.ndarray, geometry: Geometry, target_shape: Sequence[int],
                  target: Geometry, case: str) -> np.ndarray:
    """``labels`` on the target grid: as is when the grids agree, zero-padded when ``labels`` covers an
    exact sub-box of it (Slicer crops saved segmentations to their extent); anything else, an
    :class:`InputError` naming the case (the prediction must lie on the ground truth's voxel grid).
    """
    target_shape = tuple(int(s) for s in target_shape)
    spacing_ok = np.allclose(geometry.spacing, target.spacing, rtol=SPACING_RTOL, atol=0)
    direction_ok = np.allclose(geometry.direction, target.direction, atol=DIRECTION_ATOL)
    if spacing_ok and direction_ok:
        m = target.direction * np.asarray(target.spacing)
        offset_ijk = np.linalg.solve(m, np.subtract(geometry.origin, target.origin))
        rounded = np.round(offset_ijk).astype(int)
        if np.all(np.abs(offset_ijk - rounded) < ORIGIN_TOL_VOXELS):
            if labels.shape == target_shape and not rounded.any():
                return labels
            lo = rounded[::-1]  # k, j, i
            hi = lo + np.asarray(labels.shape)
            if np.all(lo >= 0) and np.all(hi <= target_shape):
                out = np.zeros(target_shape, dtype=np.uint8)
                out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = labels
                return out
    raise InputError(f"Case {case}: the prediction's voxel grid ({_grid_text(labels.shape, geometry)}) "
                     f"differs from the ground truth's ({_grid_text(target_shape, target)}). Predict on "
                     "the ground-truth CT's own grid.")

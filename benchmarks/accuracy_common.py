"""Shared helpers of the accuracy benchmarks (issue 11): the shared cases on the canonical stack and
the bundled network's raw lung probabilities on their own voxel grids, cached so post-processing and
decision-rule variants can be compared without running the network again.

Not part of the library: benchmarks only. The cache lives in ``$LUNGSEG_ACC_CACHE`` (default
``/tmp/lungseg_acc``) and is keyed by the model file's SHA-256, so a changed model is never mixed up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from LungSegLib.core.geometry import Geometry, canonical_orientation
from LungSegLib.core.model import LoadedModel, load_model, sha256_of
from LungSegLib.core.preprocess import resampler_for_volume

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LUNGSEG_DATA_DIR") or REPO.parent / "shared" / "data")
CACHE = Path(os.environ.get("LUNGSEG_ACC_CACHE", "/tmp/lungseg_acc"))


@dataclass
class Case:
    """One shared case on the canonical stack (slices inferior -> superior, rows -> posterior,
    columns -> patient left); ``spacing`` is (slice, row, column) in mm."""

    name: str
    ct: np.ndarray
    truth: np.ndarray
    spacing: Tuple[float, float, float]
    excluded: np.ndarray  # per canonical slice: True where the reference label is known to be broken
    geometry: Geometry

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


def case_names() -> List[str]:
    root = DATA_DIR / "cases"
    return sorted(p.name for p in root.iterdir() if (p / "ct.nrrd").is_file() and (p / "label.nrrd").is_file())


def load_case(name: str) -> Case:
    import json

    folder = DATA_DIR / "cases" / name
    image = sitk.ReadImage(str(folder / "ct.nrrd"))
    geometry = Geometry.from_sitk(image)
    orient = canonical_orientation(geometry)
    ct = np.ascontiguousarray(orient.to_canonical(sitk.GetArrayFromImage(image)))
    truth = np.ascontiguousarray(orient.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "label.nrrd")))))
    excluded = np.zeros(ct.shape[0], bool)
    info = folder / "info.json"
    if info.is_file():
        # suspect slices are given on the file's k axis; canonical axis 0 is k (possibly flipped)
        for _label, k in json.loads(info.read_text()).get("suspect_slices_label_z", []):
            kk = ct.shape[0] - 1 - k if orient.flips[0] else k
            excluded[kk] = True
    return Case(name, ct, truth.astype(np.uint8), tuple(orient.spacing_zyx), excluded, geometry)


def network_probabilities(case: Case, model: Optional[LoadedModel] = None,
                          model_path: Optional[Path] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(right, left) lung probabilities (float16, canonical, input grid) of the network, cached."""
    if model is None:
        model_path = Path(model_path) if model_path else bundled_model_path()
    key = sha256_of(model.path if model is not None else model_path)[:12]
    path = CACHE / f"{case.name}.{key}.npz"
    if path.is_file():
        data = np.load(path)
        return data["right"], data["left"]
    model = model or load_model(model_path)
    right, left = probabilities(case.ct, case.spacing, model)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, right=right, left=left)
    os.replace(tmp, path)
    return right, left


def probabilities(ct: np.ndarray, spacing, model: LoadedModel) -> Tuple[np.ndarray, np.ndarray]:
    """(right, left) lung probabilities (float16) of the network for a canonical CT (not cached)."""
    from LungSegLib.core.inference import _predictor

    from LungSegLib.core.geometry import CanonicalOrientation
    from LungSegLib.core.preprocess import PreparedVolume

    resampler = resampler_for_volume(ct, tuple(spacing[1:]), model.spec)
    prepared = PreparedVolume(CanonicalOrientation((0, 1, 2), (False,) * 3, tuple(spacing), 0.0), ct, resampler)
    predictor = _predictor(model, 8)
    right = np.zeros(ct.shape, np.float16)
    left = np.zeros(ct.shape, np.float16)
    reuse = {}
    for start in range(0, ct.shape[0], 8):
        stop = min(ct.shape[0], start + 8)
        x = prepared.model_input(np.arange(start, stop), reuse)
        lung = predictor(x)[:, 1:]
        back, (rows, cols) = resampler.to_input(lung, channel_axis=1)
        right[start:stop, rows, cols] = back[:, 0]
        left[start:stop, rows, cols] = back[:, 1]
    return right, left


def bundled_model_path() -> Path:
    """The bundled model file (its format is being changed from ``.keras`` to ``.npz``: either)."""
    from LungSegLib.core.model import BUNDLED_MODEL, models_dir

    path = models_dir() / BUNDLED_MODEL
    if not path.is_file():
        for other in sorted(models_dir().glob("lungseg_unet_3class.*")):
            if other.suffix in (".npz", ".keras"):
                return other
    return path


def labels_from_probabilities(right: np.ndarray, left: np.ndarray, lung_threshold: Optional[float] = None) -> np.ndarray:
    """Labels from the probabilities: the library's rule (background when it is the most likely class)
    or, with ``lung_threshold``, lung where right + left >= the threshold (side by the larger one)."""
    r = right.astype(np.float32)
    l = left.astype(np.float32)
    out = np.where(l > r, 2, 1).astype(np.uint8)
    if lung_threshold is None:
        bg = 1.0 - r - l
        out[(bg >= r) & (bg >= l)] = 0
    else:
        out[(r + l) < lung_threshold] = 0
    return out

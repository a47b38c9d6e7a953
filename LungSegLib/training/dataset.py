"""Training data: case discovery, patient-wise splits and per-case slice caches on the model grid.

A *case* is a folder holding one CT and its lung labelmap on the same voxel grid. Each case is
prepared once with exactly the inference preprocessing (canonical stack, body-centred model grid,
HU window, through-plane context channels — :mod:`LungSegLib.core.preprocess`) and cached as ``.npy``
files (image float16 in [0, 1], one channel per model input channel; labels uint8 0/1/2) that training reads back as memory maps, so memory stays bounded whatever the
number of cases.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..core.atomic import atomic_path
from ..core.geometry import Geometry
from ..core.postprocess import holds_two_lungs, split_by_side
from ..labels import LEFT, MAX_LABEL, RIGHT
from ..core.preprocess import ModelGridSpec, prepare_volume

#: Accepted (CT, labelmap) file names inside a case folder, in order of preference.
CASE_FILE_PAIRS = (
    ("ct.nrrd", "label.nrrd"),
    ("image.nrrd", "label.nrrd"),
    ("ct.nii.gz", "label.nii.gz"),
    ("image.nii.gz", "label.nii.gz"),
    ("ct.nii", "label.nii"),
    ("image.nii", "label.nii"),
    ("ct.mha", "label.mha"),
    ("image.mha", "label.mha"),
)
#: Bumped whenever the cached arrays would change for the same inputs.
CACHE_VERSION = 3
_CHUNK = 16  # slices resampled at a time while preparing a case


@dataclass(frozen=True)
class CaseFiles:
    """One training case on disk. ``patient_id`` comes from ``info.json`` (else the folder name)."""

    case_id: str
    image: Path
    label: Path
    info: Optional[Path]
    patient_id: str


@dataclass(frozen=True)
class Split:
    """Case ids used for training and for validation (never sharing a patient)."""

    train: Tuple[str, ...]
    val: Tuple[str, ...]


def _read_info(path: Optional[Path]) -> Dict:
    if path is None:
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON: {exc}") from exc


def find_cases(cases_dir: os.PathLike) -> List[CaseFiles]:
    """All case folders under ``cases_dir`` (sorted by name); see :data:`CASE_FILE_PAIRS`.

    Folders without a CT/labelmap pair are skipped; raises :class:`InputError` when none is found.
    """
    root = Path(cases_dir)
    if not root.is_dir():
        raise InputError(f"Cases folder not found: {root}")
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for image_name, label_name in CASE_FILE_PAIRS:
            image, label = folder / image_name, folder / label_name
            if image.is_file() and label.is_file():
                info = folder / "info.json"
                info = info if info.is_file() else None
                patient = str(_read_info(info).get("patient_id") or folder.name)
                cases.append(CaseFiles(folder.name, image, label, info, patient))
                break
    if not cases:
        pairs = ", ".join(f"{a}+{b}" for a, b in CASE_FILE_PAIRS[:4])
        raise InputError(f"No cases in {root}: each case is a subfolder with a CT and a labelmap ({pairs}, ...).")
    return cases


def make_split(cases: Sequence[CaseFiles], val: Sequence[str] = (),
               split_file: Optional[os.PathLike] = None) -> Split:
    """Train/validation case ids from a split file (JSON ``{"train": [...], "val": [...]}``) or a
    list of validation cases (the rest train); no validation when neither is given.

    Raises :class:`InputError` for unknown or repeated case ids and when one patient would be in
    both sets (its slices are correlated: validating on them measures memory, not generalisation).
    """
    ids = [c.case_id for c in cases]
    if split_file is not None and val:
        raise InputError("Give either a split file or validation cases, not both.")
    if split_file is not None:
        data = _read_info(Path(split_file))
        if not isinstance(data, dict) or not isinstance(data.get("train"), list):
            raise InputError(f"{split_file}: a split file is JSON {{\"train\": [case ids], \"val\": [case ids]}}.")
        train, val_ids = [str(c) for c in data["train"]], [str(c) for c in data.get("val", [])]
    else:
        val_ids = [str(c) for c in val]
        train = [c for c in ids if c not in val_ids]
    for name, chosen in (("train", train), ("val", val_ids)):
        unknown = sorted(set(chosen) - set(ids))
        if unknown:
            raise InputError(f"Unknown {name} case(s) {unknown}; the cases are {ids}.")
        if len(set(chosen)) != len(chosen):
            raise InputError(f"A case is listed twice in the {name} set: {chosen}.")
    if not train:
        raise InputError("No training cases left after taking out the validation cases.")
    patient = {c.case_id: c.patient_id for c in cases}
    shared = sorted({patient[c] for c in train} & {patient[c] for c in val_ids})
    if shared:
        raise InputError(f"Patient(s) {shared} would be in both training and validation; split by patient.")
    return Split(tuple(train), tuple(val_ids))


def suspect_slices(info: Dict, n_slices: int) -> np.ndarray:
    """Boolean mask over the input's slice index k of slices whose labels are known to be wrong.

    ``info["suspect_slices_label_z"]`` lists ``[label value, k]`` pairs (or bare ``k``); the whole
    slice is skipped, since a lung missing from a slice would teach the model to miss it too.
    """
    skip = np.zeros(n_slices, dtype=bool)
    for entry in info.get("suspect_slices_label_z", []) or []:
        k = int(entry[-1] if isinstance(entry, (list, tuple)) else entry)
        if 0 <= k < n_slices:
            skip[k] = True
    return skip


def three_class_labels(labels_canonical: np.ndarray, name: str) -> np.ndarray:
    """0/1/2 labels from a canonical labelmap in LungSeg's values (:mod:`LungSegLib.labels`) or binary.

    Values 1 (right lung) and 2 (left lung) keep their meaning, also when only one lung is labelled
    (an RTSTRUCT with only "Lung R" gives a right-only labelmap). A labelmap with a single other
    non-zero value is one "lung" label, split into right/left by patient side
    (:func:`LungSegLib.core.postprocess.split_by_side`); so is a 0/1 labelmap that plainly holds both
    lungs (:func:`~LungSegLib.core.postprocess.holds_two_lungs`: a binary lung mask saved as 0/1).
    """
    values = np.unique(labels_canonical)
    nonzero = [int(v) for v in values if v != 0]
    if len(nonzero) == 1 and (nonzero[0] not in (RIGHT, LEFT)
                              or (nonzero[0] == RIGHT and holds_two_lungs(labels_canonical != 0))):
        return split_by_side(labels_canonical != 0)
    if not set(nonzero) <= {RIGHT, LEFT}:
        raise InputError(f"{name}: labels must be 0 background / 1 right lung / 2 left lung, or a single "
                         f"lung value; found values {[int(v) for v in values]}.")
    return np.asarray(labels_canonical, dtype=np.uint8)


@dataclass
class CachedCase:
    """A prepared case: model-grid slices as memory maps.

    ``image`` is float16 ``(n, size, size, channels)`` in [0, 1] (the network's input), ``labels`` uint8 ``(n, size, size)`` with
    0/1/2, ``slices`` the canonical slice index of each row (suspect slices left out), ``has_lung``
    whether each slice contains lung.
    """

    case_id: str
    patient_id: str
    image: np.ndarray
    labels: np.ndarray
    slices: np.ndarray
    has_lung: np.ndarray

    def __len__(self) -> int:
        return int(self.image.shape[0])


def _cache_key(case: CaseFiles, spec: ModelGridSpec) -> str:
    parts = [str(CACHE_VERSION), json.dumps(asdict(spec), sort_keys=True)]
    for path in (case.image, case.label, case.info):
        if path is not None:
            st = path.stat()
            parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _load_cached(folder: Path, case: CaseFiles) -> CachedCase:
    meta = np.load(folder / "meta.npz")
    return CachedCase(case.case_id, case.patient_id,
                      np.load(folder / "image.npy", mmap_mode="r"),
                      np.load(folder / "labels.npy", mmap_mode="r"),
                      meta["slices"], meta["has_lung"])


def prepare_case(case: CaseFiles, cache_dir: os.PathLike, spec: ModelGridSpec = ModelGridSpec()) -> CachedCase:
    """Resample one case onto the model grid (as inference does) and cache it; reuse a valid cache."""
    import SimpleITK as sitk

    from ..core.imageio import read_ct

    folder = Path(cache_dir) / f"{case.case_id}-{_cache_key(case, spec)}"
    if (folder / "meta.npz").is_file():
        return _load_cached(folder, case)
    image = read_ct(case.image)
    try:
        label_image = sitk.ReadImage(str(case.label))
    except RuntimeError as exc:
        raise InputError(f"Cannot read the labelmap {case.label}: {exc}") from exc
    if label_image.GetSize() != image.GetSize():
        raise InputError(f"{case.case_id}: labelmap size {label_image.GetSize()} differs from the CT's "
                         f"{image.GetSize()}; they must share one voxel grid.")
    geometry = Geometry.from_sitk(image)
    if not np.allclose(Geometry.from_sitk(label_image).ijk_to_lps(), geometry.ijk_to_lps(), atol=1e-2):
        raise InputError(f"{case.case_id}: the labelmap's spacing/origin/direction differ from the CT's.")
    volume = sitk.GetArrayViewFromImage(image)
    prepared = prepare_volume(volume, geometry, spec)  # exactly as inference prepares it
    orientation = prepared.orientation
    labels = three_class_labels(orientation.to_canonical(sitk.GetArrayFromImage(label_image)), case.case_id)
    skip_k = suspect_slices(_read_info(case.info), volume.shape[0])
    skip = orientation.to_canonical(np.broadcast_to(skip_k[:, None, None], volume.shape)).any(axis=(1, 2))
    keep = np.flatnonzero(~skip)

    out_image = np.empty((keep.size, spec.size, spec.size, spec.channels), dtype=np.float16)
    out_labels = np.empty((keep.size, spec.size, spec.size), dtype=np.uint8)
    reuse: Dict[int, np.ndarray] = {}
    for start in range(0, keep.size, _CHUNK):
        idx = keep[start:start + _CHUNK]
        out_image[start:start + idx.size] = prepared.model_input(idx, reuse)  # as inference feeds the network
        out_labels[start:start + idx.size] = prepared.resampler.labels_to_model(labels[idx], MAX_LABEL + 1)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("image.npy", out_image), ("labels.npy", out_labels)):
        with atomic_path(folder / name) as tmp:
            np.save(tmp, array)
    with atomic_path(folder / "meta.npz") as tmp:  # written last: its presence marks a complete cache
        np.savez(tmp, slices=keep, has_lung=out_labels.reshape(keep.size, -1).any(axis=1))
    return _load_cached(folder, case)


def model_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Cached 0/1/2 labels as the model's targets: unchanged for 3 classes, lung = 1 for a binary model."""
    return (labels > 0).astype(np.uint8) if n_classes == 1 else np.asarray(labels, dtype=np.uint8)


class SliceSampler:
    """An endless stream of (image, labels) training slices drawn at random from cached cases.

    ``lung_fraction`` of the draws come from slices with lung, the rest from any slice (neck,
    abdomen), so the model also learns where there is no lung. ``augment(image, labels, rng)``
    (float32 ``size`` x ``size`` x channels and uint8 ``size`` x ``size``) is applied to each draw.
    """

    def __init__(self, cases: Sequence[CachedCase], n_classes: int, seed: int,
                 lung_fraction: float = 0.8, augment=None):
        if not cases:
            raise InputError("No training cases.")
        self.cases = list(cases)
        self.n_classes = n_classes
        self.rng = np.random.default_rng(seed)
        self.lung_fraction = lung_fraction
        self.augment = augment
        self._all = [(c, i) for c, case in enumerate(self.cases) for i in range(len(case))]
        self._lung = [(c, i) for c, case in enumerate(self.cases) for i in np.flatnonzero(case.has_lung)]
        if not self._lung:
            raise InputError("None of the training cases has any lung label.")

    def draw(self) -> Tuple[np.ndarray, np.ndarray]:
        pool = self._lung if self.rng.random() < self.lung_fraction else self._all
        c, i = pool[int(self.rng.integers(len(pool)))]
        case = self.cases[c]
        image = np.asarray(case.image[i], dtype=np.float32)
        labels = np.array(case.labels[i], dtype=np.uint8)
        if self.augment is not None:
            image, labels = self.augment(image, labels, self.rng)
        return image, model_labels(labels, self.n_classes)

    def __iter__(self):
        while True:
            yield self.draw()


def tf_dataset(sampler: SliceSampler, batch_size: int, size: int, channels: int = 1):
    """A ``tf.data.Dataset`` of batches ``(x float32 [B,S,S,channels], y uint8 [B,S,S])`` from ``sampler``."""
    import tensorflow as tf

    signature = (tf.TensorSpec((size, size, channels), tf.float32), tf.TensorSpec((size, size), tf.uint8))
    ds = tf.data.Dataset.from_generator(lambda: iter(sampler), output_signature=signature)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)

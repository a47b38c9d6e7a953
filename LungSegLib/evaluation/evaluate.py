"""Evaluating lung labelmaps against ground-truth cases: per-case and per-lung scores, summary, reports.

A ground-truth folder holds one sub-folder per case with a CT (``ct.nrrd``, ``ct.nii.gz``, ...) and a
0/1/2 labelmap (``label.nrrd``, ``label.seg.nrrd``, ``label.nii.gz``, ...) on the same grid, and
optionally an ``info.json`` whose ``suspect_slices_label_z`` lists slices whose ground truth is
known to be broken (entries ``[label, k]``: that lung on slice ``k`` of array axis 0; or ``k``: both
lungs): those slices are left out of that lung's metrics. Predictions are either a folder of labelmaps
matched to cases by name or made here by running a model on each case's CT.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from . import metrics
from ..errors import InputError, OutputError
from ..core.geometry import Geometry, canonical_orientation
from ..core.postprocess import LEFT, RIGHT

LABEL_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha", ".mhd", ".nhdr")
GT_CT_STEM = "ct"
GT_LABEL_STEM = "label"
#: File stems tried inside ``PRED/<case>/`` (``PRED/<case>.<suffix>`` is tried first).
PRED_STEMS = ("label", "lungs", "segmentation", "prediction")
OUTPUT_NAMES = ("evaluation.csv", "evaluation.json", "evaluation.png")
METRIC_KEYS = ("dice", "iou", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_truth_ml",
               "volume_error_ml", "volume_error_pct")

#: Grids agree when spacing differs by < 0.1 %, origins by < 1 % of a voxel, directions by < 1e-4.
SPACING_RTOL = 1e-3
ORIGIN_TOL_VOXELS = 1e-2
DIRECTION_ATOL = 1e-4


# --- finding cases and files ------------------------------------------------------------------
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


def find_cases(gt_dir: os.PathLike, names: Optional[Sequence[str]] = None) -> List[GroundTruthCase]:
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


# --- reading labelmaps ------------------------------------------------------------------------
def _side_of_segment(name: str) -> int:
    """RIGHT/LEFT for a segment name like "Right lung", "Lung_R", "RT LUNG"; 0 for anything else."""
    low = name.lower()
    if "lung" not in low:
        return 0
    words = set(re.split(r"[^a-z]+", low.replace("lung", " ")))
    if words & {"right", "r", "rt"}:
        return RIGHT
    if words & {"left", "l", "lt"}:
        return LEFT
    return 0


def read_labelmap(path: os.PathLike) -> Tuple[np.ndarray, Geometry]:
    """Read a lung labelmap as (uint8 ``[k, j, i]`` with 0/1/2, geometry).

    Slicer ``.seg.nrrd`` files are mapped by segment name ("Right lung" → 1, "Left lung" → 2, also
    "Lung R", "RT LUNG", ...), whatever their label values and layers; other files must already hold
    0 background, 1 right lung, 2 left lung.
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
    if not set(values.tolist()) <= {0, 1, 2}:
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


# --- scoring ----------------------------------------------------------------------------------
@dataclass
class LungScores:
    """One lung of one case. Distances in mm, volumes in mL; ``inf`` distance = one mask empty."""

    lung: str
    dice: float
    iou: float
    hd95_mm: float
    assd_mm: float
    volume_pred_ml: float
    volume_truth_ml: float
    volume_error_ml: float
    volume_error_pct: float


@dataclass
class CaseScores:
    """Scores of one case: per lung, the right/left swap check and the slices left out."""

    case: str
    lungs: List[LungScores]
    swapped: bool
    dice_as_is: float
    dice_exchanged: float
    excluded_slices: Tuple[Tuple[int, int], ...] = ()
    prediction: str = ""

    @property
    def mean_dice(self) -> float:
        return float(np.mean([s.dice for s in self.lungs]))


def score_case(pred: np.ndarray, truth: np.ndarray, geometry: Geometry, case: str = "",
               excluded_slices: Iterable[Tuple[int, int]] = ()) -> CaseScores:
    """Score a 0/1/2 prediction against the truth on the same ``[k, j, i]`` grid (``geometry``).

    ``excluded_slices``: ``(label, k)`` pairs whose slice ``k`` is left out of that lung's metrics
    (label 0: both lungs; the swap check leaves out every listed slice). On such a slice the ground
    truth is also replaced by the prediction before surfaces are found, so a hole in a broken contour
    does not create false surface next to it; the slice's own surface voxels are not measured from.
    """
    if pred.shape != truth.shape:
        raise InputError(f"Case {case}: prediction shape {pred.shape} differs from ground truth {truth.shape}.")
    excluded = tuple(sorted((int(lab), int(k)) for lab, k in excluded_slices if 0 <= int(k) < truth.shape[0]))

    def valid_for(labels: Sequence[int]) -> Optional[np.ndarray]:
        ks = [k for lab, k in excluded if lab in labels]
        if not ks:
            return None
        per_slice = np.ones(truth.shape[0], dtype=bool)
        per_slice[ks] = False
        return per_slice[:, None, None]

    spacing = tuple(geometry.spacing[::-1])
    lungs = []
    for label, name in metrics.LUNGS:
        p, t = pred == label, truth == label
        valid = valid_for((0, label))
        if valid is not None:
            t[~valid[:, 0, 0]] = p[~valid[:, 0, 0]]
        v_pred = metrics.volume_ml(p, spacing, valid)
        v_truth = metrics.volume_ml(t, spacing, valid)
        err_ml, err_pct = metrics.volume_error(v_pred, v_truth)
        hd, asd = metrics.hd95_and_assd(p, t, spacing, valid)
        lungs.append(LungScores(name, metrics.dice(p, t, valid), metrics.iou(p, t, valid), hd, asd,
                                v_pred, v_truth, err_ml, err_pct))
    swapped, as_is, exchanged = metrics.sides_swapped(pred, truth, valid_for((0, RIGHT, LEFT)))
    return CaseScores(case, lungs, swapped, as_is, exchanged, excluded)


def _stats(values: Sequence[float]) -> Dict[str, Optional[float]]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None, "min": None, "max": None, "max_abs": None, "n": 0,
                "n_undefined": len(values)}
    arr = np.asarray(finite, dtype=float)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "max_abs": float(np.abs(arr).max()),
            "n": int(arr.size),
            "n_undefined": len(values) - int(arr.size)}


def summarise(cases: Sequence[CaseScores]) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
    """Per lung and metric: mean, sample SD, min, max, largest magnitude over cases; non-finite values
    (an empty mask) are left out and counted in ``n_undefined``."""
    out: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
    for idx, (_, name) in enumerate(metrics.LUNGS):
        out[name] = {key: _stats([getattr(c.lungs[idx], key) for c in cases]) for key in METRIC_KEYS}
    out["mean of lungs"] = {"dice": _stats([c.mean_dice for c in cases])}
    return out


@dataclass
class EvaluationReport:
    """All case scores, their summary and what was compared with what."""

    cases: List[CaseScores]
    summary: Dict[str, Any]
    source: str
    ground_truth: str
    worst_case: str = ""
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        cases = []
        for c in self.cases:
            d = asdict(c)
            d["mean_dice"] = c.mean_dice
            cases.append(d)
        return clean({"source": self.source, "ground_truth": self.ground_truth,
                      "units": {"hd95_mm": "mm", "assd_mm": "mm", "volume_*_ml": "mL",
                                "volume_error_pct": "% of ground-truth volume"},
                      "conventions": "both masks empty: Dice 1, distances 0; one empty: Dice 0, distances "
                                     "infinite (written as null); excluded_slices are [label, k] pairs: "
                                     "slice k (array axis 0) left out of that lung's metrics (label 0: both)",
                      "summary": self.summary, "worst_case": self.worst_case, "notes": self.notes,
                      "cases": cases})


# --- running an evaluation --------------------------------------------------------------------
#: Makes the prediction for a case: (labels [k, j, i], their geometry, a description of the source).
Predictor = Callable[[GroundTruthCase], Tuple[np.ndarray, Geometry, str]]


@dataclass
class WorstCase:
    """The lowest-Dice case's arrays, kept for the report figure (``ct`` when already in memory)."""

    case: Optional[GroundTruthCase] = None
    dice: float = float("inf")
    pred: Optional[np.ndarray] = None
    truth: Optional[np.ndarray] = None
    geometry: Optional[Geometry] = None
    ct: Optional[np.ndarray] = None


def evaluate_cases(cases: Sequence[GroundTruthCase], predict: Predictor, source: str, ground_truth: str,
                   on_case: Optional[Callable[[str], None]] = None,
                   keep_ct: Optional[Callable[[GroundTruthCase], Optional[np.ndarray]]] = None
                   ) -> Tuple[EvaluationReport, WorstCase]:
    """Score every case with ``predict``; also return the worst case's arrays (for the figure)."""
    scores = []
    worst = WorstCase()
    for case in cases:
        if on_case is not None:
            on_case(case.name)
        truth, truth_geometry = read_labelmap(case.label_path)
        pred, pred_geometry, description = predict(case)
        pred = align_to_grid(pred, pred_geometry, truth.shape, truth_geometry, case.name)
        s = score_case(pred, truth, truth_geometry, case.name, case.excluded_slices)
        s.prediction = description
        scores.append(s)
        if s.mean_dice < worst.dice:
            worst = WorstCase(case, s.mean_dice, pred, truth, truth_geometry,
                           keep_ct(case) if keep_ct is not None else None)
    report = EvaluationReport(scores, summarise(scores), source, ground_truth,
                              worst.case.name if worst.case else "")
    for s in scores:
        if s.swapped:
            report.notes.append(f"{s.case}: right and left look swapped (mean Dice {s.dice_as_is:.3f} as "
                                f"given, {s.dice_exchanged:.3f} with the labels exchanged).")
        if s.excluded_slices:
            listed = ", ".join(f"{'both lungs' if lab == 0 else metrics.LUNGS[lab - 1][1]} slice {k}"
                               for lab, k in s.excluded_slices)
            report.notes.append(f"{s.case}: left out {listed} (ground truth marked suspect in info.json).")
    return report, worst


def evaluate_predictions(pred_dir: os.PathLike, gt_dir: os.PathLike, names: Optional[Sequence[str]] = None,
                         on_case: Optional[Callable[[str], None]] = None) -> Tuple[EvaluationReport, WorstCase]:
    """Evaluate a folder of predicted labelmaps against the ground-truth cases.

    Every ground-truth case (or each of ``names``) needs a prediction, else :class:`InputError` lists
    the missing ones, so a mean never silently covers fewer cases than asked for.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"Prediction folder not found: {pred_dir}")
    cases = find_cases(gt_dir, names)
    found = {c.name: find_prediction(pred_dir, c.name) for c in cases}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise InputError(f"No prediction in {pred_dir} for case(s) {', '.join(missing)}: expected "
                         f"<case>.seg.nrrd (or .nrrd, .nii.gz, ...) or <case>/label.nrrd. Pass the cases "
                         "to evaluate with --cases to leave others out.")

    def predict(case: GroundTruthCase):
        labels, geometry = read_labelmap(found[case.name])
        return labels, geometry, str(found[case.name])

    return evaluate_cases(cases, predict, str(pred_dir), str(gt_dir), on_case, keep_ct=None)


def evaluate_model(segmenter, gt_dir: os.PathLike, names: Optional[Sequence[str]] = None,
                   on_case: Optional[Callable[[str], None]] = None,
                   progress: Optional[Callable[[int, int], None]] = None,
                   save_dir: Optional[Path] = None, overwrite: bool = False
                   ) -> Tuple[EvaluationReport, WorstCase]:
    """Run a :class:`~LungSegLib.api.LungSegmenter` on each case's CT and evaluate its labelmaps.

    ``save_dir``: also write each prediction there as ``<case>.seg.nrrd``.
    """
    from ..core.imageio import read_ct
    from ..core.writers import write_labelmap

    cases = find_cases(gt_dir, names)
    no_ct = [c.name for c in cases if c.ct_path is None]
    if no_ct:
        raise InputError(f"No CT (ct.nrrd, ct.nii.gz, ...) in case folder(s) {', '.join(no_ct)} of {gt_dir}: "
                         "a model can only be evaluated on cases with their CT.")
    cts: Dict[str, np.ndarray] = {}

    def predict(case: GroundTruthCase):
        image = read_ct(case.ct_path)
        geometry = Geometry.from_sitk(image)
        volume = sitk.GetArrayFromImage(image)
        result = segmenter.segment_array(volume, geometry, progress=progress)
        if save_dir is not None:
            write_labelmap(result.labels, geometry, Path(save_dir) / f"{case.name}.seg.nrrd", overwrite=overwrite)
        cts.clear()
        cts[case.name] = volume
        return result.labels, geometry, str(segmenter.model.path)

    source = str(segmenter.model.path)
    return evaluate_cases(cases, predict, source, str(gt_dir), on_case, keep_ct=lambda c: cts.get(c.name))


# --- reports ----------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_table(report: EvaluationReport) -> str:
    """A plain-text table: one row per case and lung, then per lung mean ± SD and the worst case
    (lowest Dice, largest distance, largest volume error either way)."""
    head = f"{'case':<24} {'lung':<10} {'Dice':>6} {'IoU':>6} {'HD95 mm':>8} {'ASSD mm':>8} " \
           f"{'pred mL':>8} {'GT mL':>8} {'err %':>7}  swap"
    lines = [head, "-" * len(head)]
    for c in report.cases:
        for s in c.lungs:
            lines.append(f"{c.case[:24]:<24} {s.lung.split()[0]:<10} {_fmt(s.dice):>6} {_fmt(s.iou):>6} "
                         f"{_fmt(s.hd95_mm, 1):>8} {_fmt(s.assd_mm, 2):>8} {_fmt(s.volume_pred_ml, 0):>8} "
                         f"{_fmt(s.volume_truth_ml, 0):>8} {_fmt(s.volume_error_pct, 1):>7}  "
                         f"{'YES' if c.swapped else 'no'}")
    lines.append("-" * len(head))
    for lung in ("right lung", "left lung", "mean of lungs"):
        parts = []
        for key, label, digits in (("dice", "Dice", 3), ("hd95_mm", "HD95", 1), ("assd_mm", "ASSD", 2),
                                   ("volume_error_pct", "vol err %", 1)):
            st = report.summary[lung].get(key)
            if st is None:
                continue
            extra = f", {st['n_undefined']} undefined" if st["n_undefined"] else ""
            name, worst = {"dice": ("min", st["min"]), "volume_error_pct": ("max |err|", st["max_abs"])
                           }.get(key, ("max", st["max"]))
            parts.append(f"{label} {_fmt(st['mean'], digits)} ± {_fmt(st['sd'], digits)} "
                         f"({name} {_fmt(worst, digits)}{extra})")
        lines.append(f"{lung:<14} " + "; ".join(parts))
    lines.append(f"{len(report.cases)} case(s); worst: {report.worst_case}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


def csv_text(report: EvaluationReport) -> str:
    """One CSV row per case and lung (distances mm, volumes mL, ``inf`` = one mask empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "lung"] + list(METRIC_KEYS) + ["swapped", "excluded_slices", "prediction"])
    for c in report.cases:
        for s in c.lungs:
            writer.writerow([c.case, s.lung] + [repr(float(getattr(s, k))) for k in METRIC_KEYS]
                            + [int(c.swapped), " ".join(f"{lab}:{k}" for lab, k in c.excluded_slices),
                               c.prediction])
    return buf.getvalue()


def check_outputs(out_dir: os.PathLike, overwrite: bool = False) -> List[Path]:
    """The report paths in ``out_dir``; :class:`OutputError` if any exists and ``overwrite`` is false."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file; --out needs a folder.")
    paths = [out_dir / n for n in OUTPUT_NAMES]
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{out_dir} already holds {', '.join(existing)}; pass --overwrite to replace them "
                          "or choose another --out folder.")
    return paths


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"Could not write {path}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_reports(report: EvaluationReport, worst: WorstCase, out_dir: os.PathLike,
                  overwrite: bool = False) -> List[Path]:
    """Write ``evaluation.csv``, ``evaluation.json`` and ``evaluation.png`` into ``out_dir`` (atomically)."""
    csv_path, json_path, png_path = check_outputs(out_dir, overwrite)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _atomic_write(csv_path, csv_text(report).encode("utf-8"))
    _atomic_write(json_path, (json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n").encode("utf-8"))
    _atomic_write(png_path, figure_png(report, worst))
    return [csv_path, json_path, png_path]


def _worst_slice(pred: np.ndarray, truth: np.ndarray, excluded: np.ndarray) -> int:
    """Index of the slice (axis 0) with the most disagreeing voxels outside ``excluded``; the slice with
    the most lung when they agree everywhere."""
    wrong = ((pred != truth) & ~excluded).sum(axis=(1, 2))
    if wrong.max() == 0:
        return int(np.argmax((truth > 0).sum(axis=(1, 2))))
    return int(np.argmax(wrong))


def figure_png(report: EvaluationReport, worst: WorstCase) -> bytes:
    """PNG bytes: per-case Dice (right and left) and the worst case's worst axial slice with ground truth
    (solid) and prediction (dashed) outlines, in radiological view (patient right on the viewer's left)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise OutputError("Writing the evaluation figure needs matplotlib: pip install 'lungseg[train]'.") from exc

    fig = Figure(figsize=(12, 5.5), dpi=100)
    ax = fig.add_subplot(1, 2, 1)
    names = [c.case + (" (R/L swapped?)" if c.swapped else "") for c in report.cases]
    y = np.arange(len(names))
    for idx, (colour, marker) in enumerate((("tab:green", "o"), ("tab:blue", "s"))):
        dice_values = [c.lungs[idx].dice for c in report.cases]
        ax.scatter(dice_values, y + (idx - 0.5) * 0.2, color=colour, marker=marker,
                   label=report.cases[0].lungs[idx].lung if report.cases else "")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Dice")
    low = min([1.0] + [s.dice for c in report.cases for s in c.lungs])
    ax.set_xlim(max(-0.02, low - 0.05), 1.01)
    ax.grid(axis="x", alpha=0.4)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Dice per case")

    ax2 = fig.add_subplot(1, 2, 2)
    if worst.pred is not None and worst.geometry is not None and worst.case is not None:
        o = canonical_orientation(worst.geometry)
        pred_c, truth_c = o.to_canonical(worst.pred), o.to_canonical(worst.truth)
        excluded = np.zeros(worst.pred.shape, dtype=bool)
        excluded[[k for _, k in worst.case.excluded_slices if 0 <= k < excluded.shape[0]]] = True
        z = _worst_slice(pred_c, truth_c, o.to_canonical(excluded))
        ct = worst.ct
        if ct is None and worst.case.ct_path is not None:
            try:
                ct = sitk.GetArrayFromImage(sitk.ReadImage(str(worst.case.ct_path)))
            except RuntimeError:
                ct = None
        row_mm, col_mm = o.pixel_spacing_mm
        rows, cols = pred_c.shape[1:]
        extent = (0, cols * col_mm, rows * row_mm, 0)  # anterior at the top
        if ct is not None and ct.shape == worst.pred.shape:
            ax2.imshow(np.clip(o.to_canonical(ct)[z], -1000, 400), cmap="gray", extent=extent)
        else:
            ax2.imshow(np.zeros((rows, cols)), cmap="gray", extent=extent)
        x_mm = (np.arange(cols) + 0.5) * col_mm
        y_mm = (np.arange(rows) + 0.5) * row_mm
        for label, colour in ((RIGHT, "lime"), (LEFT, "deepskyblue")):
            for mask, style in ((truth_c[z] == label, "solid"), (pred_c[z] == label, "dashed")):
                if mask.any() and not mask.all():
                    ax2.contour(x_mm, y_mm, mask.astype(float), levels=[0.5], colors=colour,
                                linestyles=style, linewidths=1.0)
        ax2.set_title(f"worst case {worst.case.name}, axial slice {z} (canonical)\n"
                      "solid = ground truth, dashed = prediction; green right, blue left", fontsize=9)
        ax2.set_xlabel("patient right  ←  mm  →  patient left")
    ax2.set_aspect("equal")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

"""Scoring one prediction against its ground truth (per lung: overlap, surface distances, volumes, the
right/left swap check) and summarising the scores over cases."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import metrics
from ..errors import InputError
from ..core.geometry import Geometry
from ..core.jsonsafe import json_safe
from ..labels import LUNG_LABELS
from .cases import GroundTruthCase

METRIC_KEYS = ("dice", "iou", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_truth_ml",
               "volume_error_ml", "volume_error_pct")
#: The summary row over both lungs.
MEAN_OF_LUNGS = "mean of lungs"


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
    for lung in LUNG_LABELS:
        name, label = lung.name.lower(), lung.value
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
    all_lungs = (0,) + tuple(lung.value for lung in LUNG_LABELS)
    swapped, as_is, exchanged = metrics.sides_swapped(pred, truth, valid_for(all_lungs))
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
    for idx, lung in enumerate(LUNG_LABELS):
        out[lung.name.lower()] = {key: _stats([getattr(c.lungs[idx], key) for c in cases]) for key in METRIC_KEYS}
    out[MEAN_OF_LUNGS] = {"dice": _stats([c.mean_dice for c in cases])}
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
        """JSON-ready: infinite distances (one mask empty) and undefined percentages become None."""
        cases = []
        for c in self.cases:
            d = asdict(c)
            d["mean_dice"] = c.mean_dice
            cases.append(d)
        return json_safe({"source": self.source, "ground_truth": self.ground_truth,
                      "units": {"hd95_mm": "mm", "assd_mm": "mm", "volume_*_ml": "mL",
                                "volume_error_pct": "% of ground-truth volume"},
                      "conventions": "both masks empty: Dice 1, distances 0; one empty: Dice 0, distances "
                                     "infinite (written as null); excluded_slices are [label, k] pairs: "
                                     "slice k (array axis 0) left out of that lung's metrics (label 0: both)",
                      "summary": self.summary, "worst_case": self.worst_case, "notes": self.notes,
                      "cases": cases})


@dataclass
class WorstCase:
    """The lowest-Dice case's arrays, kept for the report figure (``ct`` when already in memory)."""

    case: Optional[GroundTruthCase] = None
    dice: float = float("inf")
    pred: Optional[np.ndarray] = None
    truth: Optional[np.ndarray] = None
    geometry: Optional[Geometry] = None
    ct: Optional[np.ndarray] = None

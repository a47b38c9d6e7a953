"""Running an evaluation: each ground-truth case's prediction (a folder of labelmaps, or a model run on
the case's CT) read, aligned and scored; see :mod:`.cases` (finding and reading), :mod:`.scoring`
and :mod:`.report` (the table, CSV, JSON and figure).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..core.geometry import Geometry
from ..labels import by_value
from .cases import GroundTruthCase, align_to_grid, find_ground_truth, find_prediction, read_lung_labelmap
from .scoring import EvaluationReport, WorstCase, score_case, summarise


#: Makes the prediction for a case: (labels [k, j, i], their geometry, a description of the source).
Predictor = Callable[[GroundTruthCase], Tuple[np.ndarray, Geometry, str]]


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
        truth, truth_geometry = read_lung_labelmap(case.label_path)
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
            listed = ", ".join(f"{'both lungs' if lab == 0 else by_value(lab).name.lower()} slice {k}"
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
    cases = find_ground_truth(gt_dir, names)
    found = {c.name: find_prediction(pred_dir, c.name) for c in cases}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise InputError(f"No prediction in {pred_dir} for case(s) {', '.join(missing)}: expected "
                         f"<case>.seg.nrrd (or .nrrd, .nii.gz, ...) or <case>/label.nrrd. Pass the cases "
                         "to evaluate with --cases to leave others out.")

    def predict(case: GroundTruthCase):
        labels, geometry = read_lung_labelmap(found[case.name])
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

    cases = find_ground_truth(gt_dir, names)
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

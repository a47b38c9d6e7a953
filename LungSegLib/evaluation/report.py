"""Evaluation reports: the terminal table, ``evaluation.csv``, ``evaluation.json`` and the
``evaluation.png`` figure (per-case Dice and the worst case's worst slice)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import OutputError
from ..core.atomic import atomic_write_bytes
from ..core.geometry import canonical_orientation
from ..labels import LUNG_LABELS
from .scoring import MEAN_OF_LUNGS, METRIC_KEYS, EvaluationReport, WorstCase

OUTPUT_NAMES = ("evaluation.csv", "evaluation.json", "evaluation.png")


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
    for lung in [label.name.lower() for label in LUNG_LABELS] + [MEAN_OF_LUNGS]:
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


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise OutputError(f"Could not write {path}: {exc}") from exc


def write_reports(report: EvaluationReport, worst: WorstCase, out_dir: os.PathLike,
                  overwrite: bool = False) -> List[Path]:
    """Write ``evaluation.csv``, ``evaluation.json`` and ``evaluation.png`` into ``out_dir`` (atomically)."""
    csv_path, json_path, png_path = check_outputs(out_dir, overwrite)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _write(csv_path, csv_text(report).encode("utf-8"))
    _write(json_path, (json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n").encode("utf-8"))
    _write(png_path, figure_png(report, worst))
    return [csv_path, json_path, png_path]


def _worst_slice(pred: np.ndarray, truth: np.ndarray, excluded: np.ndarray) -> int:
    """Index of the slice (axis 0) with the most disagreeing voxels outside ``excluded``; the slice with
    the most lung when they agree everywhere."""
    wrong = ((pred != truth) & ~excluded).sum(axis=(1, 2))
    if wrong.max() == 0:
        return int(np.argmax((truth > 0).sum(axis=(1, 2))))
    return int(np.argmax(wrong))


#: Matplotlib colours of each lung label's colour name: markers in the Dice plot, outlines on the CT.
_MARKER_COLOURS = {"green": ("tab:green", "lime"), "blue": ("tab:blue", "deepskyblue")}
_MARKERS = ("o", "s")


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
    _dice_panel(fig.add_subplot(1, 2, 1), report)
    ax2 = fig.add_subplot(1, 2, 2)
    if worst.pred is not None and worst.geometry is not None and worst.case is not None:
        _worst_slice_panel(ax2, worst)
    ax2.set_aspect("equal")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _dice_panel(ax, report: EvaluationReport) -> None:
    """Each case's Dice per lung, one row per case."""
    names = [c.case + (" (R/L swapped?)" if c.swapped else "") for c in report.cases]
    y = np.arange(len(names))
    for idx, lung in enumerate(LUNG_LABELS):
        dice_values = [c.lungs[idx].dice for c in report.cases]
        ax.scatter(dice_values, y + (idx - 0.5) * 0.2, color=_MARKER_COLOURS[lung.color_name][0],
                   marker=_MARKERS[idx], label=report.cases[0].lungs[idx].lung if report.cases else "")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Dice")
    low = min([1.0] + [s.dice for c in report.cases for s in c.lungs])
    ax.set_xlim(max(-0.02, low - 0.05), 1.01)
    ax.grid(axis="x", alpha=0.4)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Dice per case")


def _worst_slice_panel(ax, worst: WorstCase) -> None:
    """The worst case's worst axial slice (canonical) with ground-truth and predicted outlines."""
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
        ax.imshow(np.clip(o.to_canonical(ct)[z], -1000, 400), cmap="gray", extent=extent)
    else:
        ax.imshow(np.zeros((rows, cols)), cmap="gray", extent=extent)
    x_mm = (np.arange(cols) + 0.5) * col_mm
    y_mm = (np.arange(rows) + 0.5) * row_mm
    for lung in LUNG_LABELS:
        colour = _MARKER_COLOURS[lung.color_name][1]
        for mask, style in ((truth_c[z] == lung.value, "solid"), (pred_c[z] == lung.value, "dashed")):
            if mask.any() and not mask.all():
                ax.contour(x_mm, y_mm, mask.astype(float), levels=[0.5], colors=colour,
                           linestyles=style, linewidths=1.0)
    sides = ", ".join(f"{lung.color_name} {lung.side}" for lung in LUNG_LABELS)
    ax.set_title(f"worst case {worst.case.name}, axial slice {z} (canonical)\n"
                 f"solid = ground truth, dashed = prediction; {sides}", fontsize=9)
    ax.set_xlabel("patient right  ←  mm  →  patient left")

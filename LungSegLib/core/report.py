"""The clinician's report of one segmentation: JSON, CSV, and a one-page PNG/PDF.

* ``.json``: everything -- input, model, volumes, the density measures (:mod:`.quantify`), the
  plausibility flags (:mod:`.checks`), the network confidence (:mod:`.confidence`) and the "review
  these slices" list (:mod:`.review`).
* ``.csv``: the measures table, one row per region (right lung, left lung, both), with each lung's
  network confidence -- for spreadsheets and statistics.
* ``.png`` / ``.pdf``: one A4 page: axial montage and a coronal slice with the lungs overlaid, the
  measures table, the flags and the review list (matplotlib, Agg backend; ``pip install matplotlib``).

All are written atomically (a temporary file renamed into place). The measures are research measures:
the page and the JSON say so.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import __version__
from ..errors import OutputError
from ..labels import LUNG_LABELS
from .atomic import atomic_path, atomic_write_text
from .geometry import canonical_orientation

#: Report formats by file extension.
REPORT_FORMATS = ("json", "csv", "png", "pdf")
DISCLAIMER = ("For clinician review; not a diagnosis. Density measures are research measures: "
              "reconstruction kernel, dose, slice thickness and inspiration change them.")


def report_format(path: os.PathLike) -> str:
    """The report format of ``path`` by its extension (``OutputError`` for any other)."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in REPORT_FORMATS:
        raise OutputError(f"Cannot tell the report format from {Path(path).name!r}: end it in "
                          + ", ".join("." + f for f in REPORT_FORMATS) + ".")
    return ext


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_dict(result, *, input_path: Optional[os.PathLike] = None, output_path: Optional[os.PathLike] = None,
                model_name: Optional[str] = None) -> Dict[str, Any]:
    """The JSON report of a :class:`SegmentationResult` (after :func:`.review.add_review`)."""
    from .review import review_flags

    conf = result.confidence
    return {
        "lungseg_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": None if input_path is None else str(input_path),
        "output": None if output_path is None else str(output_path),
        "model": model_name,
        "precision": result.precision,
        "network_slices": result.network_slices,
        "disclaimer": DISCLAIMER,
        "geometry": {"shape_kji": list(result.labels.shape), "spacing_mm": list(result.geometry.spacing),
                     "origin_lps": list(result.geometry.origin),
                     "direction_lps": result.geometry.direction.round(6).tolist()},
        "volumes_ml": {k: round(v, 2) for k, v in result.volumes_ml().items()},
        "measures": None if result.measures is None else result.measures.to_dict(),
        "flags": [f.to_dict() for f in (result.flags if result.flags is not None else review_flags(result))],
        "confidence": None if conf is None else conf.to_dict(),
        "review": [item.to_dict() for item in result.review],
        "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()},
    }


def write_json(path: os.PathLike, report: Dict[str, Any]) -> Path:
    """Write the JSON report atomically."""
    return atomic_write_text(path, json.dumps(report, indent=1, allow_nan=False) + "\n")


def csv_text(result) -> str:
    """The measures table as CSV text (one row per region)."""
    if result.measures is None:
        raise ValueError("The result has no measures (segment with review=True).")
    measures = result.measures
    lung_conf = result.confidence.lung_confidence() if result.confidence is not None else {}
    keys = ["region"] + [k for k, _ in measures.columns()] + ["voxels", "network_confidence"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for region, row in zip(measures.regions, measures.rows()):
        row = dict(row, voxels=region.voxels, network_confidence=lung_conf.get(region.region, ""))
        writer.writerow(["" if _finite(row.get(k)) is None else (round(row[k], 4) if isinstance(row[k], float)
                                                                 else row[k]) for k in keys])
    return buf.getvalue()


def write_csv(path: os.PathLike, result) -> Path:
    return atomic_write_text(path, csv_text(result))


# --- the one-page figure ----------------------------------------------------------------------------
def _overlay(ct: np.ndarray, labels: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """RGB (0..1) of a CT slice in the lung window (-1000..400 HU) with the lungs tinted."""
    grey = np.clip((ct.astype(np.float32) + 1000.0) / 1400.0, 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label in LUNG_LABELS:
        m = labels == label.value
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(label.color)
    return rgb


def _montage_slices(lung_per_slice: np.ndarray, review_slices: Sequence[int], n: int = 6) -> List[int]:
    """``n`` canonical slice indices: the review list's first slices, filled up with slices evenly
    spread over the lungs' extent."""
    chosen: List[int] = []
    for s in review_slices:
        if s not in chosen and len(chosen) < n // 2:
            chosen.append(int(s))
    idx = np.flatnonzero(lung_per_slice)
    if idx.size == 0:
        idx = np.arange(lung_per_slice.size)
    for s in np.linspace(idx[0], idx[-1], n + 2)[1:-1].round().astype(int):
        if len(chosen) >= n:
            break
        if all(abs(s - c) > 1 for c in chosen):
            chosen.append(int(s))
    return sorted(chosen)


@dataclass
class ReportImages:
    """The few CT slices the one-page report shows, kept with the result so the page can be drawn
    without the whole CT (canonical orientation: rows anterior->posterior, columns patient
    right->left).

    Attributes:
        axial: ``[(slice index in the input array, CT slice HU, label slice)]``.
        coronal: (CT HU, labels), superior row first.
        aspect_axial, aspect_coronal: pixel height / width for display.
        review_rows: coronal rows of the review list's first slices.
    """

    axial: List[Tuple[int, np.ndarray, np.ndarray]]
    coronal: Tuple[np.ndarray, np.ndarray]
    aspect_axial: float
    aspect_coronal: float
    review_rows: List[int]


def report_images(volume_hu: np.ndarray, result, n_axial: int = 6) -> ReportImages:
    """Pick and copy the report's slices: the review list's first slices, filled up with slices spread
    over the lungs, and the coronal slice with the most lung."""
    o = canonical_orientation(result.geometry)
    ct_c = o.to_canonical(np.asarray(volume_hu))
    lab_c = o.to_canonical(result.labels)
    sz, sy, sx = o.spacing_zyx
    n_slices = lab_c.shape[0]
    to_canonical = (lambda k: n_slices - 1 - k) if o.flips[0] else (lambda k: k)
    per_slice = (lab_c > 0).sum(axis=(1, 2))
    review_canonical = [to_canonical(it.slice_index) for it in result.review]
    axial = [(to_canonical(s), _hu_int16(ct_c[s]), np.array(lab_c[s]))
             for s in _montage_slices(per_slice, review_canonical, n_axial)]
    y = int(np.argmax((lab_c > 0).sum(axis=(0, 2)))) if per_slice.any() else lab_c.shape[1] // 2
    coronal = (_hu_int16(ct_c[::-1, y, :]), np.array(lab_c[::-1, y, :]))
    return ReportImages(axial, coronal, sy / sx, sz / sx, [n_slices - 1 - s for s in review_canonical[:5]])


def _hu_int16(hu: np.ndarray) -> np.ndarray:
    """A slice of HU as int16 for the pictures; NaN/Inf voxels (outside the field of view) become air."""
    hu = np.asarray(hu)
    if hu.dtype.kind == "f":
        hu = np.clip(np.nan_to_num(hu, nan=-1024.0, posinf=-1024.0, neginf=-1024.0), -32768, 32767)
    return np.array(hu, dtype=np.int16)


def write_figure(path: os.PathLike, result, *, title: str = "LungSeg report",
                 model_name: Optional[str] = None, dpi: int = 110,
                 volume_hu: Optional[np.ndarray] = None) -> Path:
    """Write the one-page report (PNG or PDF by extension) atomically.

    The slices come from ``result.report_images`` (set by :func:`.review.add_review`), or from
    ``volume_hu`` when given. Axial slices are shown in radiological convention (patient right on the
    viewer's left, anterior up), the coronal slice with superior up.
    """
    fmt = report_format(path)
    if fmt not in ("png", "pdf"):
        raise OutputError(f"write_figure writes .png or .pdf, not {Path(path).name!r}.")
    Figure, FigureCanvasAgg = _matplotlib_figure()
    images = report_images(volume_hu, result) if volume_hu is not None else getattr(result, "report_images", None)
    if images is None:
        raise ValueError("No report images: segment with review=True, or pass volume_hu.")

    fig = Figure(figsize=(8.27, 11.69))  # A4 portrait
    FigureCanvasAgg(fig)
    _draw_title(fig, title, model_name)
    # axial montage: 2 rows x 3, left part of the page; coronal on the right
    top, height = 0.925, 0.34
    _draw_slices(fig, images, {it.slice_index for it in result.review}, top, height)
    y0 = top - height - 0.03
    _draw_measures(fig, result, y0)
    _draw_confidence(fig, result, y0)
    _draw_flags_and_review(fig, result, y0 - 0.31)

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return Path(path)


def _matplotlib_figure():
    """matplotlib's ``Figure`` and its Agg canvas (no GUI backend), or an OutputError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise OutputError("The PNG/PDF report needs matplotlib: pip install 'matplotlib>=3.5' (in 3D Slicer: "
                          "slicer.util.pip_install('matplotlib')), or write a .json/.csv report.") from exc
    return Figure, FigureCanvasAgg


def _draw_title(fig, title: str, model_name: Optional[str]) -> None:
    """Title, model, version and time (UTC), and the research disclaimer across the top of the page."""
    fig.text(0.04, 0.975, title, fontsize=15, weight="bold", va="top")
    fig.text(0.04, 0.952, f"{model_name or 'LungSeg'} · lungseg {__version__} · "
                          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", fontsize=8, va="top",
             color="0.3")
    fig.text(0.04, 0.937, DISCLAIMER, fontsize=7, va="top", color="0.3", wrap=True)


def _draw_slices(fig, images, reviewed, top: float, height: float) -> None:
    """Six axial overlays (slices to review titled in red) and the coronal overlay with those slices dashed."""
    cols, rows = 3, 2
    cell_w, cell_h = 0.62 / cols, height / rows
    for n, (k, ct, lab) in enumerate(images.axial):
        r, c = divmod(n, cols)
        ax = fig.add_axes((0.03 + c * cell_w, top - (r + 1) * cell_h, cell_w - 0.006, cell_h - 0.022))
        ax.imshow(_overlay(ct, lab), aspect=images.aspect_axial, interpolation="nearest")
        flagged = k in reviewed
        ax.set_title(f"slice {k}" + (" (review)" if flagged else ""), fontsize=7,
                     color="firebrick" if flagged else "black", pad=2)
        ax.set_xticks([]), ax.set_yticks([])
        ax.text(0.02, 0.03, "R", color="yellow", fontsize=7, transform=ax.transAxes)
        ax.text(0.93, 0.03, "L", color="yellow", fontsize=7, transform=ax.transAxes)
    ax = fig.add_axes((0.66, top - height, 0.32, height - 0.022))
    ax.imshow(_overlay(*images.coronal), aspect=images.aspect_coronal, interpolation="nearest")
    ax.set_title("coronal (dashed: slices to review)", fontsize=7, pad=2)
    ax.set_xticks([]), ax.set_yticks([])
    for row in images.review_rows:
        ax.axhline(row, color="firebrick", lw=0.6, ls="--")


def _draw_measures(fig, result, y0: float) -> None:
    """The measures table (measures down, regions across) with each lung's confidence; volumes only without
    measures."""
    fig.text(0.04, y0, "Measures (research; HU thresholds in the JSON report)", fontsize=10, weight="bold",
             va="top")
    lung_conf = result.confidence.lung_confidence() if result.confidence is not None else {}
    vols = result.volumes_ml()
    if result.measures is not None:
        cols_def = result.measures.columns()
        header = [title for _, title in cols_def] + ["Confidence"]
        cells = []
        for region, row in zip(result.measures.regions, result.measures.rows()):
            line = []
            for key, _ in cols_def:
                v = row.get(key)
                line.append(v if isinstance(v, str) else ("–" if v is None or not math.isfinite(v)
                                                          else f"{v:.1f}" if key != "volume_ml" else f"{v:.0f}"))
            conf = lung_conf.get(region.region)
            line.append("–" if conf is None or not math.isfinite(conf) else f"{conf:.3f}")
            cells.append(line)
        # transposed (measures down, regions across) so long headers fit on the page
        body = [[header[i]] + [cells[r][i] for r in range(len(cells))] for i in range(1, len(header))]
        tax = fig.add_axes((0.04, y0 - 0.285, 0.55, 0.27))
        tax.axis("off")
        table = tax.table(cellText=body, colLabels=["", *[c[0] for c in cells]], bbox=(0, 0, 1, 1),
                          cellLoc="right", colLoc="right", colWidths=[0.46, 0.18, 0.18, 0.18])
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
    else:
        fig.text(0.04, y0 - 0.03, "Volumes: " + ", ".join(f"{k} {v:.0f} mL" for k, v in vols.items()), fontsize=8,
                 va="top")


def _draw_confidence(fig, result, y0: float) -> None:
    """The per-slice confidence curve with the slices to review dashed (nothing without confidence)."""
    if result.confidence is not None:
        cax = fig.add_axes((0.66, y0 - 0.25, 0.31, 0.22))
        scores = result.confidence.slice_confidence()
        cax.plot(np.arange(scores.size), scores, lw=0.9, color="0.2")
        for it in result.review:
            cax.axvline(it.slice_index, color="firebrick", lw=0.5, ls="--")
        cax.set_ylim(min(0.5, float(np.nanmin(scores)) - 0.02) if scores.size else 0.5, 1.01)
        cax.set_xlabel(f"slice (array axis {result.confidence.axis})", fontsize=7)
        cax.set_ylabel("network confidence", fontsize=7)
        cax.tick_params(labelsize=6)
        cax.set_title("per-slice confidence (1 = sure)", fontsize=8)


def _draw_flags_and_review(fig, result, y1: float) -> None:
    """The flags, then the ranked list of slices to review (lung, reason, score, RAS position in mm)."""
    from .review import review_flags

    flags = (result.flags if result.flags is not None else review_flags(result))
    fig.text(0.04, y1, "Flags", fontsize=10, weight="bold", va="top")
    lines = [f"• {f.message}" for f in flags] or ["• none: volumes, sides and field of view look plausible"]
    fig.text(0.05, y1 - 0.022, "\n".join(_wrap(l, 120) for l in lines[:6]), fontsize=7.5, va="top",
             color="firebrick" if flags else "darkgreen", linespacing=1.4)
    y2 = y1 - 0.04 - 0.019 * min(6, max(1, sum(_wrap(l, 120).count("\n") + 1 for l in lines[:6])))
    fig.text(0.04, y2, "Review these slices (most urgent first)", fontsize=10, weight="bold", va="top")
    if result.review:
        names = {l.key: l.name for l in LUNG_LABELS}
        body = [[str(i + 1), str(it.slice_index), names.get(it.lung, "both") if it.lung else "–",
                 it.reason.replace("_", " "), f"{it.score:.2f}",
                 "({:.0f}, {:.0f}, {:.0f})".format(*it.position_ras)] for i, it in enumerate(result.review)]
        row_h = min(0.02, (y2 - 0.06) / (len(body) + 1))
        rax = fig.add_axes((0.04, y2 - 0.03 - row_h * (len(body) + 1), 0.92, row_h * (len(body) + 1)))
        rax.axis("off")
        table = rax.table(cellText=body, colLabels=["#", "slice", "lung", "reason", "score", "RAS (mm)"],
                          bbox=(0, 0, 1, 1), cellLoc="left", colLoc="left",
                          colWidths=[0.05, 0.08, 0.14, 0.22, 0.08, 0.3])
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
    else:
        fig.text(0.05, y2 - 0.025, "• nothing stands out (no gaps, no low-confidence slices)", fontsize=7.5,
                 va="top", color="darkgreen")


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n  ".join(textwrap.wrap(text, width)) or text


def write_reports(paths: Sequence[os.PathLike], result, *, volume_hu: Optional[np.ndarray] = None,
                  input_path: Optional[os.PathLike] = None, output_path: Optional[os.PathLike] = None,
                  model_name: Optional[str] = None, title_name: Optional[str] = None) -> List[Path]:
    """Write each report of ``paths`` (format by extension), atomically; returns the paths written.

    ``title_name`` (default: the input's file name) heads the one-page report.

    Paths should have been checked first (``LungSegLib.core.outputs.check_output_paths``).
    """
    written = []
    for path in paths:
        fmt = report_format(path)
        try:
            if fmt == "json":
                written.append(write_json(path, report_dict(result, input_path=input_path,
                                                            output_path=output_path, model_name=model_name)))
            elif fmt == "csv":
                written.append(write_csv(path, result))
            else:
                written.append(write_figure(path, result, volume_hu=volume_hu, model_name=model_name,
                                            title="LungSeg report" + (f": {title_name}" if title_name else
                                                                      f": {Path(input_path).name}" if input_path
                                                                      else "")))
        except OSError as exc:
            raise OutputError(f"Could not write the report {path}: {exc.strerror or exc}") from exc
    return written


__all__ = ["DISCLAIMER", "REPORT_FORMATS", "csv_text", "report_dict", "report_format", "write_csv",
           "write_figure", "write_json", "write_reports"]

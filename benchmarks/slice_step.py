"""What the slice step costs in accuracy (``segment_array(slice_step_mm=...)``, default
``LungSegLib.defaults.SLICE_STEP_MM``): the network runs on slices at most that far apart and the slices
between are interpolated on the model grid.

Two measurements with the bundled model, float32, default post-processing, each against running every slice
and against the reference labels:

1. **Stress test on real anatomy:** the shared 3 mm CTs with the network on every 2nd and every 3rd slice,
   i.e. interpolating across 6-10 mm of real anatomy (beyond the accepted range of the option; the
   default step interpolates across at most 2.5 mm).
2. **The default on thin slices:** each shared case resliced to 400 slices (0.8-1.0 mm, linear
   interpolation as ``bench.py --resliced`` makes them) with the default step and with every slice.
3. **The review on thin slices:** the same resliced cases with the review (``review=True``): the lung
   confidence and the slices of the ten most urgent review items, with the default step and every slice.

    python benchmarks/slice_step.py [--data ../shared/data] [--name slice_step]

Writes ``benchmarks/results/<name>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench import real_cases, write_resliced  # noqa: E402
from LungSegLib.api import LungSegmenter  # noqa: E402
from LungSegLib.core import inference  # noqa: E402
from LungSegLib.core.geometry import Geometry  # noqa: E402
from LungSegLib.defaults import SLICE_STEP_MM  # noqa: E402
from LungSegLib.evaluation.metrics import dice, hd95  # noqa: E402


def score(labels: np.ndarray, reference: np.ndarray, every: np.ndarray, spacing_zyx) -> dict:
    out = {"agree_pct": round(100.0 * float((labels == every).mean()), 4)}
    for value, name in ((1, "right"), (2, "left")):
        out[f"dice_{name}"] = round(dice(labels == value, reference == value), 4)
        out[f"hd95_{name}_mm"] = round(hd95(labels == value, reference == value, spacing_zyx), 1)
    return out


def run(segmenter: LungSegmenter, ct: sitk.Image, reference: np.ndarray, steps, label: str) -> list:
    volume, geometry = sitk.GetArrayFromImage(ct), Geometry.from_sitk(ct)
    spacing_zyx = ct.GetSpacing()[::-1]
    rows, every = [], None
    for name, step in steps:
        t0 = time.perf_counter()
        result = inference.segment_array(volume, geometry, segmenter.model, compute_dtype="float32", slice_step_mm=step)
        seconds = time.perf_counter() - t0
        every = result.labels if every is None else every
        rows.append({"input": label, "slices": int(volume.shape[0]), "slice_mm": round(float(geometry.spacing[2]), 2),
                     "step": name, "network_slices": result.network_slices, "seconds": round(seconds, 2),
                     **score(result.labels, reference, every, spacing_zyx)})
        print(rows[-1], flush=True)
    return rows


def review_rows(ct: sitk.Image, label: str) -> list:
    volume, geometry = sitk.GetArrayFromImage(ct), Geometry.from_sitk(ct)
    rows = []
    for name, step in (("every slice", 0.0), (f"default step ({SLICE_STEP_MM:g} mm)", SLICE_STEP_MM)):
        result = LungSegmenter(compute_dtype="float32", review=True, slice_step_mm=step).segment_array(volume, geometry)
        items = [(i.slice_index, i.lung) for i in result.review[:10]]
        rows.append({"input": label, "step": name, "network_slices": result.network_slices,
                     "lung_confidence": {k: round(v, 4) for k, v in result.confidence.lung_confidence().items()},
                     "review_top10": items})
        print(rows[-1], flush=True)
    every, stepped = ({s for s, _ in r["review_top10"]} for r in rows)
    # an item "matches" when the other run lists a slice within 3 slices of it
    rows[1]["top10_within_3_slices"] = sum(any(abs(s - t) <= 3 for t in every) for s in stepped)
    return rows


def review_table(rows: list) -> str:
    lines = ["| input | network on | slices run | lung confidence R / L | slices of the 10 most urgent review items | "
             "of them within 3 slices of an item with every slice |", "|---|---|---:|---|---|---:|"]
    for r in rows:
        conf = r["lung_confidence"]
        lines.append(f"| {r['input']} | {r['step']} | {r['network_slices']} | {conf.get('right', float('nan')):.4f} / "
                     f"{conf.get('left', float('nan')):.4f} | {', '.join(str(s) for s, _ in r['review_top10'])} | "
                     f"{r.get('top10_within_3_slices', '')} |")
    return "\n".join(lines)


def table(rows: list) -> str:
    head = ("| input | slices (mm) | network on | slices run | Dice R / L | HD95 R / L (mm) | voxels as with every "
            "slice | s |\n|---|---|---|---:|---|---|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['input']} | {r['slices']} ({r['slice_mm']}) | {r['step']} | {r['network_slices']} | "
                     f"{r['dice_right']:.4f} / {r['dice_left']:.4f} | {r['hd95_right_mm']} / {r['hd95_left_mm']} | "
                     f"{r['agree_pct']:.3f} % | {r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--name", default="slice_step")
    opts = p.parse_args()
    inference.MAX_SLICE_STEP_MM = 100.0  # the stress test goes beyond the accepted range on purpose
    segmenter = LungSegmenter(compute_dtype="float32")
    stress, thin, review = [], [], []
    cases = real_cases(Path(opts.data))
    for name, ct_path, label_path in cases:
        ct = sitk.ReadImage(str(ct_path))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
        dz = ct.GetSpacing()[2]
        stress += run(segmenter, ct, reference, [("every slice", 0.0), ("every 2nd slice", 2 * dz),
                                                 ("every 3rd slice", 3 * dz)], name)
    with tempfile.TemporaryDirectory() as tmp:
        for name, ct_path, label_path in cases:
            ct_400, label_400 = write_resliced(Path(tmp), name, ct_path, label_path, 400)
            ct = sitk.ReadImage(str(ct_400))
            reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label_400)))
            thin += run(segmenter, ct, reference, [("every slice", 0.0), (f"default step ({SLICE_STEP_MM:g} mm)",
                                                                          SLICE_STEP_MM)], f"{name} resliced to 400")
            review += review_rows(ct, f"{name} resliced to 400")
    results = HERE / "results"
    (results / f"{opts.name}.json").write_text(json.dumps({"stress": stress, "thin": thin, "review": review}, indent=1) + "\n")
    text = (f"# The slice step: accuracy\n\n`python benchmarks/slice_step.py --name {opts.name}` "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); bundled model, float32, default post-processing. "
            "Seconds are one run each, for orientation only (`bench.py` times the pipeline).\n\n"
            "## 1. Stress test: the shared 3 mm CTs with the network on every 2nd / 3rd slice\n\n"
            "Interpolating across 6-10 mm of real anatomy, far more than the default step ever does.\n\n"
            f"{table(stress)}\n\n"
            f"## 2. The default step ({SLICE_STEP_MM:g} mm) on thin slices: the shared CTs resliced to 400 slices\n\n"
            "Resliced by linear interpolation from 3 mm, so the anatomy between slices is smoother than a real "
            "thin-slice scan's; part 1 is the test on real anatomy.\n\n"
            f"{table(thin)}\n\n"
            "## 3. The review on the same thin slices\n\n"
            "With the step, the slices the network ran on are scored as when it runs every slice and the slices "
            "between get their neighbours' scores, interpolated (`SliceScorer.score_network_slices`).\n\n"
            f"{review_table(review)}\n")
    (results / f"{opts.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

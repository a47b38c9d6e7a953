"""Heavy noise on single slices of the shipped sample CT: does the model still find the lungs there, and does
its confidence drop where it does not?

Two slices (20 and 30) of ``Resources/SampleData/ACRIN-FLT-Breast-001_chest.nrrd`` get Gaussian noise of the
given SD (HU, clipped to -1024..3071) and slice 25 is blanked (-1024 HU), as in ``Testing/test_review.py``. Per
noise level: the lung Dice of each noisy slice against the same model's labels on the clean CT, the noisy
slices' confidence (``SliceConfidence.slice_confidence``) against the median and minimum of the clean interior
slices, and why the review list names them (``noisy_slice``: smoothed for noise by the input preparation,
``low_confidence``). ``--no-smoothing`` switches the noise smoothing off (``input.noise_trigger_hu`` 0): what the
network makes of the noisy slices by itself. The sample is a training case of the bundled model, so for it this
measures robustness to the corruption, not generalisation; a leave-one-patient-out fold of ACRIN-FLT-Breast-001
never saw it.

``--scan`` instead adds noise to the whole CT, fine-grained (white) and coarse (white noise blurred by a
Gaussian of 1 pixel, then rescaled to the SD: the grain of a low-dose soft-kernel scan), and reports the Dice
of the lungs against the clean CT's labels with the smoothing on (``--target`` HU, default the model's) and
off, and whether the ``noisy_slices`` warning came.

    python benchmarks/noise_robustness.py [--model MODEL] [--sd 100,200,300] [--no-smoothing] [--name noise_robustness]
    python benchmarks/noise_robustness.py --scan [--model MODEL] [--sd 100,200,300] [--target HU] [--name NAME]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"
NOISY, BLANK = (20, 30), 25


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def measure(model_path, levels, smoothing: bool = True):
    from dataclasses import replace

    import SimpleITK as sitk

    from LungSegLib.api import LungSegmenter
    from LungSegLib.core.geometry import Geometry
    from LungSegLib.core.model import load_model

    image = sitk.ReadImage(str(SAMPLE))
    clean_volume = sitk.GetArrayFromImage(image)
    geometry = Geometry.from_sitk(image)
    model = load_model(model_path)
    if not smoothing:
        model = replace(model, spec=replace(model.spec, noise_trigger_hu=0.0))
    segmenter = LungSegmenter(model, review=True)
    clean = segmenter.segment_array(clean_volume, geometry)
    rows = []
    for sd in levels:
        volume = clean_volume.copy()
        rng = np.random.default_rng(0)
        for k in NOISY:
            volume[k] = np.clip(volume[k] + rng.normal(0, sd, volume[k].shape), -1024, 3071).astype(volume.dtype)
        volume[BLANK] = -1024
        result = segmenter.segment_array(volume, geometry)
        conf = result.confidence.slice_confidence()
        interior = [k for k in range(8, 41) if k not in NOISY and abs(k - BLANK) > 1]
        listed = {}
        for it in result.review:
            if it.slice_index in NOISY:
                listed.setdefault(it.slice_index, set()).add(it.reason)
        rows.append({"noise_sd_hu": sd,
                     "dice_vs_clean": [round(_dice(result.labels[k] > 0, clean.labels[k] > 0), 3) for k in NOISY],
                     "confidence": [round(float(conf[k]), 3) for k in NOISY],
                     "clean_median": round(float(np.median(conf[interior])), 3),
                     "clean_min": round(float(conf[interior].min()), 3),
                     "smoothed": [k in result.noisy_slices for k in NOISY],
                     "review_reasons": [sorted(listed.get(k, ())) for k in NOISY]})
    return rows


def measure_scan(model_path, levels, target=None):
    from dataclasses import replace

    import SimpleITK as sitk
    from scipy import ndimage

    from LungSegLib.api import LungSegmenter
    from LungSegLib.core.geometry import Geometry
    from LungSegLib.core.model import load_model

    image = sitk.ReadImage(str(SAMPLE))
    clean_volume = sitk.GetArrayFromImage(image)
    geometry = Geometry.from_sitk(image)
    model = load_model(model_path)
    if target is not None:
        model = replace(model, spec=replace(model.spec, noise_target_hu=float(target)))
    on = LungSegmenter(model)
    off = LungSegmenter(replace(model, spec=replace(model.spec, noise_trigger_hu=0.0)))
    clean = on.segment_array(clean_volume, geometry).labels > 0
    rng = np.random.default_rng(0)
    rows = []
    for grain in (0.0, 1.0):
        for sd in levels:
            noise = rng.normal(0.0, 1.0, clean_volume.shape)
            if grain:
                noise = ndimage.gaussian_filter(noise, (0, grain, grain))
                noise /= noise.std()
            volume = np.clip(clean_volume + sd * noise, -1024, 3071).astype(clean_volume.dtype)
            smoothed, raw = on.segment_array(volume, geometry), off.segment_array(volume, geometry)
            rows.append({"grain_px": grain, "noise_sd_hu": sd,
                         "dice_smoothed": round(_dice(smoothed.labels > 0, clean), 3),
                         "dice_unsmoothed": round(_dice(raw.labels > 0, clean), 3),
                         "warned": any(w.code == "noisy_slices" for w in smoothed.warnings)})
    return rows, model.spec.noise_trigger_hu, model.spec.noise_target_hu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--sd", default="100,200,300", help="noise SDs in HU, comma-separated")
    parser.add_argument("--no-smoothing", action="store_true", help="switch the input's noise smoothing off")
    parser.add_argument("--scan", action="store_true", help="noise over the whole CT, fine and coarse grain")
    parser.add_argument("--target", type=float, default=None, help="with --scan: smoothing target (HU)")
    parser.add_argument("--name", default="noise_robustness", help="output stem in benchmarks/results")
    args = parser.parse_args()
    if args.scan:
        rows, trigger, target = measure_scan(args.model, [float(v) for v in args.sd.split(",")], args.target)
        out = REPO / "benchmarks" / "results" / args.name
        json.dump({"model": args.model or "bundled", "trigger_hu": trigger, "target_hu": target, "rows": rows},
                  open(out.with_suffix(".json"), "w"), indent=1)
        lines = [f"# Noise over the whole sample CT ({args.model or 'bundled model'}; smoothing above {trigger:g} HU "
                 f"to {target:g} HU)", "",
                 f"`python benchmarks/noise_robustness.py --scan{' --model ' + args.model if args.model else ''} "
                 f"--sd {args.sd}{' --target %g' % args.target if args.target is not None else ''} --name {args.name}`"
                 " (see the script's docstring)", "",
                 "| grain | noise SD (HU) | Dice vs clean, smoothing on | smoothing off | `noisy_slices` warning |",
                 "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {'coarse (1 px)' if r['grain_px'] else 'fine'} | {r['noise_sd_hu']:.0f} | "
                         f"{r['dice_smoothed']:.3f} | {r['dice_unsmoothed']:.3f} | {'yes' if r['warned'] else 'no'} |")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    rows = measure(args.model, [float(v) for v in args.sd.split(",")], smoothing=not args.no_smoothing)
    out = REPO / "benchmarks" / "results" / args.name
    json.dump({"model": args.model or "bundled", "smoothing": not args.no_smoothing, "rows": rows},
              open(out.with_suffix(".json"), "w"), indent=1)
    lines = [f"# Heavy noise on slices {NOISY} of the sample CT ({args.model or 'bundled model'}, noise smoothing "
             f"{'off' if args.no_smoothing else 'on'})", "",
             f"`python benchmarks/noise_robustness.py{' --model ' + args.model if args.model else ''} --sd {args.sd}"
             f"{' --no-smoothing' if args.no_smoothing else ''} --name {args.name}` (see the script's docstring)", "",
             "| noise SD (HU) | Dice vs clean labels (slices 20, 30) | smoothed | confidence (20, 30) | clean median / min "
             "| review list names them for |", "|---|---|---|---|---|---|"]
    for r in rows:
        reasons = "; ".join(", ".join(x) or "-" for x in r["review_reasons"])
        lines.append(f"| {r['noise_sd_hu']:.0f} | {r['dice_vs_clean'][0]:.3f}, {r['dice_vs_clean'][1]:.3f} | "
                     f"{', '.join('yes' if f else 'no' for f in r['smoothed'])} | "
                     f"{r['confidence'][0]:.3f}, {r['confidence'][1]:.3f} | {r['clean_median']:.3f} / "
                     f"{r['clean_min']:.3f} | {reasons} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""What the review aids cost: end-to-end time with them off, on, and with the test-time flip.

    python benchmarks/confidence_timing.py            # sample CT + 400-slice phantom, 3 rounds
    python benchmarks/confidence_timing.py --rounds 5

For each input, every round runs :meth:`LungSegmenter.segment_file` (read -> segment -> write) once per
configuration, in the same process and interleaved (so a change of machine load hits all alike):

* ``off``: ``review=False`` -- no confidence, nothing extra (the code path of before);
* ``review``: confidence statistics, density measures, review list (``review=True``);
* ``flip``: ``review=True, flip=True`` -- the mirrored pass on the slices the plain pass is unsure
  about (at most 20 % of them);
* ``flip_all``: the mirrored pass on every slice (classic test-time augmentation), for comparison.

The median over rounds is reported, with the extra time over ``off`` in %. Inputs: the shipped sample
CT and the 400-slice synthetic chest of ``benchmarks/bench.py``. Writes
``benchmarks/results/confidence_timing.{md,json}``. A benchmark, not a test: nothing asserts timings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results"
SAMPLE = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"
CONFIGS = {"off": dict(review=False, flip=False), "review": dict(review=True, flip=False),
           "flip": dict(review=True, flip=True), "flip_all": dict(review=True, flip=True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slices", type=int, default=400, help="phantom slice count (default 400)")
    args = ap.parse_args()
    from bench import write_synthetic

    from LungSegLib.api import LungSegmenter
    from LungSegLib.core.confidence import ConfidenceOptions

    tmp = Path(tempfile.mkdtemp(prefix="lungseg-conf-timing-"))
    inputs = {"sample CT (48 slices)": SAMPLE,
              f"synthetic 512x512x{args.slices}": write_synthetic(tmp, args.slices)}
    segmenters = {name: LungSegmenter(**cfg) for name, cfg in CONFIGS.items()}
    # flip_all: the segmenter asks for ConfidenceOptions(flip=True); every slice instead
    flip_all = segmenters["flip_all"]
    original = flip_all.segment_array

    def segment_all(volume, geometry, **kw):
        kw["confidence"] = ConfidenceOptions(flip=True, flip_all=True)
        return original(volume, geometry, **kw)

    flip_all.segment_array = segment_all
    load_before = os.getloadavg()[0]
    rows = []
    for label, path in inputs.items():
        times = {name: [] for name in CONFIGS}
        flipped = {}
        out = tmp / "out.nrrd"
        segmenters["off"].segment_file(path, out, overwrite=True)  # warm-up (graph tracing)
        for _ in range(args.rounds):
            for name, seg in segmenters.items():
                t0 = time.perf_counter()
                result = seg.segment_file(path, out, overwrite=True)
                times[name].append(time.perf_counter() - t0)
                if result.confidence is not None and result.confidence.flipped is not None:
                    flipped[name] = int(result.confidence.flipped.sum())
        med = {name: statistics.median(v) for name, v in times.items()}
        row = {"input": label, "slices": int(result.labels.shape[0]), "median_s": med,
               "extra_pct": {n: 100 * (med[n] / med["off"] - 1) for n in CONFIGS},
               "mirrored_slices": flipped, "runs_s": times}
        rows.append(row)
        print(label, {n: f"{v:.2f} s ({row['extra_pct'][n]:+.0f} %)" for n, v in med.items()}, flipped, flush=True)
    load_after = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (RESULTS / "confidence_timing.json").write_text(json.dumps(
        {"rows": rows, "rounds": args.rounds, "load_before_after": [load_before, load_after], "utc": stamp},
        indent=1))
    lines = ["# What the review aids cost (end to end)", "",
             f"Command: `python benchmarks/confidence_timing.py --rounds {args.rounds}` ({stamp}); "
             f"{os.cpu_count()} cores, load average before/after {load_before:.2f}/{load_after:.2f} (a shared "
             "machine: other jobs ran meanwhile, which is why every configuration runs in every round, "
             "interleaved).", "",
             "`segment_file` read -> segment -> write, median of the rounds; extra time over `off`:", "",
             "| input | slices | off | review (confidence + measures + list) | flip (unsure slices) | "
             "flip_all (every slice) | mirrored slices (flip / flip_all) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, e = r["median_s"], r["extra_pct"]
        lines.append(f"| {r['input']} | {r['slices']} | {m['off']:.2f} s | {m['review']:.2f} s ({e['review']:+.0f} %) | "
                     f"{m['flip']:.2f} s ({e['flip']:+.0f} %) | {m['flip_all']:.2f} s ({e['flip_all']:+.0f} %) | "
                     f"{r['mirrored_slices'].get('flip', 0)} / {r['mirrored_slices'].get('flip_all', 0)} |")
    lines += ["", "`off` runs exactly the code path without the review aids: the inference loop only tests "
              "`scorer is not None` once per batch.", "",
              "The selective flip mirrors at most 20 % of the slices (those the plain pass is unsure about), so "
              "its cost is bounded by a fifth of the network time; `flip_all` doubles the network time "
              "(see `benchmarks/results/confidence.md` for whether the flip ranks the bad slices better)."]
    (RESULTS / "confidence_timing.md").write_text("\n".join(lines) + "\n")
    print(f"Wrote {RESULTS / 'confidence_timing.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Peak memory of `lungseg segment` per output format and slice count (a benchmark, not a test).

    python benchmarks/memory_formats.py                       # 250/500/1000 slices x every format
    python benchmarks/memory_formats.py --slices 1000 --formats seg.nrrd nrrd

Each run is a fresh child process, exactly what a user runs: ``python -m LungSegLib segment CT OUT
--quiet`` on a synthetic 512 x 512 x N chest CT (``bench.synthetic_ct``: the same anatomy whatever N,
int16 HU, uncompressed NRRD in a temporary folder). The child's peak resident memory is read from the
kernel after it ends (``ru_maxrss`` of ``wait4``, the figure ``/usr/bin/time -v`` prints as "Maximum
resident set size"). A second series runs the API in a child with a sampler thread that records the
largest RSS seen in each stage (read, model, segment, write), to show where the peak is.

A third series checks the batch size: a 48-slice CT with ``--batch-size`` 8 and the maximum, whose
single short batch must not cost a full batch's memory.

Writes ``benchmarks/results/memory_formats.json`` and ``memory_formats.md``. Target: every format
within 2 GB (2048 MiB) at 1000 slices, and memory growing linearly with the slice count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))

FORMATS = ("seg.nrrd", "nrrd", "nii.gz", "nii", "mha")
TARGET_MB = 2048.0

#: The child of the per-stage series: segment_file with an RSS sampler, prints a JSON line.
_STAGE_CHILD = r"""
import json, sys, threading, time
from LungSegLib.api import LungSegmenter
peaks, state = {}, {"stage": "start", "run": True}
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0
def sample():
    while state["run"]:
        peaks[state["stage"]] = max(peaks.get(state["stage"], 0.0), rss_mb())
        time.sleep(0.02)
thread = threading.Thread(target=sample, daemon=True); thread.start()
def on_stage(name):
    peaks[state["stage"]] = max(peaks.get(state["stage"], 0.0), rss_mb())
    state["stage"] = name
seg = LungSegmenter(batch_size=int(sys.argv[3]), lazy=True)
seg.segment_file(sys.argv[1], sys.argv[2], overwrite=True, on_stage=on_stage)
on_stage("done"); state["run"] = False; thread.join()
print(json.dumps({"stage_peak_mb": peaks}))
"""


def write_ct(folder: Path, n_slices: int) -> Path:
    import SimpleITK as sitk

    from bench import synthetic_ct

    volume, spacing = synthetic_ct(n_slices)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    path = folder / f"ct_{n_slices}.nrrd"
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def measured(args: Sequence[str]) -> Dict[str, Any]:
    """One child in a grandchild-free wrapper, so RUSAGE_CHILDREN holds exactly that child's peak."""
    wrapper = ("import json, os, resource, subprocess, sys, time\n"
               "t0 = time.perf_counter()\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
               "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
               "print(json.dumps({'returncode': p.returncode, 'seconds': round(time.perf_counter() - t0, 1),"
               " 'peak_rss_mb': round(u.ru_maxrss / 1024.0, 1), 'stdout': p.stdout.decode()[-4000:],"
               " 'stderr': p.stderr.decode()[-2000:]}))\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable] + list(args), capture_output=True,
                          env=env, cwd=REPO, check=True)
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage series")
    parser.add_argument("--no-batch", action="store_true", help="skip the batch-size series")
    parser.add_argument("--name", default="memory_formats")
    opts = parser.parse_args(argv)

    rows: List[Dict[str, Any]] = []
    stages: List[Dict[str, Any]] = []
    batches: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lungseg-mem-") as tmp:
        folder = Path(tmp)
        for n in opts.slices:
            ct = write_ct(folder, n)
            for fmt in opts.formats:
                out = folder / f"out_{n}.{fmt}"
                r = measured(["-m", "LungSegLib", "segment", str(ct), str(out), "--quiet", "--overwrite",
                              "--batch-size", str(opts.batch_size)])
                r.update(slices=n, format=fmt, output_mb=round(out.stat().st_size / 2**20, 2) if out.exists() else None)
                print(f"{n:5d} slices  {fmt:9s} peak {r['peak_rss_mb']:7.0f} MiB  {r['seconds']:6.1f} s  "
                      f"exit {r['returncode']}", flush=True)
                rows.append(r)
            if not opts.no_stages and n == max(opts.slices):
                for fmt in ("seg.nrrd", "nrrd"):
                    out = folder / f"stages_{n}.{fmt}"
                    proc = subprocess.run([sys.executable, "-c", _STAGE_CHILD, str(ct), str(out),
                                           str(opts.batch_size)], capture_output=True, cwd=REPO,
                                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
                    line = proc.stdout.decode().strip().splitlines()[-1] if proc.stdout.strip() else "{}"
                    entry = dict(json.loads(line), slices=n, format=fmt, returncode=proc.returncode)
                    print(f"stages {n} {fmt}: {entry.get('stage_peak_mb')}", flush=True)
                    stages.append(entry)
            ct.unlink()
        if not opts.no_batch:
            ct = write_ct(folder, 48)
            from LungSegLib.defaults import MAX_BATCH_SIZE

            for batch in (8, MAX_BATCH_SIZE):
                r = measured(["-m", "LungSegLib", "segment", str(ct), str(folder / "b.nrrd"), "--quiet",
                              "--overwrite", "--batch-size", str(batch)])
                r.update(slices=48, batch_size=batch)
                print(f"48 slices batch {batch}: peak {r['peak_rss_mb']:.0f} MiB", flush=True)
                batches.append(r)

    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(), "load_before": os.getloadavg()},
              "batch_size": opts.batch_size, "runs": rows, "stages": stages, "batch_runs": batches,
              "target_mb": TARGET_MB}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{opts.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{opts.name}.md").write_text(markdown(report))
    print((RESULTS / f"{opts.name}.md").read_text())
    return 0


def markdown(report: Dict[str, Any]) -> str:
    rows = report["runs"]
    slices = sorted({r["slices"] for r in rows})
    formats = [f for f in FORMATS if any(r["format"] == f for r in rows)]
    lines = ["# Peak memory of `lungseg segment` by output format", "",
             "Synthetic 512 x 512 x N chest CT (int16, `bench.synthetic_ct`), batch size "
             f"{report['batch_size']}, bundled model, one fresh process per cell; peak resident memory "
             "(`ru_maxrss`, MiB) of `python -m LungSegLib segment CT OUT --quiet`. Target: <= "
             f"{report['target_mb']:.0f} MiB at 1000 slices, linear in slices.", "",
             "| format | " + " | ".join(f"{n} slices" for n in slices) + " | MiB per 100 slices |",
             "|---|" + "---|" * (len(slices) + 1)]
    for fmt in formats:
        cells, points = [], []
        for n in slices:
            r = next((r for r in rows if r["format"] == fmt and r["slices"] == n), None)
            cells.append("–" if r is None else (f"{r['peak_rss_mb']:.0f}" if r["returncode"] == 0
                                                else f"exit {r['returncode']}"))
            if r is not None and r["returncode"] == 0:
                points.append((n, r["peak_rss_mb"]))
        slope = ""
        if len(points) >= 2:
            (n0, m0), (n1, m1) = points[0], points[-1]
            slope = f"{100 * (m1 - m0) / (n1 - n0):.0f}"
        lines.append(f"| {fmt} | " + " | ".join(cells) + f" | {slope} |")
    if report.get("stages"):
        lines += ["", "Largest RSS seen in each stage (sampled every 20 ms, MiB):", "",
                  "| run | " + " | ".join(("read", "model", "segment", "write")) + " |", "|---|---|---|---|---|"]
        for s in report["stages"]:
            p = s.get("stage_peak_mb", {})
            lines.append(f"| {s['slices']} slices, {s['format']} | "
                         + " | ".join(f"{p.get(k, float('nan')):.0f}" for k in ("read", "model", "segment", "write"))
                         + " |")
    if report.get("batch_runs"):
        lines += ["", "A 48-slice CT (one short batch when the batch size exceeds it):", "",
                  "| --batch-size | peak MiB |", "|---|---|"]
        for b in report["batch_runs"]:
            lines.append(f"| {b['batch_size']} | {b['peak_rss_mb']:.0f} |")
    load = report["machine"]["load_before"]
    lines += ["", f"Machine: {report['machine']['cpus']} CPUs, Python {report['machine']['python']}, load "
                  f"average before the run {load[0]:.1f} (memory does not depend on load; times would)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of ``lungseg batch`` against one ``lungseg segment`` per CT: CTs per minute.

    python benchmarks/batch_bench.py               # 10 CTs, the bundled model, all three ways
    python benchmarks/batch_bench.py --cts 4 --jobs 1 2 4 --pin     # --pin: --jobs N also with --pin-cores

The CTs are copies of the shipped sample CT (``Resources/SampleData``, 256 x 256 x 48 at 1.95 x 1.95 x
4.25 mm) cut at different slice ranges, so no two are identical, written as gzip NRRD into a temporary
folder. Each way runs as its own process exactly as a user would start it, from a clean output folder:

* ``segment``: ``lungseg segment CT OUT`` once per CT, one after the other (TensorFlow and the model are
  loaded for every CT);
* ``batch --jobs N``: one ``lungseg batch IN OUT --jobs N`` (the model is loaded once per worker).

Writes ``benchmarks/results/batch_bench.json`` (every timing) and ``batch_bench.md`` (the table), with
the machine's core count and load average before and after each way: on a shared machine the numbers
move with the other jobs, so rerun on an idle one for clean figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"


def make_cts(folder: Path, n: int) -> List[Path]:
    """``n`` CTs cut from the sample at shifting slice ranges (36 to 48 slices each)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(SAMPLE_CT))
    depth = image.GetSize()[2]
    paths = []
    for i in range(n):
        start = i % 7
        stop = depth - (i * 3) % 7
        path = folder / f"case{i:02d}" / "ct.nrrd"
        path.parent.mkdir(parents=True)
        sitk.WriteImage(image[:, :, start:stop], str(path), useCompression=True)
        paths.append(path)
    return paths


def lungseg(*args: str) -> List[str]:
    return [sys.executable, "-m", "LungSegLib", *args]


def timed(commands: List[List[str]], env: Dict[str, str]) -> float:
    t0 = time.perf_counter()
    for command in commands:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cts", type=int, default=10, help="number of CTs (default 10)")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs values of the batch runs")
    p.add_argument("--pin", action="store_true", help="also time each --jobs N > 1 with --pin-cores")
    p.add_argument("--model", help="model (default: the bundled one)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where the results go")
    p.add_argument("--name", default="batch_bench", help="file name stem of the results")
    args = p.parse_args(argv)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    model = ["--model", args.model] if args.model else []
    work = Path(tempfile.mkdtemp(prefix="lungseg_batch_bench_"))
    runs = []
    try:
        cts = make_cts(work / "in", args.cts)
        slices = sum(int(_size(ct)[2]) for ct in cts)
        ways = [("segment (one process per CT)",
                 [lungseg("segment", str(ct), str(work / "seg_out" / f"{ct.parent.name}.seg.nrrd"), "--quiet",
                          *model) for ct in cts])]
        for jobs in args.jobs:
            for pin in ([False, True] if jobs > 1 and args.pin else [False]):
                flags = ["--pin-cores"] if pin else []
                ways.append((" ".join([f"batch --jobs {jobs}"] + flags),
                             [lungseg("batch", str(work / "in"), str(work / f"batch{jobs}{'p' if pin else ''}_out"),
                                      "--jobs", str(jobs), "--quiet", *flags, *model)]))
        for name, commands in ways:
            load_before = os.getloadavg()
            seconds = timed(commands, env)
            load_after = os.getloadavg()
            runs.append({"way": name, "seconds": round(seconds, 2), "cts": len(cts),
                         "cts_per_minute": round(60 * len(cts) / seconds, 2),
                         "load_before": [round(v, 2) for v in load_before],
                         "load_after": [round(v, 2) for v in load_after]})
            print(f"{name}: {seconds:.1f} s, {60 * len(cts) / seconds:.2f} CTs/min "
                  f"(load {load_before[0]:.1f} -> {load_after[0]:.1f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"machine": {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "cts": args.cts, "slices_total": slices, "model": args.model or "bundled", "runs": runs,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    base = runs[0]["seconds"]
    lines = [f"# `lungseg batch` throughput ({result['date']})", "",
             f"{args.cts} CTs cut from the shipped sample CT ({slices} slices in all, 256 x 256), model: "
             f"{result['model']}, {result['machine']['cores']} cores. Command: "
             f"`{' '.join(['python benchmarks/batch_bench.py'] + list(argv if argv is not None else sys.argv[1:]))}`.",
             "", "| way | seconds | CTs per minute | speed-up | load average before -> after (1 min) |",
             "| --- | ---: | ---: | ---: | --- |"]
    for run in runs:
        lines.append(f"| {run['way']} | {run['seconds']:.1f} | {run['cts_per_minute']:.2f} | "
                     f"{base / run['seconds']:.2f}x | {run['load_before'][0]:.2f} -> {run['load_after'][0]:.2f} |")
    lines += ["", "A load average above the core count means other jobs shared the CPU during the run; "
              "rerun on an idle machine for clean numbers."]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"Wrote {out / (args.name + '.json')} and {out / (args.name + '.md')}")
    return 0


def _size(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize()


if __name__ == "__main__":
    sys.exit(main())

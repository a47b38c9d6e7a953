#!/usr/bin/env python
"""LungSeg speed and memory benchmark: whole CTs end to end, on this machine.

    python benchmarks/bench.py            # full run (< 5 min on 2 cores), writes benchmarks/results/
    python benchmarks/bench.py --quick    # 1 run per input, 100- and 400-slice phantoms only

Inputs: the real cases under ``$LUNGSEG_DATA_DIR`` (default ``<repo>/../shared/data``, folders
``cases/<case>/ct.nrrd`` with ``label.nrrd``) and synthetic chest CTs made here, 512 x 512 x {100, 400,
800} int16 (a body ellipse near 0 HU, two lung ellipsoids near -850 HU, spine, couch, noise), written as
gzip NRRD into a temporary folder.

Each input runs in its own child process (so the peak memory is that input's, as the OS counts it):
one warm-up on a slab of the volume, then ``--runs`` full read -> segment -> write passes through
:meth:`LungSegmenter.segment_file`; the median of every stage is reported. The child also times the
network alone on full batches, and, for real cases, scores the labels against ``label.nrrd`` (Dice per
lung) so that speed is never bought with accuracy. The float32 matrix-multiply peak of TensorFlow on
the same cores is measured in a child of its own, so "% of peak" means the same on any machine.

Results: ``benchmarks/results/bench.json`` (everything), ``bench.md`` (the table) and ``bench.png``
(time and memory against slice count). It is a benchmark, not a test: nothing here asserts timings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
STAGES = ("read", "preprocess", "resample", "inference", "postprocess", "write")
TARGET_SLICES = 400
TARGETS = {"total_s": 10.0, "peak_rss_mb": 2048.0, "network_peak_fraction": 0.70}


# --- inputs -----------------------------------------------------------------------------------
def synthetic_ct(n_slices: int, size: int = 512, pixel_mm: float = 0.78, length_mm: float = 320.0,
                 seed: int = 0) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    """A chest-like int16 CT ``[k, j, i]`` in HU and its (i, j, k) spacing in mm.

    The phantom spans ``length_mm`` whatever the slice count (thinner slices for more of them), so
    the anatomy, and the work per slice, stays the same while the slice count scales.
    """
    rng = np.random.default_rng(seed)
    dz = length_mm / n_slices
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    xm, ym = (x - c) * pixel_mm, (y - c) * pixel_mm  # mm; x to patient left, y to posterior
    body = (xm / 165) ** 2 + (ym / 115) ** 2 <= 1
    couch = (ym > 130) & (ym < 140) & (np.abs(xm) < 190)
    spine = xm ** 2 + (ym - 75) ** 2 <= 18 ** 2
    base = np.full((size, size), -1000, np.float32)
    base[couch], base[body], base[spine] = 100, 40, 700
    vol = np.empty((n_slices, size, size), np.int16)
    for k in range(n_slices):
        z = (k + 0.5) * dz - length_mm / 2
        sl = base.copy()
        shrink = 1 - (z / 120) ** 2  # lungs are ellipsoids 240 mm long
        if shrink > 0:
            r = np.sqrt(shrink)
            for side in (-1, 1):
                sl[((xm - side * 75) / (55 * r)) ** 2 + ((ym + 5) / (85 * r)) ** 2 <= 1] = -850
        sl += rng.standard_normal((size, size), dtype=np.float32) * 20
        vol[k] = np.clip(sl, -1024, 3071)
    return vol, (pixel_mm, pixel_mm, dz)


def write_synthetic(folder: Path, n_slices: int) -> Path:
    import SimpleITK as sitk

    vol, spacing = synthetic_ct(n_slices)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing(spacing)
    image.SetOrigin((-200.0, -200.0, -160.0))
    path = folder / f"synthetic_{n_slices}.nrrd"
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def write_resliced(folder: Path, name: str, ct: Path, label: Optional[Path], n_slices: int
                   ) -> Tuple[Path, Optional[Path]]:
    """A real case resampled to ``n_slices`` slices over the same extent (CT linear, label nearest), written
    as gzip NRRD: real anatomy at the target slice count, where the phantom's smooth ellipsoids give the
    network (and the clean-up after it) work unlike a patient's."""
    import SimpleITK as sitk

    def resliced(image, interpolator, pixel):
        size = list(image.GetSize())
        spacing = list(image.GetSpacing())
        extent = size[2] * spacing[2]
        spacing[2], size[2] = extent / n_slices, n_slices
        # first and last new slice centres half a new slice inside the old extent's ends
        origin = np.array(image.GetOrigin()) + np.array(image.GetDirection()).reshape(3, 3)[:, 2] * (
            (spacing[2] - image.GetSpacing()[2]) / 2)
        return sitk.Resample(image, size, sitk.Transform(), interpolator, tuple(origin), tuple(spacing),
                             image.GetDirection(), -1024 if pixel == sitk.sitkInt16 else 0, pixel)

    out_ct = folder / f"{name}_{n_slices}.nrrd"
    sitk.WriteImage(resliced(sitk.ReadImage(str(ct)), sitk.sitkLinear, sitk.sitkInt16), str(out_ct),
                    useCompression=True)
    out_label = None
    if label is not None:
        out_label = folder / f"{name}_{n_slices}_label.nrrd"
        sitk.WriteImage(resliced(sitk.ReadImage(str(label)), sitk.sitkNearestNeighbor, sitk.sitkUInt8),
                        str(out_label), useCompression=True)
    return out_ct, out_label


def data_dir() -> Path:
    env = os.environ.get("LUNGSEG_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def real_cases(root: Path) -> List[Tuple[str, Path, Optional[Path]]]:
    """(name, ct, label or None) for every ``cases/<case>/ct.nrrd`` under ``root`` (or ``root/<case>``)."""
    base = root / "cases" if (root / "cases").is_dir() else root
    out = []
    if base.is_dir():
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            ct = folder / "ct.nrrd"
            label = folder / "label.nrrd"
            if ct.is_file():
                out.append((folder.name, ct, label if label.is_file() else None))
    return out


# --- machine ----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return [f for f in line.split(":", 1)[1].split()
                        if f.startswith(("avx", "amx", "fma"))]
    except OSError:
        pass
    return []


def has_bf16_flags(flags) -> bool:
    return any(f in ("avx512_bf16", "amx_bf16") for f in flags)


def has_bf16() -> bool:
    return has_bf16_flags(cpu_flags())


# --- child processes --------------------------------------------------------------------------
def run_child(args: Sequence[str], timeout: float = 900.0) -> Tuple[Dict[str, Any], float]:
    """Run ``bench.py --worker ...``; return its JSON answer and its peak RSS in MB (from the OS)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", *args],
                                stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"benchmark child {' '.join(args)} timed out")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode()
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark child {' '.join(args)} failed ({proc.returncode}):\n"
                               + err.read().decode()[-3000:])
    # ru_maxrss is in kB on Linux, bytes on macOS
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return json.loads(text.strip().splitlines()[-1]), usage.ru_maxrss * scale


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs``), so each run's own peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def matmul_peak(sizes: Sequence[int] = (1024, 2048, 3072), repeats: int = 5) -> float:
    """Best float32 ``tf.linalg.matmul`` rate (GFLOP/s) on square matrices of these sizes."""
    import tensorflow as tf

    matmul = tf.function(tf.linalg.matmul)
    best = 0.0
    for n in sizes:
        a = tf.random.normal((n, n), dtype=tf.float32)
        b = tf.random.normal((n, n), dtype=tf.float32)
        matmul(a, b).numpy()
        for _ in range(repeats):
            t = time.perf_counter()
            matmul(a, b).numpy()
            best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def worker_peak(threads: Optional[int]) -> Dict[str, Any]:
    """The machine's float32 matmul peak with LungSeg's thread settings."""
    from LungSegLib.core.inference import configure_threads

    n_threads = configure_threads(threads)
    import tensorflow as tf

    return {"matmul_peak_gflops": matmul_peak(), "threads": n_threads, "tensorflow": tf.__version__}


def worker_levels(opts: argparse.Namespace) -> Dict[str, Any]:
    """Each 3x3 convolution of the model alone (fused conv + bias + ReLU, float32, one batch), summed
    per resolution: where the network's time goes and how fast each level runs."""
    from LungSegLib.core.inference import configure_threads
    from LungSegLib.core.model import load_model

    configure_threads(opts.threads)
    import tensorflow as tf
    from keras import layers

    model = load_model(opts.model).keras_model
    rng = np.random.default_rng(0)
    levels: Dict[int, Dict[str, float]] = {}
    for layer in model.layers:
        if type(layer) is not layers.Conv2D or tuple(layer.kernel_size) != (3, 3):
            continue
        h, w, cin = layer.input.shape[1:]
        cout = layer.filters
        x = tf.constant(rng.random((opts.batch_size, h, w, cin), dtype=np.float32))
        k = tf.constant(rng.standard_normal((3, 3, cin, cout)).astype(np.float32))
        b = tf.constant(np.zeros(cout, np.float32))
        conv = tf.function(lambda x: tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, k, 1, "SAME"), b)))
        conv(x).numpy()
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            conv(x).numpy()
            best = min(best, time.perf_counter() - t)
        level = levels.setdefault(int(h), {"gflop": 0.0, "s": 0.0})
        level["gflop"] += 2.0 * h * w * 9 * cin * cout * opts.batch_size / 1e9
        level["s"] += best
    return {"peak_gflops": matmul_peak((2048,), 3),
            "levels": [{"size": size, "gflop_per_slice": v["gflop"] / opts.batch_size,
                        "ms_per_slice": 1e3 * v["s"] / opts.batch_size, "gflops": v["gflop"] / v["s"]}
                       for size, v in sorted(levels.items(), reverse=True)]}


def _dice(pred: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """Dice per lung (1 right, 2 left) and their mean."""
    try:
        from LungSegLib.evaluation.metrics import dice
    except ImportError:  # an older LungSegLib (PYTHONPATH, flat layout) being compared
        from LungSegLib.metrics import dice
    scores = {name: dice(pred == value, truth == value) for value, name in ((1, "right"), (2, "left"))}
    scores["mean"] = (scores["right"] + scores["left"]) / 2
    return scores


def _network_rate(segmenter, flops: float, batch_size: int, compute_dtype: str) -> Dict[str, float]:
    """The network alone on full batches (best of several): seconds per slice and GFLOP/s."""
    from LungSegLib.core import inference

    extra = () if compute_dtype == "float32" else (compute_dtype,)
    predictor = inference._predictor(segmenter.model, batch_size, *extra)
    spec = segmenter.model.spec
    x = np.random.default_rng(0).random((batch_size, spec.size, spec.size, spec.channels), dtype=np.float32)
    predictor(x)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        predictor(x)
        best = min(best, time.perf_counter() - t)
    return {"s_per_slice": best / batch_size, "gflops": flops * batch_size / best / 1e9}


def worker_run(opts: argparse.Namespace) -> Dict[str, Any]:
    """Warm up, then ``opts.runs`` timed passes of one input through the whole pipeline."""
    import SimpleITK as sitk

    from LungSegLib.api import LungSegmenter
    from LungSegLib.core.imageio import read_ct
    from LungSegLib.core.geometry import Geometry
    from LungSegLib.core.unet import count_flops

    extra = {"compute_dtype": opts.compute_dtype}  # explicit: the library's default is "auto"
    if opts.slice_step_mm is not None:
        extra["slice_step_mm"] = opts.slice_step_mm
    segmenter = LungSegmenter(opts.model, batch_size=opts.batch_size, threads=opts.threads, **extra)
    flops = count_flops(segmenter.model.keras_model)
    image = read_ct(opts.input)
    volume = sitk.GetArrayViewFromImage(image)
    n_slices = volume.shape[0]
    # warm-up: compile the graph and touch every code path on a slab of this volume
    slab = max(1, min(n_slices, 2 * opts.batch_size))
    segmenter.segment_array(np.array(volume[:slab]), Geometry.from_sitk(image))
    del image, volume

    runs = []
    labels = None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lungs.seg.nrrd"
        for i in range(opts.runs):
            tracked = _reset_peak_rss()
            t = time.perf_counter()
            result = segmenter.segment_file(opts.input, out, overwrite=True)
            total = time.perf_counter() - t
            run = {stage: float(result.timings_s.get(stage, 0.0)) for stage in STAGES}
            run["total"] = total
            run["network_slices"] = int(getattr(result, "network_slices", n_slices))  # an older LungSegLib: all
            run["peak_rss_mb"] = _peak_rss_mb() if tracked else None
            runs.append(run)
            if i == opts.runs - 1:  # keep one labelmap for scoring, not one per run in memory
                labels = result.labels
            del result
    answer: Dict[str, Any] = {
        "slices": int(n_slices), "runs": runs, "gflop_per_slice": flops / 1e9,
        "network": _network_rate(segmenter, flops, opts.batch_size, opts.compute_dtype),
        "peak_gflops": matmul_peak((2048,), 3),  # right after the network: under the same load
        "model": str(segmenter.model.path), "model_name": segmenter.model.card.get("name", ""),
    }
    if opts.label:
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(opts.label)))
        answer["dice"] = _dice(labels, truth)
        if opts.bf16:
            res = _segment_bf16(segmenter, read_ct(opts.input), opts)
            answer["bf16"] = {"inference_s": res.timings_s["inference"], "dice": _dice(res.labels, truth),
                              "label_agreement": float((res.labels == labels).mean())}
    return answer


def _segment_bf16(segmenter, image, opts: argparse.Namespace):
    """One warm pass of ``image`` with bfloat16 hidden layers (same model, same settings)."""
    import SimpleITK as sitk

    from LungSegLib.api import LungSegmenter
    from LungSegLib.core.geometry import Geometry

    step = {"slice_step_mm": segmenter.slice_step_mm} if hasattr(segmenter, "slice_step_mm") else {}  # older: none
    bf16 = LungSegmenter(segmenter.model, batch_size=opts.batch_size, threads=opts.threads,
                         compute_dtype="bfloat16", **step)
    volume = sitk.GetArrayViewFromImage(image)
    geometry = Geometry.from_sitk(image)
    bf16.segment_array(np.array(volume[:2 * opts.batch_size]), geometry)  # warm-up
    return bf16.segment_array(volume, geometry)


# --- summary ----------------------------------------------------------------------------------
def summarise(name: str, kind: str, answer: Dict[str, Any], process_peak_mb: float) -> Dict[str, Any]:
    runs = answer["runs"]
    med = {key: statistics.median(r[key] for r in runs) for key in STAGES + ("total",)}
    run_peaks = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]
    gflop = answer["gflop_per_slice"]
    n = answer["slices"]
    row = {
        "input": name, "kind": kind, "slices": n, "runs": len(runs), "median_s": med,
        "slices_per_s": n / med["total"],
        "peak_rss_mb": max(run_peaks) if run_peaks else process_peak_mb,
        "process_peak_rss_mb": process_peak_mb,
        "gflop_per_slice": gflop,
        # the network ran on network_slices of the n slices (the slice step interpolates the others)
        "network_slices": runs[-1].get("network_slices", n),
        "pipeline_gflops": gflop * runs[-1].get("network_slices", n) / med["inference"] if med["inference"] > 0 else None,
        "network_gflops": answer["network"]["gflops"],
        "local_peak_gflops": answer["peak_gflops"],
        "network_peak_fraction": answer["network"]["gflops"] / answer["peak_gflops"],
        "all_runs": runs,
    }
    row["pipeline_peak_fraction"] = (row["pipeline_gflops"] / answer["peak_gflops"]
                                     if row["pipeline_gflops"] is not None else None)
    for key in ("dice", "bf16"):
        if key in answer:
            row[key] = answer[key]
    return row


def markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# LungSeg benchmark",
        "",
        f"- Command: `{report['command']}` ({report['date']}, {report['wall_s']:.0f} s)",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} TensorFlow threads, "
        f"TensorFlow {m['tensorflow']}, Python {m['python']}, NumPy {m['numpy']}",
        f"- Load average (1 min) before / after: {m['load_before']:.2f} / {m['load_after']:.2f} "
        "(anything well above 0 means other work shared the cores)",
        f"- Model: `{report['model']['path']}` ({report['model']['name']}), "
        f"{report['model']['gflop_per_slice']:.2f} GFLOP/slice, batch size {report['batch_size']}",
        f"- float32 matmul peak (tf.linalg.matmul, best of 5 on 1024..3072 squares): "
        f"**{report['matmul_peak_gflops']:.1f} GFLOP/s**; each input's child measures it again (2048², "
        "best of 3) right after timing the network alone, and its \"% peak\" columns use that one, so a "
        "change of load during the run does not skew the ratio",
        f"- Slice step: {report.get('slice_step_mm')} mm (the network runs on slices at most that far apart, the "
        "others are interpolated; \"slices (network)\" counts both; 0: every slice)",
        f"- Median of {report['runs']} run(s) after a warm-up; stage times in seconds; peak RSS from "
        "the OS (VmHWM of the run; max RSS of the child process where that is unavailable).",
        "",
        "| input | slices (network) | read | prep | resample | network | post | write | **total** | slices/s "
        "| peak RSS MB | pipeline GFLOP/s (% peak) | network GFLOP/s (% peak) | Dice R / L |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["inputs"]:
        s = r["median_s"]
        dice = f"{r['dice']['right']:.3f} / {r['dice']['left']:.3f}" if "dice" in r else "–"
        lines.append(
            f"| {r['input']} | {r['slices']} ({r.get('network_slices', r['slices'])}) | {s['read']:.2f} | {s['preprocess']:.2f} | "
            f"{s['resample']:.2f} | {s['inference']:.2f} | {s['postprocess']:.2f} | {s['write']:.2f} | "
            f"**{s['total']:.2f}** | {r['slices_per_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['pipeline_gflops']:.0f} ({100 * r['pipeline_peak_fraction']:.0f}%) | "
            f"{r['network_gflops']:.0f} ({100 * r['network_peak_fraction']:.0f}%) | {dice} |")
    bf16 = [r for r in report["inputs"] if "bf16" in r]
    if bf16:
        lines += ["", "bfloat16 hidden layers (`compute_dtype=\"bfloat16\"`, one run, real cases):", "",
                  "| case | network s (float32 → bf16) | Dice R / L float32 | Dice R / L bf16 | "
                  "voxels agreeing |", "|---|---:|---|---|---:|"]
        for r in bf16:
            d, b = r["dice"], r["bf16"]["dice"]
            lines.append(f"| {r['input']} | {r['median_s']['inference']:.2f} → {r['bf16']['inference_s']:.2f} | "
                         f"{d['right']:.3f} / {d['left']:.3f} | {b['right']:.3f} / {b['left']:.3f} | "
                         f"{100 * r['bf16']['label_agreement']:.3f}% |")
    if report.get("conv_levels"):
        peak = report["conv_levels_peak_gflops"]
        lines += ["", "Where the network's time goes: its 3x3 convolutions alone (fused conv + bias + ReLU, "
                  f"float32, one batch), per resolution; % of the matmul peak measured alongside "
                  f"({peak:.0f} GFLOP/s):", "",
                  "| feature map | GFLOP/slice | ms/slice | GFLOP/s | % of matmul peak |", "|---|---:|---:|---:|---:|"]
        for lv in report["conv_levels"]:
            lines.append(f"| {lv['size']} x {lv['size']} | {lv['gflop_per_slice']:.3f} | {lv['ms_per_slice']:.2f} | "
                         f"{lv['gflops']:.0f} | {100 * lv['gflops'] / peak:.0f}% |")
    target = report.get("target")
    if target:
        default = "bfloat16" if m.get("cpu_flags") and has_bf16_flags(m["cpu_flags"]) else "float32"
        lines += ["", f"## Targets ({TARGET_SLICES}-slice CT, float32 unless said, this machine; LungSeg's default "
                  f"precision, auto, is {default} here)", ""]
        for key, label, fmt in (("total_s", "end to end", "{:.2f} s"), ("peak_rss_mb", "peak RSS", "{:.0f} MB"),
                                ("network_peak_fraction", "U-Net share of the matmul peak", "{:.0%}")):
            t = target[key]
            sign = "≥" if key == "network_peak_fraction" else "≤"
            factor = max(t["value"], t["limit"]) / min(t["value"], t["limit"])
            verdict = "met" if t["met"] else f"**missed** by a factor {factor:.2f}"
            lines.append(f"- {label}: {fmt.format(t['value'])} (target {sign} {fmt.format(t['limit'])}): {verdict}")
        for r in report["inputs"]:
            if r["kind"] == "resliced" and r["slices"] == TARGET_SLICES and r.get("compute_dtype") != "bfloat16":
                lines.append(f"- real anatomy ({r['input']}): end to end {r['median_s']['total']:.2f} s "
                             f"(post-processing {r['median_s']['postprocess']:.2f} s), peak RSS {r['peak_rss_mb']:.0f} MB")
        for r in report["inputs"]:
            if r.get("compute_dtype") == "bfloat16" and r["slices"] == TARGET_SLICES:
                lines.append(f"- with bfloat16 hidden layers ({r['input']}): end to end "
                             f"{r['median_s']['total']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB, network at "
                             f"{r['network_peak_fraction']:.0%} of the float32 matmul peak")
    return "\n".join(lines) + "\n"


def _series(row: Dict[str, Any]) -> str:
    return row["kind"] + (" bf16" if row.get("compute_dtype") == "bfloat16" else "")


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(report["inputs"], key=lambda r: r["slices"])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {"synthetic": "o-", "real": "s", "synthetic bf16": "^", "resliced": "D", "resliced bf16": "v"}
    for kind, marker in series.items():
        sel = [r for r in rows if _series(r) == kind]
        if not sel:
            continue
        n = [r["slices"] for r in sel]
        ax_t.plot(n, [r["median_s"]["total"] for r in sel], marker, label=f"{kind}: total")
        ax_t.plot(n, [r["median_s"]["inference"] for r in sel], marker, alpha=0.5, label=f"{kind}: network")
        ax_m.plot(n, [r["peak_rss_mb"] for r in sel], marker, label=kind)
    ax_t.axhline(TARGETS["total_s"], color="gray", ls=":", label="target (400 slices)")
    ax_m.axhline(TARGETS["peak_rss_mb"], color="gray", ls=":", label="target")
    ax_t.set(xlabel="slices (512 x 512)", ylabel="seconds (median)", title="Time, read to write")
    ax_m.set(xlabel="slices (512 x 512)", ylabel="MB", title="Peak RSS")
    for ax in (ax_t, ax_m):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"LungSeg on {report['machine']['cpu']} ({report['machine']['cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="a model (.npz weights or .keras) with its card (default: the bundled one)")
    p.add_argument("--quick", action="store_true", help="1 run per input, 100 and 400-slice phantoms")
    p.add_argument("--runs", type=int, default=None, help="timed runs per input (default 3; --quick 1)")
    p.add_argument("--sizes", type=int, nargs="*", default=None,
                   help="synthetic slice counts (default 100 400 800; --quick 100 400)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="real cases (default $LUNGSEG_DATA_DIR or <repo>/../shared/data); 'none' skips them")
    p.add_argument("--resliced", type=int, default=None, metavar="N",
                   help="also each real case resampled to N slices (e.g. 400: real anatomy at the target size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--slice-step-mm", type=float, default=None, metavar="MM",
                   help="the network's slice step (default: the library's, SLICE_STEP_MM; 0: every slice)")
    p.add_argument("--threads", type=int, default=None, help="TensorFlow threads (default: all cores)")
    p.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the network's hidden layers (default float32)")
    p.add_argument("--no-bf16", action="store_true",
                   help="skip the bfloat16 comparisons (done by default where the CPU has AVX512_BF16/AMX)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="bench", help="file name stem of the results (default bench)")
    p.add_argument("--worker", choices=("peak", "levels", "run"), help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.runs = opts.runs or (1 if opts.quick else 3)
    if opts.sizes is None:
        opts.sizes = [100, 400] if opts.quick else [100, 400, 800]
    return opts


def _library_slice_step() -> float:
    """The library's default slice step (mm); 0 for an older LungSegLib without one (every slice)."""
    try:
        from LungSegLib.defaults import SLICE_STEP_MM
    except ImportError:
        return 0.0
    return SLICE_STEP_MM


def _common_args(opts: argparse.Namespace) -> List[str]:
    args = ["--batch-size", str(opts.batch_size)]
    if opts.model:
        args += ["--model", str(Path(opts.model).resolve())]
    if opts.threads:
        args += ["--threads", str(opts.threads)]
    if opts.slice_step_mm is not None:
        args += ["--slice-step-mm", str(opts.slice_step_mm)]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_args(argv)
    if opts.worker == "peak":
        print(json.dumps(worker_peak(opts.threads)))
        return 0
    if opts.worker == "levels":
        print(json.dumps(worker_levels(opts)))
        return 0
    if opts.worker == "run":
        print(json.dumps(worker_run(opts)))
        return 0

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    print(f"load average {load_before:.2f}; measuring the matmul peak ...", flush=True)
    peak, _ = run_child(["peak", *_common_args(opts)])
    print(f"  {peak['matmul_peak_gflops']:.1f} GFLOP/s float32", flush=True)
    levels, _ = run_child(["levels", *_common_args(opts)])

    rows = []
    bf16 = has_bf16() and not opts.no_bf16 and opts.compute_dtype == "float32"
    with tempfile.TemporaryDirectory(prefix="lungseg-bench-") as tmp:
        inputs: List[Tuple[str, str, Path, Optional[Path]]] = []
        if str(opts.data_dir) != "none":
            for name, ct, label in real_cases(opts.data_dir or data_dir()):
                inputs.append((name, "real", ct, label))
            if opts.resliced:
                for name, ct, label in real_cases(opts.data_dir or data_dir()):
                    print(f"reslicing {name} to {opts.resliced} slices ...", flush=True)
                    ct_r, label_r = write_resliced(Path(tmp), name, ct, label, opts.resliced)
                    inputs.append((f"{name} resliced to {opts.resliced}", "resliced", ct_r, label_r))
        for n in opts.sizes:
            print(f"writing a {n}-slice phantom ...", flush=True)
            inputs.append((f"synthetic 512x512x{n}", "synthetic", write_synthetic(Path(tmp), n), None))
        jobs = [(name, kind, ct, label, opts.compute_dtype) for name, kind, ct, label in inputs]
        if bf16:  # the target size once more, end to end with bfloat16 hidden layers
            jobs += [(name + " bf16", kind, ct, None, "bfloat16") for name, kind, ct, _ in inputs
                     if (kind == "synthetic" and name.endswith(f"x{TARGET_SLICES}"))
                     or (kind == "resliced" and opts.resliced == TARGET_SLICES)]
        for name, kind, ct, label, dtype in jobs:
            args = ["run", "--input", str(ct), "--runs", str(opts.runs), *_common_args(opts),
                    "--compute-dtype", dtype]
            if label is not None:
                args += ["--label", str(label)] + (["--bf16"] if bf16 and kind == "real" else [])
            answer, process_peak = run_child(args)
            row = summarise(name, kind, answer, process_peak)
            row["compute_dtype"] = dtype
            rows.append(row)
            print(f"  {name}: {row['slices']} slices, total {row['median_s']['total']:.2f} s "
                  f"(network {row['median_s']['inference']:.2f} s), {row['peak_rss_mb']:.0f} MB"
                  + (f", Dice {row['dice']['mean']:.3f}" if "dice" in row else ""), flush=True)

    report: Dict[str, Any] = {
        "command": "python benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": time.perf_counter() - started,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": peak["threads"],
                    "cpu_flags": cpu_flags(), "tensorflow": peak["tensorflow"],
                    "python": platform.python_version(), "numpy": np.__version__,
                    "platform": platform.platform(), "load_before": load_before,
                    "load_after": os.getloadavg()[0]},
        "matmul_peak_gflops": peak["matmul_peak_gflops"],
        "batch_size": opts.batch_size, "runs": opts.runs,
        "slice_step_mm": _library_slice_step() if opts.slice_step_mm is None else opts.slice_step_mm,
        "model": {"path": answer["model"], "name": answer["model_name"],
                  "gflop_per_slice": answer["gflop_per_slice"]},
        "inputs": rows,
        "conv_levels": levels["levels"], "conv_levels_peak_gflops": levels["peak_gflops"],
    }
    at_target = [r for r in rows if r["kind"] == "synthetic" and r["slices"] == TARGET_SLICES]
    if at_target:
        r = at_target[0]
        values = {"total_s": r["median_s"]["total"], "peak_rss_mb": r["peak_rss_mb"],
                  "network_peak_fraction": r["network_peak_fraction"]}
        report["target"] = {
            key: {"value": values[key], "limit": TARGETS[key],
                  "met": values[key] >= TARGETS[key] if key == "network_peak_fraction"
                  else values[key] <= TARGETS[key]} for key in TARGETS}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{opts.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (opts.out / f"{opts.name}.md").write_text(markdown(report))
    try:
        plot(report, opts.out / f"{opts.name}.png")
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written")
    print(markdown(report))
    print(f"wrote {opts.out / opts.name}.{{json,md,png}} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

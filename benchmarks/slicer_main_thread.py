"""What LungSeg's Slicer logic runs on the main (GUI) thread, timed on a 512 x 512 x 400 CT with real MRML
(the ``slicer-core`` wheel), next to what it moved to background threads: the input export before the
worker starts (main: a memory copy; background: the NRRD write), the result import after it ended
(background: read + segments + surfaces + labelmap image; main: inserting them into the scene) for a new
segmentation, with the labelmap node, with Show 3D, into an existing segmentation; and Cancel.

    .venv/bin/python benchmarks/slicer_main_thread.py [--repeat 3] [--json out.json]

No network runs: the worker's output is stood in for by a labelmap file with two lung-shaped ellipsoids
(about 2.3 L each), which is what the import has to digest. Prints a table (median of the repeats, seconds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "LungSeg"), str(REPO / "Testing")]

SHAPE = (400, 512, 512)  # k, j, i
SPACING = (0.75, 0.75, 1.0)  # i, j, k mm


def make_ct(folder: Path) -> Path:
    """A 512 x 512 x 400 int16 CT (HU): body, air outside, two air-filled lungs."""
    import SimpleITK as sitk

    k, j, i = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    body = ((i - 256) / 230.0) ** 2 + ((j - 256) / 170.0) ** 2 <= 1
    ct = np.broadcast_to(np.where(body, np.int16(40), np.int16(-1000)), SHAPE).copy()
    ct[lungs(k, j, i) > 0] = -850
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing(SPACING)
    path = folder / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def lungs(k, j, i) -> np.ndarray:
    """0/1/2 labels of two ellipsoids (right lung at small i = patient right in LPS... as a 0/1/2 map)."""
    out = np.zeros(np.broadcast_shapes(k.shape, j.shape, i.shape), np.uint8)
    for label, ci in ((1, 170), (2, 342)):
        inside = ((i - ci) / 70.0) ** 2 + ((j - 250) / 110.0) ** 2 + ((k - 200) / 160.0) ** 2 <= 1
        out[inside] = label
    return out


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import slicer  # noqa: F401  (the slicer-core wheel)
    from conftest import MRMLApp
    from LungSegLib.worker import write_volume
    from LungSegLogicLib import LungSegLogic, volume_array, volume_ijk_to_ras
    from LungSegLogicLib.result import prepareResult
    from LungSegLib.worker.process import WorkerProcess

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        app = MRMLApp()
        volume = app.load_volume(make_ct(tmp), "CT")
        logic = LungSegLogic()
        logic.scene = app.scene

        # 1. input export: the main thread copies the voxels, the starter thread writes the file
        results["main: input copy (SegmentationTask start)"] = median_time(
            lambda: (volume_ijk_to_ras(volume), np.array(volume_array(volume))), args.repeat)
        results["background: input write (200 MB NRRD)"] = median_time(
            lambda: write_volume(volume_array(volume), volume_ijk_to_ras(volume), tmp / "input.nrrd"), args.repeat)

        # the worker's output
        k, j, i = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
        labelPath = write_volume(lungs(k, j, i), volume_ijk_to_ras(volume), tmp / "lungs.nrrd")

        def task(segmentationNode=None, show3D=False, exportLabelmap=False):
            return types.SimpleNamespace(volumeNode=volume, segmentationNode=segmentationNode, show3D=show3D,
                                         exportLabelmap=exportLabelmap, inputShape=SHAPE,
                                         inputIJKToRAS=volume_ijk_to_ras(volume), doneEvent={}, modelEvent={},
                                         startTime=time.perf_counter())

        def split(name, make_task, cleanup=True):
            """Time the background preparation and the main-thread insertion of one import."""
            prepare_s, insert_s = [], []
            for _ in range(args.repeat):
                t = make_task()
                build, t.show3DNote = logic.surfacePlan(t)
                t0 = time.perf_counter()
                prepared = prepareResult(labelPath, SHAPE, t.inputIJKToRAS, buildSurfaces=build)
                t1 = time.perf_counter()
                outcome = logic.insertResult(t, prepared)
                t2 = time.perf_counter()
                prepare_s.append(t1 - t0)
                insert_s.append(t2 - t1)
                if cleanup:
                    for node in (outcome.segmentationNode, outcome.labelmapNode):
                        if node is not None:
                            app.scene.RemoveNode(node)
            results[f"background: prepare, {name}"] = statistics.median(prepare_s)
            results[f"main: insert, {name}"] = statistics.median(insert_s)

        split("new segmentation", lambda: task())
        split("new segmentation + labelmap node", lambda: task(exportLabelmap=True))
        split("new segmentation + Show 3D", lambda: task(show3D=True))
        existing = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
        existing.CreateDefaultDisplayNodes()
        existing.GetSegmentation().AddEmptySegment("Tumor", "Tumor")
        split("replacing the lungs of an existing segmentation", lambda: task(existing), cleanup=False)

        # 3. Cancel: how long cancel() holds the calling thread (a worker that ignores nothing, sleeping)
        def cancel():
            process = WorkerProcess([sys.executable, "-c", "import time; time.sleep(60)"])
            t0 = time.perf_counter()
            process.cancel()
            elapsed = time.perf_counter() - t0
            process.wait_stopped(10)
            return elapsed

        results["cancel() returns after"] = statistics.median(cancel() for _ in range(max(5, args.repeat)))

    width = max(map(len, results))
    print(f"{'main-thread step, 512x512x400 CT':{width}}  seconds (median of {args.repeat})")
    for name, seconds in results.items():
        print(f"{name:{width}}  {seconds:8.3f}")
    if args.json:
        args.json.write_text(json.dumps({k: round(v, 4) for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

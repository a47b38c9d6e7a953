"""Damaged and non-finite inputs on the shipped sample CT (issue 10, points 3 and 4): what happens.

1. NaN/Inf voxels: the sample (float32) with NaN padding outside a 350 mm field of view, a 10 x 10 NaN/Inf
   patch in every slice, all NaN; lung volumes (mL) and Dice against the clean result and the reference
   label, with the bundled model.
2. Damaged compressed copies of the sample (.nii.gz, gzip NRRD, zlib .mha; a flipped byte, truncation, a
   cut trailer): what SimpleITK alone reads, and what LungSeg's reader says; and the cost of verifying
   the stream of a 512 x 512 x 134 CT (a shared case, when present).

    python benchmarks/damaged_inputs.py          # ~1 min; prints Markdown tables
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LungSegLib.core.geometry import Geometry  # noqa: E402
from LungSegLib.core.imageio import read_ct  # noqa: E402
from LungSegLib.errors import InputError  # noqa: E402
from LungSegLib.evaluation.metrics import dice  # noqa: E402

SAMPLE = REPO / "Resources" / "SampleData"
CT = SAMPLE / "ACRIN-FLT-Breast-001_chest.nrrd"
REFERENCE = SAMPLE / "ACRIN-FLT-Breast-001_lungs-label.nrrd"
BIG = REPO.parent / "shared" / "data" / "cases" / "LUNG1-001" / "ct.nrrd"


def non_finite_table() -> None:
    from LungSegLib.api import LungSegmenter

    image = sitk.ReadImage(str(CT))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(REFERENCE)))
    volume = sitk.GetArrayFromImage(image).astype(np.float32)
    geometry = Geometry.from_sitk(image)
    seg = LungSegmenter()
    clean = seg.segment_array(volume, geometry).labels
    rows, cols = np.indices(volume.shape[1:])
    cy, cx = (volume.shape[1] - 1) / 2, (volume.shape[2] - 1) / 2
    outside = np.hypot((rows - cy) * geometry.spacing[1], (cols - cx) * geometry.spacing[0]) > 175.0

    def changed(fill):
        out = volume.copy()
        fill(out)
        return out

    cases = {
        "clean": volume,
        "NaN outside a 350 mm FOV": changed(lambda v: v.__setitem__((slice(None), outside), np.nan)),
        "10x10 NaN patch per slice, mid-image": changed(lambda v: v.__setitem__(np.s_[:, 123:133, 123:133], np.nan)),
        "10x10 NaN patch per slice, right lung": changed(lambda v: v.__setitem__(np.s_[:, 123:133, 70:80], np.nan)),
        "10x10 +Inf patch per slice, right lung": changed(lambda v: v.__setitem__(np.s_[:, 123:133, 70:80], np.inf)),
        "all NaN": np.full_like(volume, np.nan),
    }
    print("| input | right mL | left mL | Dice vs clean R / L | Dice vs reference R / L | warnings |")
    print("|---|---|---|---|---|---|")
    for name, v in cases.items():
        try:
            r = seg.segment_array(v, geometry)
        except InputError as exc:
            print(f"| {name} | refused (exit 3) | | | | {exc} |")
            continue
        ml = r.volumes_ml()
        print(f"| {name} | {ml['right lung']:.1f} | {ml['left lung']:.1f} | "
              f"{dice(r.labels == 1, clean == 1):.3f} / {dice(r.labels == 2, clean == 2):.3f} | "
              f"{dice(r.labels == 1, ref == 1):.3f} / {dice(r.labels == 2, ref == 2):.3f} | "
              f"{', '.join(w.code for w in r.warnings) or '-'} |")


def _stream_start(name: str, data: bytes) -> int:
    if name.endswith(".nrrd"):
        return data.index(b"\n\n") + 2
    if name.endswith(".mha"):
        return data.index(b"\n", data.index(b"ElementDataFile")) + 1
    return 0


def gzip_table(folder: Path) -> None:
    image = sitk.ReadImage(str(CT))
    ref = sitk.GetArrayFromImage(image)

    def flip(d, s):
        i = s + (len(d) - s) // 2
        return d[:i] + bytes([d[i] ^ 0x5A]) + d[i + 1:]

    damages = {"byte flipped mid-stream": flip, "truncated to 2/3": lambda d, s: d[:s + (len(d) - s) * 2 // 3],
               "last 8 bytes cut": lambda d, s: d[:-8]}
    print("\n| file | damage | SimpleITK alone | LungSeg read_ct |")
    print("|---|---|---|---|")
    for name in ("ct.nii.gz", "ct.nrrd", "ct.mha"):
        good_path = folder / name
        sitk.WriteImage(image, str(good_path), True)
        good = good_path.read_bytes()
        for label, damage in damages.items():
            path = folder / f"bad_{name}"
            path.write_bytes(damage(good, _stream_start(name, good)))
            try:
                wrong = int((sitk.GetArrayFromImage(sitk.ReadImage(str(path))) != ref).any(axis=(1, 2)).sum())
                itk = f"read without error, {wrong}/{ref.shape[0]} slices wrong"
            except RuntimeError:
                itk = "error"
            try:
                read_ct(path)
                ours = "ACCEPTED"
            except InputError as exc:
                ours = "exit 3: " + str(exc).split(" is damaged: ")[-1].split(". ITK")[0]
            print(f"| {name} | {label} | {itk} | {ours} |")
    if BIG.is_file():
        from LungSegLib.core.compressed import verify_compressed_input

        big = sitk.ReadImage(str(BIG))
        path = folder / "big.nii.gz"
        sitk.WriteImage(big, str(path), True)
        t0 = time.perf_counter()
        verify_compressed_input(path)
        t_verify = time.perf_counter() - t0
        t0 = time.perf_counter()
        sitk.ReadImage(str(path))
        t_read = time.perf_counter() - t0
        print(f"\nVerifying {BIG.parent.name} as .nii.gz ({path.stat().st_size / 1e6:.0f} MB compressed, "
              f"{big.GetNumberOfPixels() * 2 / 1e6:.0f} MB of voxels): {t_verify:.2f} s; SimpleITK reading it: "
              f"{t_read:.2f} s (streamed: 1 MiB in, at most 4 MiB out at a time).")


if __name__ == "__main__":
    non_finite_table()
    with tempfile.TemporaryDirectory() as tmp:
        gzip_table(Path(tmp))

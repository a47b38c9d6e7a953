"""NaN/Inf voxels are outside the field of view, never lung (issue 10, point 4), and warnings reach the
user: printed by the CLI, failing ``--strict`` with exit 7, sent by the worker as named findings.

The shipped sample CT (with the bundled model) is modified in memory the way the issue found it broken:
NaN padding outside a 350 mm field of view (was: false lung blobs / lungs lost), a 10 x 10 NaN patch in
every slice (was: both lungs lost: a NaN spreads through the resampling products), an all-NaN volume
(was: passed the HU check). Measured before the fix on this sample: every NaN case gave 0 mL.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.cli import main
from LungSegLib.core.geometry import Geometry
from LungSegLib.errors import InputError
from LungSegLib.evaluation.metrics import dice

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"


@pytest.fixture(scope="module")
def segmenter():
    from LungSegLib.api import LungSegmenter

    return LungSegmenter(batch_size=8)


@pytest.fixture(scope="module")
def sample():
    image = sitk.ReadImage(str(SAMPLE))
    return sitk.GetArrayFromImage(image).astype(np.float32), Geometry.from_sitk(image)


@pytest.fixture(scope="module")
def clean(segmenter, sample):
    volume, geometry = sample
    result = segmenter.segment_array(volume, geometry)
    assert result.warnings == []
    return result.labels


def outside_fov(volume: np.ndarray, geometry: Geometry, diameter_mm: float = 350.0) -> np.ndarray:
    """In-plane mask of the pixels farther than diameter/2 from the slice centre."""
    rows, cols = np.indices(volume.shape[1:])
    cy, cx = (volume.shape[1] - 1) / 2, (volume.shape[2] - 1) / 2
    return np.hypot((rows - cy) * geometry.spacing[1], (cols - cx) * geometry.spacing[0]) > diameter_mm / 2


def nan_padding(volume, geometry):
    out = volume.copy()
    out[:, outside_fov(volume, geometry)] = np.nan
    return out


def patch(value, rows=slice(123, 133), cols=slice(70, 80)):
    def make(volume, geometry):
        out = volume.copy()
        out[:, rows, cols] = value  # 10 x 10 pixels in every slice (cols 70-80: inside the right lung)
        return out
    return make


CASES = {
    "NaN outside a 350 mm field of view": nan_padding,
    "10x10 NaN patch per slice, mid-image": patch(np.nan, cols=slice(123, 133)),
    "10x10 NaN patch per slice, in the right lung": patch(np.nan),
    "10x10 +Inf patch per slice, in the right lung": patch(np.inf),
    "10x10 -Inf patch per slice, corner": patch(-np.inf, rows=slice(0, 10), cols=slice(0, 10)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_non_finite_voxels_are_never_lung_and_the_rest_is_unchanged(segmenter, sample, clean, case):
    volume, geometry = sample
    damaged = CASES[case](volume, geometry)
    bad = ~np.isfinite(damaged)
    result = segmenter.segment_array(damaged, geometry)
    assert not result.labels[bad].any()
    for lung in (1, 2):
        # what the NaN voxels cover is lost; elsewhere the result is the clean one
        assert dice(result.labels == lung, clean == lung) >= 0.97, lung
        assert dice(result.labels[~bad] == lung, clean[~bad] == lung) >= 0.985, lung
    [finding] = [w for w in result.warnings if w.code == "non_finite_voxels"]
    assert f"{int(bad.sum())} voxels" in str(finding)
    assert np.array_equal(~np.isfinite(damaged), bad)  # the input was not modified


def test_all_non_finite_volume_is_refused(segmenter, sample):
    volume, geometry = sample
    for value in (np.nan, np.inf):
        with pytest.raises(InputError, match="NaN or infinite"):
            segmenter.segment_array(np.full_like(volume, value), geometry)


@pytest.fixture(scope="module")
def nan_padded_file(sample, tmp_path_factory):
    volume, geometry = sample
    image = sitk.GetImageFromArray(nan_padding(volume, geometry))
    geometry.apply_to_sitk(image)
    path = tmp_path_factory.mktemp("nan") / "ct_nan.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def test_cli_prints_named_warnings_and_strict_fails_with_exit_7_writing_nothing(nan_padded_file, tmp_path,
                                                                                capsys):
    out = tmp_path / "lungs.seg.nrrd"
    code = main(["segment", str(nan_padded_file), str(out), "--strict"])
    captured = capsys.readouterr()
    assert code == 7
    assert "--strict" in captured.err and "non_finite_voxels" in captured.err
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file
    png = tmp_path / "overview.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "invalid value in cast" from NaN pixels
        code = main(["segment", str(nan_padded_file), str(out), "--overview", str(png)])
    captured = capsys.readouterr()
    assert code == 0 and out.is_file() and png.is_file()
    assert "[non_finite_voxels]" in captured.err and "NaN or infinite" in captured.err
    from PIL import Image

    with Image.open(png) as im:
        corner = np.asarray(im.convert("RGB"))[:5, :5]
    assert not corner.any()  # the NaN padding (corners lie outside the 350 mm circle) is drawn black


def test_cli_strict_writes_a_result_without_warnings(tmp_path, capsys):
    out = tmp_path / "lungs.nrrd"
    assert main(["segment", str(SAMPLE), str(out), "--strict", "--quiet"]) == 0
    assert out.is_file()


def test_worker_sends_warnings_as_named_findings(nan_padded_file, tmp_path):
    out = tmp_path / "lungs.nrrd"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", "LungSegLib.worker", "--input", str(nan_padded_file),
                           "--output", str(out)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    [done] = [e for e in map(json.loads, proc.stdout.splitlines()) if e["event"] == "done"]
    [warning] = done["warnings"]
    assert set(warning) == {"code", "message", "lung"}
    assert warning["code"] == "non_finite_voxels" and warning["lung"] is None
    assert "NaN or infinite" in warning["message"]


def test_reports_of_a_nan_padded_ct_carry_the_finding_and_draw_without_warnings(nan_padded_file, tmp_path,
                                                                              capsys):
    out, report, picture = tmp_path / "lungs.nrrd", tmp_path / "report.json", tmp_path / "report.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no casts of NaN in the report's pictures
        code = main(["segment", str(nan_padded_file), str(out), "--report", str(report), "--report", str(picture),
                     "--quiet"])
    assert code == 0, capsys.readouterr().err
    flags = json.loads(report.read_text())["flags"]
    assert [f["code"] for f in flags] == ["non_finite_voxels"]
    assert picture.stat().st_size > 10_000

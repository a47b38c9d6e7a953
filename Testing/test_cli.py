"""The `lungseg` command: version, `segment` on a real CT, exit codes and messages for refused input and
output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import LungSegLib
from LungSegLib.cli import main
from LungSegLib.core.geometry import Geometry, centroid_lps


def run_cli(args, capsys):
    """Run ``lungseg ARGS`` in this process (TensorFlow and the models stay loaded); return
    (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def lungseg_executable() -> str:
    beside = Path(sys.executable).with_name("lungseg")
    found = str(beside) if beside.exists() else shutil.which("lungseg")
    assert found, "the `lungseg` console script is not installed (pip install -e .)"
    return found


def run_subprocess(args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command in a fresh process (how users run it), its output decoded as UTF-8."""
    return subprocess.run([str(a) for a in args], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


@pytest.fixture(scope="module")
def phantom_ct(chest_phantom, tmp_path_factory):
    """A small phantom CT file (HU, air, two lungs)."""
    shape = (6, 40, 48)
    geometry = chest_phantom.geometry(shape, (7.0, 6.5, 9.0))
    image = sitk.GetImageFromArray(chest_phantom.ct(geometry, shape))
    geometry.apply_to_sitk(image)
    path = tmp_path_factory.mktemp("cli") / "phantom.nrrd"
    sitk.WriteImage(image, str(path))
    return path


# --- version / help -------------------------------------------------------------------------------
def test_console_script_version():
    proc = run_subprocess([lungseg_executable(), "--version"])
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"lungseg {LungSegLib.__version__}"


def test_python_m_version():
    proc = run_subprocess([sys.executable, "-m", "LungSegLib", "--version"])
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"lungseg {LungSegLib.__version__}"


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for line in ("3    bad input", "4    output problem", "5    model problem", "130  cancelled"):
        assert line in out
    for option in ("--model", "--batch-size", "--threads", "--no-postprocess", "--format", "--overwrite",
                   "--quiet", "--no-hu-check", "--overview"):
        assert option in out


def test_no_command_prints_help_and_fails(capsys):
    code, _, err = run_cli([], capsys)
    assert code == 2 and "segment" in err


# --- success ----------------------------------------------------------------------------------------
def test_segment_real_ct_with_the_bundled_model(real_ct_crop, tmp_path):
    out, png = tmp_path / "lungs.seg.nrrd", tmp_path / "overview.png"
    proc = run_subprocess([lungseg_executable(), "segment", real_ct_crop, out, "--overview", png],
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"Wrote {out}" in proc.stdout and "mL" in proc.stdout
    written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(real_ct_crop))
    assert written.GetSize() == original.GetSize()
    assert np.allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-5)
    assert np.allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the bundled (trained) model finds both lungs, each on its side
    labels = sitk.GetArrayFromImage(written)
    geometry = Geometry.from_sitk(written)
    assert (labels == 1).sum() > 1000 and (labels == 2).sum() > 1000
    assert centroid_lps(labels == 1, geometry)[0] < centroid_lps(labels == 2, geometry)[0]


def test_segment_real_ct_puts_the_right_lung_on_the_patients_right(real_ct_crop, oracle_model_path, tmp_path,
                                                                   capsys):
    out, png = tmp_path / "lungs.nii.gz", tmp_path / "overview.png"
    code, stdout, err = run_cli(["segment", real_ct_crop, out, "--model", oracle_model_path,
                                 "--batch-size", 5, "--threads", 2, "--overview", png], capsys)
    assert code == 0, err
    assert f"Wrote {png}" in stdout
    labels_image = sitk.ReadImage(str(out))
    labels = sitk.GetArrayFromImage(labels_image)
    geometry = Geometry.from_sitk(labels_image)
    assert (labels == 1).sum() > 1000 and (labels == 2).sum() > 1000
    assert centroid_lps(labels == 1, geometry)[0] < centroid_lps(labels == 2, geometry)[0]
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_segment_a_dicom_folder(chest_phantom, oracle_model_path, write_series, tmp_path, capsys):
    shape = (6, 40, 48)
    geometry = chest_phantom.geometry(shape, (7.0, 6.5, 9.0))
    write_series(tmp_path / "dicom", chest_phantom.ct(geometry, shape), "1.2.826.0.1.3680043.2.1125.5.1",
                 spacing=geometry.spacing, origin=geometry.origin)
    out = tmp_path / "lungs.seg.nrrd"
    code, _, err = run_cli(["segment", tmp_path / "dicom", out, "--model", oracle_model_path, "--quiet"],
                           capsys)
    assert code == 0, err
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == shape[::-1]
    assert np.allclose(written.GetSpacing(), geometry.spacing, atol=1e-4)
    assert np.allclose(written.GetOrigin(), geometry.origin, atol=1e-3)
    labels = sitk.GetArrayFromImage(written)
    lps = Geometry.from_sitk(written)
    assert centroid_lps(labels == 1, lps)[0] < chest_phantom.center[0] < centroid_lps(labels == 2, lps)[0]


@pytest.mark.parametrize("precision", ["bfloat16", "auto", None])
def test_precision_option_keeps_the_labels(phantom_ct, oracle_model_path, tmp_path, capsys, precision):
    reference, out = tmp_path / "f32.nrrd", tmp_path / "other.nrrd"
    base = ["segment", phantom_ct, "--model", oracle_model_path, "--quiet"]
    assert run_cli(base[:2] + [reference] + base[2:] + ["--precision", "float32"], capsys)[0] == 0
    code, _, err = run_cli(base[:2] + [out] + base[2:] + ([] if precision is None else ["--precision", precision]),
                           capsys)
    assert code == 0, err
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (reference, out))
    assert (a > 0).sum() > 100
    assert np.mean(a == b) > 0.99


@pytest.mark.parametrize("native", [True, False])
def test_default_precision_is_bfloat16_only_where_the_cpu_has_it(phantom_ct, oracle_model_path, tmp_path, capsys,
                                                                 monkeypatch, native):
    """The default (auto) resolves per CPU, and the JSON report says which arithmetic ran."""
    from LungSegLib.core import inference

    monkeypatch.setattr(inference, "native_bfloat16", lambda: native)
    report = tmp_path / "report.json"
    code, _, err = run_cli(["segment", phantom_ct, tmp_path / "x.nrrd", "--model", oracle_model_path, "--quiet",
                            "--report", report], capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["precision"] == ("bfloat16" if native else "float32")


def test_unknown_precision_is_a_usage_error(phantom_ct, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(phantom_ct), str(tmp_path / "x.nrrd"), "--precision", "int4"])
    assert exc.value.code == 2


@pytest.mark.parametrize("name, fmt, magic", [("lungs.nrrd", None, b"NRRD"),
                                              ("lungs.mha", None, b"ObjectType"),
                                              ("lungs.nii", "nii", b"\x5c\x01\x00\x00")])  # NIfTI-1: 348
def test_segment_writes_the_requested_format(phantom_ct, oracle_model_path, tmp_path, capsys,
                                             name, fmt, magic):
    out = tmp_path / name
    args = ["segment", phantom_ct, out, "--model", oracle_model_path, "--quiet", "--no-postprocess"]
    if fmt:
        args += ["--format", fmt]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert stdout == "" and err == ""  # --quiet
    assert out.read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --- refused input: exit code 3 -----------------------------------------------------------------------
def _write(path: Path, image: sitk.Image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _bad_input(kind: str, folder: Path, write_series) -> Path:
    if kind == "missing":
        return folder / "missing.nrrd"
    if kind == "empty":
        (folder / "empty.nii.gz").touch()
        return folder / "empty.nii.gz"
    if kind == "2d":
        return _write(folder / "slice.nrrd", sitk.Image(32, 32, sitk.sitkInt16))
    if kind == "rgb":
        return _write(folder / "rgb.mha", sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3))
    if kind == "4d":
        return _write(folder / "dynamic.nii.gz",
                      sitk.GetImageFromArray(np.zeros((2, 4, 8, 8), np.int16), isVector=False))
    if kind == "mr file":
        image = sitk.GetImageFromArray(np.full((4, 8, 8), 300, np.int16))
        image.SetMetaData("0008|0060", "MR")
        return _write(folder / "mr.nrrd", image)
    if kind == "mr series":
        write_series(folder / "mr_series", np.full((3, 8, 8), 200, np.int16),
                     "1.2.826.0.1.3680043.2.1125.7.1", modality="MR", intercept=0)
        return folder / "mr_series"
    if kind == "no dicom":
        (folder / "docs").mkdir()
        (folder / "docs" / "notes.txt").write_text("nothing")
        return folder / "docs"
    if kind == "not hu":
        rng = np.random.default_rng(0)
        raw = rng.integers(0, 4096, (4, 16, 16)).astype(np.uint16)  # stored values, intercept missing
        return _write(folder / "raw.nrrd", sitk.GetImageFromArray(raw))
    raise ValueError(kind)


@pytest.mark.parametrize("kind, message", [
    ("missing", "Input not found"),
    ("empty", "empty file"),
    ("2d", "2-D image"),
    ("rgb", "RGB or vector"),
    ("4d", "4-D"),
    ("mr file", "MR image, not CT"),
    ("mr series", "no CT series"),
    ("no dicom", "without a DICOM image series"),
    ("not hu", "rescale intercept"),
])
def test_refused_input_exits_3_with_a_clear_message(oracle_model_path, write_series, tmp_path, capsys,
                                                    kind, message):
    source = _bad_input(kind, tmp_path, write_series)
    out = tmp_path / "out" / "lungs.seg.nrrd"
    code, _, err = run_cli(["segment", source, out, "--model", oracle_model_path], capsys)
    assert code == 3
    assert err.startswith("lungseg: error: ") and message in err
    assert not out.exists()


def test_no_hu_check_overrides_the_refusal(oracle_model_path, tmp_path, capsys):
    source = _bad_input("not hu", tmp_path, None)
    code, _, err = run_cli(["segment", source, tmp_path / "lungs.nrrd", "--model", oracle_model_path,
                            "--no-hu-check", "--quiet"], capsys)
    assert code == 0, err
    assert (tmp_path / "lungs.nrrd").is_file()


# --- refused output: exit code 4 ----------------------------------------------------------------------
def test_existing_output_exits_4_and_is_untouched(phantom_ct, oracle_model_path, tmp_path, capsys):
    out = tmp_path / "lungs.seg.nrrd"
    out.write_bytes(b"keep me")
    code, _, err = run_cli(["segment", phantom_ct, out, "--model", oracle_model_path], capsys)
    assert code == 4 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"keep me"
    code, _, err = run_cli(["segment", phantom_ct, out, "--model", oracle_model_path, "--overwrite",
                            "--quiet"], capsys)
    assert code == 0, err
    assert sitk.ReadImage(str(out)).GetSize() == sitk.ReadImage(str(phantom_ct)).GetSize()


def test_existing_overview_exits_4_and_is_untouched(phantom_ct, oracle_model_path, tmp_path, capsys):
    out, png = tmp_path / "lungs.nrrd", tmp_path / "overview.png"
    png.write_bytes(b"old picture")
    code, _, err = run_cli(["segment", phantom_ct, out, "--model", oracle_model_path, "--overview", png],
                           capsys)
    assert code == 4 and "overview.png" in err
    assert png.read_bytes() == b"old picture" and not out.exists()


def test_overview_goes_into_new_folders_and_a_bad_place_exits_4(phantom_ct, oracle_model_path, tmp_path,
                                                                 capsys):
    png = tmp_path / "new" / "folder" / "overview.png"
    code, _, err = run_cli(["segment", phantom_ct, tmp_path / "a.nrrd", "--model", oracle_model_path,
                            "--overview", png, "--quiet"], capsys)
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run_cli(["segment", phantom_ct, tmp_path / "b.nrrd", "--model", oracle_model_path,
                            "--overview", tmp_path / "file" / "overview.png", "--quiet"], capsys)
    assert code == 4 and "overview" in err


@pytest.mark.parametrize("name", ["lungs.png", "lungs"])
def test_unknown_output_extension_exits_4(phantom_ct, oracle_model_path, tmp_path, capsys, name):
    code, _, err = run_cli(["segment", phantom_ct, tmp_path / name, "--model", oracle_model_path], capsys)
    assert code == 4 and "Cannot tell the output format" in err
    assert list(tmp_path.iterdir()) == []


def test_output_replacing_the_input_exits_4(phantom_ct, oracle_model_path, tmp_path, capsys):
    source = tmp_path / "ct.nrrd"
    shutil.copy(phantom_ct, source)
    before = source.read_bytes()
    code, _, err = run_cli(["segment", source, source, "--model", oracle_model_path, "--overwrite"], capsys)
    assert code == 4 and "replace the input" in err
    assert source.read_bytes() == before


# --- model problems: exit code 5; usage: exit code 2 ----------------------------------------------------
def test_missing_model_exits_5(sample_ct_crop, tmp_path, capsys):
    # a valid input: the input is checked before the model loads
    code, _, err = run_cli(["segment", sample_ct_crop, tmp_path / "l.nrrd", "--model", tmp_path / "none.keras"],
                           capsys)
    assert code == 5 and "Model file not found" in err


def test_model_with_wrong_checksum_exits_5(phantom_ct, oracle_model_path, tmp_path, capsys):
    model = tmp_path / "oracle.keras"
    shutil.copy(oracle_model_path, model)
    card = json.loads(oracle_model_path.with_suffix(".json").read_text())
    card["sha256"] = "0" * 64
    model.with_suffix(".json").write_text(json.dumps(card))
    code, _, err = run_cli(["segment", phantom_ct, tmp_path / "l.nrrd", "--model", model], capsys)
    assert code == 5 and "Checksum mismatch" in err
    assert not (tmp_path / "l.nrrd").exists()


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--threads", "-1"], ["--format", "png"]])
def test_bad_option_values_are_usage_errors(phantom_ct, tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(phantom_ct), str(tmp_path / "l.nrrd")] + option)
    assert exc.value.code == 2
    assert option[0] in capsys.readouterr().err

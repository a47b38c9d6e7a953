"""The worker process on its own: JSON progress protocol, exit codes, cancel and kill leave no output."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib import worker
from LungSegLib.worker import run as worker_run

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"


def _env(extra_path: str = "") -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_worker(*args: str, extra_path: str = "", timeout: float = 300):
    """Run the worker to completion: (exit code, events, stdout lines, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "LungSegLib.worker", *args], capture_output=True, text=True,
                          env=_env(extra_path), timeout=timeout, cwd=str(REPO))
    lines = proc.stdout.splitlines()
    return proc.returncode, [json.loads(line) for line in lines], lines, proc.stderr


def test_progress_lines_are_json_and_monotonic_and_output_matches_library(sample_ct_crop, oracle_model_path,
                                                                         oracle_model, tmp_path):
    out = tmp_path / "lungs.nrrd"
    code, events, lines, stderr = run_worker("--input", str(sample_ct_crop), "--output", str(out),
                                             "--model", str(oracle_model_path), "--batch-size", "5")
    assert code == 0, stderr
    assert all(worker.parse_event(line) is not None for line in lines)  # every stdout line is an event
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    progress = [(e["done"], e["total"]) for e in events if e["event"] == "progress"]
    dones = [d for d, _ in progress]
    assert dones == sorted(dones) and len(set(dones)) == len(dones)
    assert progress == [(5, 8), (8, 8)]  # 8 slices in batches of 5
    model = next(e for e in events if e["event"] == "model")
    assert model["name"] == "oracle" and model["device"] in ("cpu", "gpu")
    done = events[-1]
    assert Path(done["output"]) == out and out.is_file()
    assert done["volumes_ml"]["right lung"] > 0 and done["volumes_ml"]["left lung"] > 0
    assert set(done["timings_s"]) >= {"inference", "read", "write"}

    from LungSegLib.api import LungSegmenter

    expected = LungSegmenter(oracle_model, batch_size=5).segment(sitk.ReadImage(str(sample_ct_crop)))
    written = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected))
    assert written.GetOrigin() == pytest.approx(expected.GetOrigin())
    voxel_ml = np.prod(written.GetSpacing()) / 1000
    assert done["volumes_ml"]["left lung"] == pytest.approx((sitk.GetArrayFromImage(written) == 2).sum() * voxel_ml)


@pytest.mark.parametrize("case, code, error_type", [
    ("missing input", 3, "InputError"),
    ("output exists", 4, "OutputError"),
    ("bad model", 5, "ModelError"),
])
def test_failures_report_an_error_event_and_their_exit_code(case, code, error_type, sample_ct_crop, tmp_path):
    out = tmp_path / "lungs.nrrd"
    args = ["--input", str(sample_ct_crop), "--output", str(out)]
    if case == "missing input":
        args[1] = str(tmp_path / "nowhere.nrrd")
    elif case == "output exists":
        out.write_bytes(b"keep me")
    else:
        args += ["--model", str(tmp_path / "missing.keras")]
    got, events, _, _ = run_worker(*args)
    assert got == code
    error = events[-1]
    assert error["event"] == "error" and error["type"] == error_type and error["exit_code"] == code
    assert error["message"]
    if case == "output exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    assert isinstance(worker.error_from_event(error), getattr(__import__("LungSegLib.errors").errors, error_type))


def test_missing_tensorflow_is_reported_as_a_dependency_error(sample_ct_crop, tmp_path):
    broken = tmp_path / "site"
    (broken / "tensorflow").mkdir(parents=True)
    (broken / "tensorflow" / "__init__.py").write_text("raise ImportError('No module named tensorflow')\n")
    out = tmp_path / "lungs.nrrd"
    code, events, _, _ = run_worker("--input", str(sample_ct_crop), "--output", str(out), extra_path=str(broken))
    assert code == 6
    assert events[-1]["type"] == "DependencyError" and "TensorFlow" in events[-1]["message"]
    assert not out.exists()


def test_usage_error_exits_2(tmp_path):
    code, events, _, stderr = run_worker("--input", "x.nrrd", "--output", str(tmp_path / "y.nrrd"),
                                         "--batch-size", "0")
    assert code == 2 and events == [] and "batch-size" in stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_mid_run_leaves_no_output(sig, tmp_path):
    """48 slices in batches of one with the bundled 256-px model: stopped after the first batch."""
    if not SAMPLE_CT.is_file():
        pytest.skip("sample CT not shipped")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "lungs.nrrd"
    proc = subprocess.Popen([sys.executable, "-m", "LungSegLib.worker", "--input", str(SAMPLE_CT),
                             "--output", str(out), "--batch-size", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(), cwd=str(REPO))
    try:
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "progress":
                proc.send_signal(sig)
                break
        rest = [json.loads(line) for line in proc.stdout]
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events[-1]["event"] == "progress" and events[-1]["done"] < events[-1]["total"]
    if sig == signal.SIGTERM:
        assert code == 130
        assert rest[-1]["event"] == "error" and rest[-1]["type"] == "Cancelled"
        assert not any(e["event"] == "done" for e in rest)
    else:
        assert code == -signal.SIGKILL
    assert list(out_dir.iterdir()) == []  # no output, no temporary file


def test_exit_codes_are_documented():
    documented = {int(c) for c in re.findall(r"^\s+(\d+)\s", worker.EXIT_CODES, re.M)}
    produced = {cls.exit_code for cls in worker.ERROR_TYPES.values()} | {0, 1, 2}
    assert produced <= documented
    assert worker.EXIT_CODES in worker_run.build_parser().format_help()


def test_command_line_round_trip():
    argv = worker.worker_command("py", "in.nrrd", "out.nrrd", model="m.keras", batch_size=3, threads=2,
                                 device="cpu", postprocess=False, check_hu=False)
    assert argv[:3] == ["py", "-m", "LungSegLib.worker"]
    args = worker_run.build_parser().parse_args(argv[3:])
    assert (args.input, args.output, args.model, args.batch_size, args.threads, args.device) == \
        ("in.nrrd", "out.nrrd", "m.keras", 3, 2, "cpu")
    assert args.no_postprocess and args.no_hu_check
    with pytest.raises(ValueError):
        worker.worker_command("py", "a", "b", device="tpu")


def test_parse_event_ignores_other_lines():
    assert worker.parse_event('{"event": "progress", "done": 1, "total": 2}') == \
        {"event": "progress", "done": 1, "total": 2}
    assert worker.parse_event("Loading...") is None
    assert worker.parse_event("[1, 2]") is None
    assert worker.parse_event('{"done": 1}') is None


def test_volume_file_round_trip_keeps_slicer_geometry(tmp_path):
    """write_volume/read_labelmap carry Slicer's IJK-to-RAS exactly (oblique, flipped axes)."""
    angle = np.radians(20)
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, -1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rot * np.array([0.7, 0.9, 2.5])
    ijk_to_ras[:3, 3] = (12.5, -40.0, 100.0)
    labels = np.random.default_rng(0).integers(0, 3, (4, 5, 6)).astype(np.uint8)
    path = worker.write_volume(labels, ijk_to_ras, tmp_path / "v.nrrd")
    assert [p.name for p in tmp_path.iterdir()] == ["v.nrrd"]
    back, matrix = worker.read_labelmap(path)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(matrix, ijk_to_ras, atol=1e-6)
    ct = np.arange(120, dtype=np.int16).reshape(4, 5, 6) - 1000
    worker.write_volume(ct, ijk_to_ras, tmp_path / "ct.nrrd")
    image = sitk.ReadImage(str(tmp_path / "ct.nrrd"))
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct)

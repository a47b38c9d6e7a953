"""``lungseg batch``: discovery in nested folders (DICOM series split over folders, volume files), a
corrupt series in the middle, resuming (in process and after a real SIGKILL), shards and their merge."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("pydicom")

from dicom_ct import _pydicom3, small_ct, write_ct_series  # noqa: E402

from LungSegLib.batch import (BatchConfig, find_inputs, marker_path, merge_summaries, parse_shard,  # noqa: E402
                              read_summary, run_batch, shard, threads_per_job)
from LungSegLib.cli import main  # noqa: E402
from LungSegLib.errors import UsageError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"
SERIES_UID = "1.2.826.0.1.3680043.10.1042.2.{}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """INPUT_ROOT with five CTs (128 x 128 x 6 crops of the shipped sample CT) and clutter::

        site1/p01/ct.nrrd                      volume file
        site1/p02/dicom/{part1,part2}/         one DICOM series split over two folders (same CT as p01)
        site1/p03/                             a DICOM series with truncated pixel data (corrupt)
        site2/p04/ct.nii.gz                    volume file (other slices)
        site2/p05/                             DICOM series (other slices)
        site2/notes.txt, site2/p04/old.seg.nrrd  not CTs
    """
    if not SAMPLE_CT.is_file():
        pytest.skip(f"sample CT not shipped: {SAMPLE_CT}")
    root = tmp_path_factory.mktemp("batch") / "in"
    upper = small_ct(SAMPLE_CT, shrink=(2, 2, 1), slices=slice(20, 26))
    lower = small_ct(SAMPLE_CT, shrink=(2, 2, 1), slices=slice(8, 14))
    (root / "site1" / "p01").mkdir(parents=True)
    sitk.WriteImage(upper, str(root / "site1" / "p01" / "ct.nrrd"))
    files = write_ct_series(upper, root / "site1" / "p02" / "dicom" / "part1", series=11)
    (root / "site1" / "p02" / "dicom" / "part2").mkdir()
    for f in files[::2]:
        shutil.move(str(f), str(root / "site1" / "p02" / "dicom" / "part2" / f.name))
    for f in write_ct_series(lower, root / "site1" / "p03", series=12):
        f.write_bytes(f.read_bytes()[:-3000])  # pixel data cut short: the header still says 128 x 128
    (root / "site2" / "p04").mkdir(parents=True)
    sitk.WriteImage(lower, str(root / "site2" / "p04" / "ct.nii.gz"))
    sitk.WriteImage(sitk.Cast(upper > 0, sitk.sitkUInt8), str(root / "site2" / "p04" / "old.seg.nrrd"))
    write_ct_series(lower, root / "site2" / "p05", series=13)
    _write_rtstruct(root / "site2" / "p05" / "RS.dcm")  # a DICOM file that is not an image: not an input
    (root / "site2" / "notes.txt").write_text("not a CT\n")
    return root


def _write_rtstruct(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1042.9.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1042.9"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1042.1.1"
    if _pydicom3():
        ds.save_as(str(path), enforce_file_format=True)
    else:
        ds.save_as(str(path), write_like_original=False)


EXPECTED_KEYS = ["site1/p01/ct.nrrd", f"site1/p02/dicom#{SERIES_UID.format(11)}", "site1/p03#unreadable", "site2/p04/ct.nii.gz", f"site2/p05#{SERIES_UID.format(13)}"]


def outputs_of(root: Path) -> dict:
    """``{relative path: labels array}`` of the visible labelmaps under an output root."""
    return {p.relative_to(root).as_posix(): sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted(root.rglob("*.seg.nrrd")) if not p.name.startswith(".")}


def temp_files(root: Path) -> list:
    return [p for p in root.rglob(".*") if p.is_file()]


@pytest.fixture(scope="module")
def reference(tree, oracle_model, tmp_path_factory):
    """One uninterrupted in-process run over the tree: (output root, outcome)."""
    from LungSegLib.api import LungSegmenter

    out = tmp_path_factory.mktemp("reference") / "out"
    outcome = run_batch(tree, out, BatchConfig(str(out)), segmenter=LungSegmenter(oracle_model))
    return out, outcome


def test_finds_series_across_folders_and_volume_files(tree):
    items = find_inputs(tree)
    assert [item.key for item in items] == EXPECTED_KEYS
    split = items[1]
    assert split.kind == "dicom" and len(split.files) == 6 and split.series_uid == SERIES_UID.format(11)
    assert {Path(f).parent.name for f in split.files} == {"part1", "part2"}
    assert split.output == f"site1/p02/dicom/{SERIES_UID.format(11)}"
    assert items[0].kind == "file" and items[0].output == "site1/p01/ct"
    assert [item.key for item in find_inputs(tree, include=["*.nii.gz"])] == [
        k for k in EXPECTED_KEYS if not k.endswith(".nrrd")]


def test_output_root_inside_the_input_root_is_not_searched(tree, tmp_path):
    inside = tree / "site2" / "results"
    try:
        inside.mkdir()
        shutil.copy(tree / "site1" / "p01" / "ct.nrrd", inside / "copy.nrrd")
        assert "site2/results/copy.nrrd" in [i.key for i in find_inputs(tree)]
        assert [i.key for i in find_inputs(tree, exclude=[inside])] == EXPECTED_KEYS
    finally:
        shutil.rmtree(inside)
    with pytest.raises(UsageError, match="contains"):
        run_batch(tree, tree, BatchConfig(str(tree)))


def test_batch_goes_on_past_a_corrupt_series(reference):
    out, outcome = reference
    assert [row.input for row in outcome.rows] == EXPECTED_KEYS
    status = {row.input: row for row in outcome.rows}
    assert [row.status for row in outcome.rows] == ["done", "done", "failed", "done", "done"]
    assert status[EXPECTED_KEYS[2]].error  # the reason is recorded
    labels = outputs_of(out)
    assert sorted(labels) == sorted([
        "site1/p01/ct.seg.nrrd", f"site1/p02/dicom/{SERIES_UID.format(11)}.seg.nrrd",
        "site2/p04/ct.seg.nrrd", f"site2/p05/{SERIES_UID.format(13)}.seg.nrrd"])
    # the DICOM copy of a CT (split over two folders) segments exactly like its volume file
    np.testing.assert_array_equal(labels["site1/p01/ct.seg.nrrd"],
                                  labels[f"site1/p02/dicom/{SERIES_UID.format(11)}.seg.nrrd"])
    np.testing.assert_array_equal(labels["site2/p04/ct.seg.nrrd"],
                                  labels[f"site2/p05/{SERIES_UID.format(13)}.seg.nrrd"])
    assert all(np.isin(a, [0, 1, 2]).all() and (a == 1).any() and (a == 2).any() for a in labels.values())
    rows = read_summary(out / "summary.csv")
    assert [r.status for r in rows] == [r.status for r in outcome.rows]
    assert float(rows[0].right_lung_ml) > 0 and float(rows[0].seconds) >= 0
    assert temp_files(out) == []


def test_second_run_skips_complete_outputs_and_redoes_incomplete_ones(tree, reference, oracle_model,
                                                                      oracle_model_path, tmp_path):
    from LungSegLib.api import LungSegmenter

    ref, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    first = out / "site1" / "p01" / "ct.seg.nrrd"
    fourth = out / "site2" / "p04" / "ct.seg.nrrd"
    marker_path(first).unlink()                        # killed between the rename and the marker
    fourth.write_bytes(fourth.read_bytes()[:-10])      # changed after its marker was written
    untouched = out / "site2" / "p05" / f"{SERIES_UID.format(13)}.seg.nrrd"
    mtime = untouched.stat().st_mtime_ns
    # the probe file of a run killed while it checked this folder's output (the folder's only output is done,
    # so nothing of this run writes there)
    from LungSegLib.core.atomic import _HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    probe = untouched.with_name(f".{untouched.name}.lungseg-{_HOST}-{int(dead.stdout)}.tmp.probe")
    probe.write_bytes(b"")
    outcome = run_batch(tree, out, BatchConfig(str(out)), segmenter=LungSegmenter(oracle_model))
    assert [r.status for r in outcome.rows] == ["done", "already done", "failed", "done", "already done"]
    assert untouched.stat().st_mtime_ns == mtime
    assert not probe.exists() and temp_files(out) == []
    # --strict: the batch's exit code says that a CT failed (the corrupt series, tried again)
    assert main(["batch", str(tree), str(out), "--model", str(oracle_model_path), "--quiet", "--strict"]) == 3
    assert untouched.stat().st_mtime_ns == mtime
    assert first.exists() and marker_path(first).exists()
    assert outputs_of(out).keys() == outputs_of(ref).keys()
    for name, labels in outputs_of(out).items():
        np.testing.assert_array_equal(labels, outputs_of(ref)[name])


def test_two_shards_merged_equal_one_run(tree, reference, oracle_model, tmp_path):
    from LungSegLib.api import LungSegmenter

    ref, ref_outcome = reference
    items = find_inputs(tree)
    parts = [shard(items, i, 2) for i in range(2)]
    assert sorted(i.key for part in parts for i in part) == EXPECTED_KEYS
    assert not {i.key for i in parts[0]} & {i.key for i in parts[1]}
    assert shard(list(reversed(items)), 1, 2) == parts[1]  # deterministic whatever the discovery order
    out = tmp_path / "out"
    segmenter = LungSegmenter(oracle_model)
    for i in range(2):
        outcome = run_batch(tree, out, BatchConfig(str(out)), shard_spec=(i, 2), segmenter=segmenter)
        assert outcome.summary.name == f"summary.shard-{i}-of-2.csv"
        assert [r.input for r in outcome.rows] == [item.key for item in parts[i]]
    summary, rows = merge_summaries(tree, out)
    assert summary == out / "summary.csv"
    assert [(r.input, r.status) for r in read_summary(summary)] == [(r.input, r.status) for r in ref_outcome.rows]
    merged = outputs_of(out)
    assert merged.keys() == outputs_of(ref).keys()
    for name, labels in merged.items():
        np.testing.assert_array_equal(labels, outputs_of(ref)[name])


def test_merge_lists_inputs_no_shard_ran(tree, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / "summary.shard-0-of-2.csv", "w", newline="") as f:
        f.write("input,kind,series_uid,output,status,right_lung_ml,left_lung_ml,warnings,seconds,error\n"
                "site1/p01/ct.nrrd,file,,site1/p01/ct.seg.nrrd,done,1,2,,0.1,\n")
    code = main(["batch", str(tree), str(out), "--merge"])
    assert code == 3  # four CTs were never run
    rows = read_summary(out / "summary.csv")
    assert [r.status for r in rows] == ["done"] + ["not run"] * 4
    assert "4 not run" in capsys.readouterr().out


def test_usage_errors(tree, tmp_path, capsys):
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)
    assert main(["batch", str(tree), str(tmp_path / "o"), "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert threads_per_job(2, cores=16) == 8 and threads_per_job(3, cores=2) == 1


def test_dicom_seg_batch_refuses_volume_files(tree, oracle_model, tmp_path):
    pytest.importorskip("highdicom")
    import pydicom

    from LungSegLib.api import LungSegmenter

    out = tmp_path / "out"
    outcome = run_batch(tree, out, BatchConfig(str(out), fmt="dcm"),
                        segmenter=LungSegmenter(oracle_model))
    assert [r.status for r in outcome.rows] == ["failed", "done", "failed", "failed", "done"]
    assert "volume file" in outcome.rows[0].error
    seg = pydicom.dcmread(out / "site2" / "p05" / f"{SERIES_UID.format(13)}.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID.format(13)


def test_report_per_ct(tree, oracle_model, tmp_path):
    import json

    from LungSegLib.api import LungSegmenter

    out = tmp_path / "out"
    outcome = run_batch(tree, out, BatchConfig(str(out), report=True), include=["ct.nrrd"],
                        segmenter=LungSegmenter(oracle_model, review=True))
    assert [r.input for r in outcome.rows] == [k for k in EXPECTED_KEYS if k != "site2/p04/ct.nii.gz"]
    for row in outcome.rows:
        if row.status == "done":
            report = json.loads((out / (row.output + ".report.json")).read_text())
            assert report["volumes_ml"]["right lung"] == pytest.approx(float(row.right_lung_ml), abs=0.06)


def _batch_command(tree: Path, out: Path, model: Path, *extra: str) -> list:
    return [sys.executable, "-m", "LungSegLib", "batch", str(tree), str(out), "--model", str(model),
            "--quiet", *extra]


def test_killed_batch_resumes_to_the_same_outputs(tree, reference, oracle_model_path, tmp_path):
    """A real `lungseg batch` process stopped with SIGTERM after its first CT, run again and killed with
    SIGKILL after one more, then run a third time (with two worker processes): no half-written output at any
    time, and the end result equals one clean run byte for byte."""
    ref, ref_outcome = reference
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))

    def start_and_stop(sig: int, markers: int):
        """Start the batch, send ``sig`` once ``markers`` outputs are complete: (exit code, stderr)."""
        proc = subprocess.Popen(_batch_command(tree, out, oracle_model_path, "--threads", "1"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        try:
            while len(list(out.rglob("*.lungseg.json"))) < markers and proc.poll() is None:
                assert time.monotonic() < deadline, "the batch wrote no output in 300 s"
                time.sleep(0.01)
        finally:
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
        return proc.returncode, err

    # SIGTERM (a scheduler's stop; Ctrl-C alike) after the first CT: exit 130, the CTs done are kept
    code, err = start_and_stop(signal.SIGTERM, 1)
    assert code == 130, err[-2000:]
    assert "Run the same command again" in err
    assert 1 <= len(list(out.rglob("*.lungseg.json"))) < 4
    # SIGKILL (nothing runs on the way out) after one more CT
    code, err = start_and_stop(signal.SIGKILL, len(list(out.rglob("*.lungseg.json"))) + 1)
    assert code == -signal.SIGKILL, err[-2000:]
    done_before = list(out.rglob("*.lungseg.json"))  # markers: written after each complete output
    assert 2 <= len(done_before) < 4, "the kill should land in the middle of the batch"
    for name in outputs_of(out):  # whatever was visible after the kill is a complete image
        assert sitk.ReadImage(str(out / name)).GetSize() == (128, 128, 6)
    resumed = subprocess.run(_batch_command(tree, out, oracle_model_path, "--jobs", "2", "--pin-cores"), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # the corrupt series fails: a result, not an error
    rows = read_summary(out / "summary.csv")
    assert [r.input for r in rows] == EXPECTED_KEYS
    assert sum(r.status == "already done" for r in rows) >= len(done_before)
    assert [r.status != "failed" for r in rows] == [r.status != "failed" for r in ref_outcome.rows]
    final, expected = outputs_of(out), outputs_of(ref)
    assert final.keys() == expected.keys()
    for name in final:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert temp_files(out) == []


def test_summary_is_plain_csv(reference):
    out, _ = reference
    with open(out / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["input", "kind", "series_uid", "output", "status"]
    assert {"right_lung_ml", "left_lung_ml", "warnings", "seconds", "error"} <= set(header)

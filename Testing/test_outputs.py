"""Output safety (core/outputs.py, core/atomic.py), bounded-memory counting (core/counts.py), the short last
batch, and API messages: the parts of issue 10 that the CLI corpus (test_bad_inputs.py) does not reach."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.core.atomic import TEMP_NAME, remove_stale_temps, stale_temp_files, temp_path
from LungSegLib.core.counts import label_components, label_counts, lookup, value_components
from LungSegLib.core.outputs import OutputSet, check_output_paths, committing, labelmap_format
from LungSegLib.errors import OutputError, UsageError


# --- OutputSet: all or nothing ----------------------------------------------------------------------------
def test_outputs_are_written_together_and_folders_created(tmp_path):
    request = {"output": (tmp_path / "a" / "b" / "lungs.nrrd", "nrrd"), "overview": (tmp_path / "o.png", "png"),
               "report": (None, "json")}
    with OutputSet(tmp_path / "ct.nrrd", request) as outputs:
        assert set(outputs.paths) == {"output", "overview"}
        for role in outputs.paths:
            tmp = outputs.temp(role)
            assert TEMP_NAME.match(tmp.name) and tmp.parent == outputs.paths[role].parent
            tmp.write_bytes(role.encode())
        assert not (tmp_path / "o.png").exists()  # nothing visible before the commit
        written = outputs.commit()
    assert written == {"output": tmp_path / "a" / "b" / "lungs.nrrd", "overview": tmp_path / "o.png"}
    assert (tmp_path / "o.png").read_bytes() == b"overview"
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["lungs.nrrd"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_or_interrupt_leaves_nothing_not_even_new_folders(tmp_path, error):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(error):
        with OutputSet(None, {"output": (tmp_path / "new" / "deeper" / "lungs.nrrd", "nrrd"),
                              "overview": (tmp_path / "o.png", "png")}) as outputs:
            outputs.temp("output").write_bytes(b"half")
            outputs.temp("overview").write_bytes(b"half")
            raise error()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_commit_marks_the_process_as_committing(tmp_path):
    from LungSegLib.core.outputs import reset_committing

    reset_committing()
    with OutputSet(None, {"output": (tmp_path / "l.nrrd", "nrrd")}) as outputs:
        outputs.temp("output").write_bytes(b"x")
        assert not committing()
        outputs.commit()
    assert committing()  # a cancel signal after this point lets the run finish
    reset_committing()


def test_a_missing_temporary_file_is_an_error_at_commit(tmp_path):
    with pytest.raises(OutputError, match="was not written"):
        with OutputSet(None, {"output": (tmp_path / "l.nrrd", "nrrd")}) as outputs:
            outputs.temp("output")
            outputs.commit()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_regular_file_only(tmp_path):
    target = tmp_path / "l.nrrd"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        check_output_paths(None, {"output": (target, "nrrd")})
    with OutputSet(None, {"output": (target, "nrrd")}, overwrite=True) as outputs:
        outputs.temp("output").write_bytes(b"new")
        outputs.commit()
    assert target.read_bytes() == b"new"


def test_the_same_file_under_two_names_is_one_file(tmp_path):
    (tmp_path / "ct.nrrd").write_bytes(b"ct")
    os.link(tmp_path / "ct.nrrd", tmp_path / "hard.nrrd")
    with pytest.raises(OutputError, match="would replace the input CT"):
        check_output_paths(tmp_path / "ct.nrrd", {"output": (tmp_path / "hard.nrrd", "nrrd")}, overwrite=True)
    with pytest.raises(OutputError, match="would replace the input CT"):  # relative vs absolute
        check_output_paths(tmp_path / "ct.nrrd", {"output": (tmp_path / "x" / ".." / "ct.nrrd", "nrrd")},
                           overwrite=True)
    with pytest.raises(OutputError, match="The report and the output are the same file"):
        check_output_paths(None, {"output": (tmp_path / "r.json", "json"), "report": (tmp_path / "r.json", "json")})


@pytest.mark.parametrize("name, fmt, expected", [("a.seg.nrrd", None, "seg.nrrd"), ("a.NRRD", None, "nrrd"),
                                                 ("a.nii.gz", "nii.gz", "nii.gz"), ("a.mha", "mha", "mha")])
def test_labelmap_format(name, fmt, expected):
    assert labelmap_format(name, fmt) == expected


@pytest.mark.parametrize("name, fmt", [("a.nrrd", "nii.gz"), ("a.nii.gz", "nii"), ("a.seg.nrrd", "nrrd"),
                                       ("a.lbl", "nrrd"), ("a.nrrd", "png")])
def test_a_format_that_contradicts_the_name_is_a_usage_error(name, fmt):
    with pytest.raises(UsageError) as exc:
        labelmap_format(name, fmt)
    assert exc.value.exit_code == 2 and isinstance(exc.value, ValueError)


# --- temporary files a killed run left --------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    dead = _dead_pid()
    mine = temp_path(tmp_path / "lungs.nrrd")
    host = TEMP_NAME.match(mine.name)["host"]
    stale = tmp_path / f".lungs.seg.nrrd.lungseg-{host}-{dead}.tmp.nrrd"
    other_host = tmp_path / f".lungs.nrrd.lungseg-{host}x-{dead}.tmp.nrrd"
    old_pattern = tmp_path / f".lungs.nrrd.{dead}.tmp.nrrd"
    linked = tmp_path / f".l.nrrd.lungseg-{host}-{dead}.tmp.nrrd"
    for path in (mine, stale, other_host, old_pattern):
        path.write_bytes(b"x")
    (tmp_path / "target.txt").write_text("not ours")
    linked.symlink_to(tmp_path / "target.txt")
    assert stale_temp_files(tmp_path) == [stale]
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (mine, other_host, old_pattern, linked, tmp_path / "target.txt"))


def test_writing_into_a_folder_removes_its_stale_temporary_files(tmp_path):
    from LungSegLib.core.geometry import Geometry
    from LungSegLib.core.writers import write_labelmap

    host = TEMP_NAME.match(temp_path(tmp_path / "x").name)["host"]
    stale = tmp_path / f".old.nii.gz.lungseg-{host}-{_dead_pid()}.tmp.nii.gz"
    stale.write_bytes(b"left by SIGKILL")
    write_labelmap(np.zeros((2, 3, 4), np.uint8), Geometry((1.0, 1.0, 1.0)), tmp_path / "new.nrrd")
    assert [p.name for p in tmp_path.iterdir()] == ["new.nrrd"]


# --- bounded-memory counting ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, top, minlength", [((40, 300, 50), 2, 3), ((3, 1500, 1500), 300, 0),
                                                   ((4, 5), 7, 20), ((0, 4), 1, 3)])
def test_label_counts_equals_bincount(shape, top, minlength):
    values = np.random.default_rng(0).integers(0, top + 1, shape).astype(np.uint8 if top < 256 else np.int32)
    assert np.array_equal(label_counts(values, minlength), np.bincount(values.ravel(), minlength=minlength))


def test_lookup_equals_fancy_indexing():
    rng = np.random.default_rng(1)
    table = rng.random(500) > 0.5
    index = rng.integers(0, 500, (30, 400, 400)).astype(np.uint16)
    assert np.array_equal(lookup(table, index), table[index])


def test_label_components_uses_16_bits_when_they_suffice():
    from scipy import ndimage

    few = np.zeros((4, 40, 40), bool)
    few[1, 5:10, 5:10] = few[2, 20:30, 20:30] = True
    comp, n = label_components(few, np.ones((3, 3, 3), bool))
    assert comp.dtype == np.uint16 and n == 2
    some = np.zeros((1, 60, 60), bool)
    some[0, ::2, ::2] = True  # 900 components
    comp, n = label_components(some, ndimage.generate_binary_structure(3, 1))
    assert comp.dtype == np.uint16 and n == 900
    assert np.array_equal(comp, ndimage.label(some, ndimage.generate_binary_structure(3, 1))[0])
    many = np.zeros((1, 600, 600), bool)
    many[0, ::2, ::2] = True  # 90000 components: more than 16 bits hold
    comp, n = label_components(many, ndimage.generate_binary_structure(3, 1))
    assert n == 90000 and comp.max() == 90000


@pytest.mark.parametrize("density", [0.05, 0.3, 0.7])
def test_value_components_equals_scipy_label(density):
    from scipy import ndimage

    rng = np.random.default_rng(int(density * 100))
    labels = (rng.random((23, 37, 41)) < density).astype(np.uint8) * 2
    labels[rng.random(labels.shape) < 0.1] = 1
    structure = np.ones((3, 3, 3), bool)
    comp, n = value_components(labels, 2, structure)
    expected, n_expected = ndimage.label(labels == 2, structure=structure)
    assert n == n_expected and np.array_equal(comp, expected)


# --- the short last batch; the API ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom(chest_phantom):
    shape = (7, 40, 48)
    geometry = chest_phantom.geometry(shape, (7.0, 6.5, 9.0))
    return chest_phantom.ct(geometry, shape), geometry


def test_a_short_last_batch_runs_at_its_own_size_with_the_same_labels(phantom, oracle_model, monkeypatch):
    from LungSegLib.core import inference

    volume, geometry = phantom
    reference = inference.segment_array(volume, geometry, oracle_model, batch_size=1).labels
    calls = []
    original = inference._Predictor.__call__

    def recording(self, batch):
        calls.append(batch.shape[0])
        return original(self, batch)

    monkeypatch.setattr(inference._Predictor, "__call__", recording)
    for batch, expected in ((3, [3, 3, 1]), (64, [7])):  # 7 slices: a short last batch; one batch of 7
        calls.clear()
        labels = inference.segment_array(volume, geometry, oracle_model, batch_size=batch).labels
        assert np.array_equal(labels, reference)
        assert (labels > 0).sum() > 100
        assert calls == expected  # never padded to a full batch (its memory)
    predictor = next(iter(inference._predictors.values()))
    assert predictor._predict.experimental_get_tracing_count() == 1  # one graph for every batch size


def test_segment_refuses_a_path_and_names_segment_file(oracle_model):
    from LungSegLib.api import LungSegmenter

    segmenter = LungSegmenter(oracle_model)
    for wrong in ("ct.nrrd", Path("ct.nrrd")):
        with pytest.raises(TypeError, match=r"SimpleITK image or a NumPy .*segment_file"):
            segmenter.segment(wrong)
    with pytest.raises(TypeError, match="not a list"):
        segmenter.segment([[1, 2], [3, 4]])


@pytest.mark.parametrize("batch", [0, 65, 10000])
def test_batch_size_outside_the_range_is_refused(batch):
    from LungSegLib.api import LungSegmenter
    from LungSegLib.defaults import MAX_BATCH_SIZE

    with pytest.raises(UsageError, match=f"1-{MAX_BATCH_SIZE}"):
        LungSegmenter(batch_size=batch, lazy=True)


def test_segment_file_checks_input_and_outputs_before_loading_the_model(tmp_path):
    from LungSegLib.api import LungSegmenter
    from LungSegLib.errors import InputError

    image = sitk.GetImageFromArray(np.full((4, 8, 8), 300, np.int16))
    image.SetMetaData("0008|0060", "MR")
    sitk.WriteImage(image, str(tmp_path / "mr.nrrd"))
    segmenter = LungSegmenter(tmp_path / "no_model.keras", lazy=True)  # would fail to load
    stages = []
    with pytest.raises(InputError, match="MR image"):
        segmenter.segment_file(tmp_path / "mr.nrrd", tmp_path / "l.nrrd", on_stage=stages.append)
    with pytest.raises(OutputError, match="would replace the input"):
        segmenter.segment_file(tmp_path / "mr.nrrd", tmp_path / "l.nrrd", overview_path=tmp_path / "mr.nrrd",
                               on_stage=stages.append)
    assert stages == ["read"] and not segmenter.model_loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mr.nrrd"]


# --- the clean-up in bounded memory gives the plain SciPy answer ----------------------------------------------
def _reference_keep_main(labels: np.ndarray, min_fraction: float = 0.1, upper_fraction: float = 0.01,
                         upper_gap_slices=None) -> np.ndarray:
    """keep_main_components written plainly with whole-volume SciPy calls (the memory-hungry way)."""
    from scipy import ndimage

    from LungSegLib.labels import LEFT, RIGHT

    full = np.ones((3, 3, 3), bool)
    for lung, other in ((RIGHT, LEFT), (LEFT, RIGHT)):
        comp, n = ndimage.label(labels == lung, structure=full)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        main = comp == np.argmax(sizes) + 1
        main_slices = np.flatnonzero(main.any(axis=(1, 2)))
        middle = (main_slices[0] + main_slices[-1]) / 2
        for cid in np.flatnonzero(sizes < min_fraction * sizes.max()) + 1:
            island = comp == cid
            bottom = np.flatnonzero(island.any(axis=(1, 2)))[0]
            near = upper_gap_slices is None or bottom - (main_slices[-1] + 1) <= upper_gap_slices
            over = main.any(axis=0)[island.any(axis=0)].mean() >= 0.5  # over the lung's footprint
            if sizes[cid - 1] >= upper_fraction * sizes.max() and bottom > middle and near and over:
                continue  # an upper island big enough to be lung, close above it
            touches = (ndimage.binary_dilation(island, structure=full) & (labels == other)).any()
            labels[island] = other if touches else 0
    return labels


def test_keep_main_components_matches_the_plain_scipy_version():
    from LungSegLib.core.postprocess import _SLAB, keep_main_components

    rng = np.random.default_rng(3)
    for _ in range(3):
        labels = np.zeros((2 * _SLAB + 7, 30, 40), np.uint8)  # several slabs, a short last one
        labels[:, 8:22, 4:18], labels[:, 8:22, 22:36] = 1, 2
        labels[_SLAB - 2:_SLAB + 2, 8:11, 19:22] = 1   # an island of 1 touching lung 2, across a slab edge
        labels[5:9, 25:28, 30:33] = 1                  # a lone island of 1
        labels[40:43, 1:4, 10:13] = 2                  # a lone island of 2
        labels[-6:, 24:29, 30:36] = 1                  # an upper island of 1 outside its footprint: dropped
        labels[-6:, 12:18, 8:14] = 1                   # an upper island of 1 over its footprint: kept
        labels[-12:-8, 8:22, 4:18] = 0                 # the right lung's top 8 slices cut off by 4 empty ones ...
        for value in (0, 1, 2):  # 10 stray voxels of each value
            labels[tuple(rng.integers(0, n, 10) for n in labels.shape)] = value
        for gap in (None, 2, 10):  # ... so the island is kept unless the gap allowed is below that
            assert np.array_equal(keep_main_components(labels.copy(), upper_gap_slices=gap),
                                  _reference_keep_main(labels.copy(), upper_gap_slices=gap))

"""Inference: batches, progress, cancel, input checks, and the Python API around it."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.api import LungSegmenter
from LungSegLib.errors import Cancelled, InputError
from LungSegLib.core.geometry import Geometry
from LungSegLib.core.inference import SegmentationResult, segment_array
from LungSegLib.core.postprocess import PostprocessOptions


@pytest.fixture(scope="module")
def phantom_case(chest_phantom):
    shape = (10, 44, 52)
    geometry = chest_phantom.geometry(shape, (7.0, 6.5, 9.0))
    return chest_phantom.ct(geometry, shape), geometry


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, done, total):
        self.calls.append((done, total))


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 16])
def test_progress_is_monotonic_per_batch_and_reaches_total_once(phantom_case, oracle_model, batch_size):
    ct, geometry = phantom_case
    progress = Recorder()
    segment_array(ct, geometry, oracle_model, batch_size=batch_size, progress=progress)
    total = ct.shape[0]
    done = [d for d, _ in progress.calls]
    assert all(t == total for _, t in progress.calls)
    assert done == [min(total, b) for b in range(batch_size, total + batch_size, batch_size)]
    assert done.count(total) == 1 and done[-1] == total


def test_progress_counts_canonical_slices(chest_phantom, oracle_model):
    shape = (6, 40, 44)  # a coronal stack of 6 slices: 40 axial slices once reoriented
    direction = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # i=L, j=S, k=P
    geometry = chest_phantom.geometry(shape, (7.0, 8.0, 10.0), direction)
    progress = Recorder()
    segment_array(chest_phantom.ct(geometry, shape), geometry, oracle_model, batch_size=16, progress=progress)
    assert progress.calls == [(16, 40), (32, 40), (40, 40)]


def test_slices_without_body_are_background_and_still_counted(phantom_case, oracle_model):
    ct, geometry = phantom_case
    padded = ct.copy()
    padded[[0, 1, -1]] = -1000  # air above and below the chest (lung-like HU nowhere)
    padded[0, :3, :3] = -800    # a few lung-like voxels in an otherwise empty slice: still no body
    progress = Recorder()
    labels = segment_array(padded, geometry, oracle_model, batch_size=4, progress=progress).labels
    assert progress.calls == [(4, 10), (8, 10), (10, 10)]
    assert not labels[[0, 1, -1]].any()
    assert labels[2:-1].any()


def test_cancel_from_the_progress_callback_stops_after_the_first_batch(phantom_case, oracle_model):
    ct, geometry = phantom_case
    cancel = threading.Event()
    progress = Recorder()

    def on_progress(done, total):
        progress(done, total)
        cancel.set()

    with pytest.raises(Cancelled):
        segment_array(ct, geometry, oracle_model, batch_size=3, progress=on_progress, cancel=cancel)
    assert progress.calls == [(3, 10)]


def test_cancel_accepts_a_callable_and_a_preset_flag(phantom_case, oracle_model):
    ct, geometry = phantom_case
    progress = Recorder()
    with pytest.raises(Cancelled):
        segment_array(ct, geometry, oracle_model, batch_size=2, progress=progress, cancel=lambda: True)
    assert progress.calls == []
    asked = []

    def cancel():
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Cancelled):
        segment_array(ct, geometry, oracle_model, batch_size=2, cancel=cancel)
    assert len(asked) == 3


def test_cancelled_segment_file_leaves_no_output_and_no_temporary(phantom_case, oracle_model, tmp_path):
    ct, geometry = phantom_case
    image = sitk.GetImageFromArray(ct)
    geometry.apply_to_sitk(image)
    ct_path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(ct_path))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cancel = threading.Event()
    calls = []

    def on_progress(done, total):
        calls.append(done)
        cancel.set()

    segmenter = LungSegmenter(oracle_model, batch_size=4)
    for name in ("lungs.seg.nrrd", "lungs.nii.gz"):
        cancel.clear()
        with pytest.raises(Cancelled):
            segmenter.segment_file(ct_path, out_dir / name, overview_path=out_dir / "overview.png",
                                   progress=on_progress, cancel=cancel)
    assert calls == [4, 4]
    assert list(out_dir.iterdir()) == []


def test_input_volume_is_not_modified_and_dtype_does_not_matter(phantom_case, oracle_model):
    ct, geometry = phantom_case
    frozen = ct.copy()
    frozen.setflags(write=False)
    a = segment_array(frozen, geometry, oracle_model, batch_size=4).labels
    assert np.array_equal(frozen, ct)
    b = segment_array(ct.astype(np.float32), geometry, oracle_model, batch_size=4).labels
    c = segment_array(ct.astype(np.int32), geometry, oracle_model, batch_size=4).labels
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_batch_size_does_not_change_the_labels(phantom_case, oracle_model):
    ct, geometry = phantom_case
    a = segment_array(ct, geometry, oracle_model, batch_size=1).labels
    b = segment_array(ct, geometry, oracle_model, batch_size=7).labels
    # batches are padded to a fixed shape; only round-off may differ between batch shapes
    assert (a != b).mean() < 1e-3 and (a == 1).sum() > 500


def test_result_reports_volumes_timings_and_geometry(phantom_case, oracle_model):
    ct, geometry = phantom_case
    result = segment_array(ct, geometry, oracle_model, batch_size=4)
    assert isinstance(result, SegmentationResult)
    assert result.labels.dtype == np.uint8 and result.labels.shape == ct.shape
    assert set(np.unique(result.labels)) == {0, 1, 2}
    voxel_ml = 7.0 * 6.5 * 9.0 / 1000
    volumes = result.volumes_ml()
    assert volumes["right lung"] == pytest.approx((result.labels == 1).sum() * voxel_ml)
    assert volumes["left lung"] == pytest.approx((result.labels == 2).sum() * voxel_ml)
    assert volumes["right lung"] > volumes["left lung"] > 0  # the phantom's right lung is bigger
    assert {"preprocess", "inference", "resample", "postprocess"} <= set(result.timings_s)
    assert result.geometry == geometry
    # 9 mm slices are thicker than the validated 0.6-5 mm: the one named warning
    assert [w.code for w in result.warnings] == ["thick_slices"]


def test_raw_output_without_postprocessing(phantom_case, oracle_model):
    ct, geometry = phantom_case
    raw = segment_array(ct, geometry, oracle_model, batch_size=4, postprocess_options=None).labels
    cleaned = segment_array(ct, geometry, oracle_model, batch_size=4,
                            postprocess_options=PostprocessOptions()).labels
    assert set(np.unique(raw)) <= {0, 1, 2}
    assert (raw != cleaned).mean() < 0.01  # the oracle's output is already clean


def test_no_lung_gives_a_warning(oracle_model):
    ct = np.full((3, 30, 30), -1000, np.int16)
    ct[:, 5:25, 5:25] = 40  # a body without lungs
    result = segment_array(ct, Geometry((5.0, 5.0, 5.0)), oracle_model, batch_size=2)
    assert not result.labels.any()
    assert [w.code for w in result.warnings] == ["no_lung"]
    assert "No lung" in str(result.warnings[0])


def test_non_hu_input_is_refused_unless_the_check_is_off(phantom_case, oracle_model):
    ct, geometry = phantom_case
    raw = (ct.astype(np.int32) + 1024).astype(np.uint16)
    raw[0, 0, 0] = 3000
    with pytest.raises(InputError, match="rescale intercept"):
        segment_array(raw, geometry, oracle_model, batch_size=4)
    result = segment_array(raw, geometry, oracle_model, batch_size=4, check_hu=False)
    assert result.labels.shape == ct.shape


@pytest.mark.parametrize("volume, error", [
    (np.zeros((8, 8), np.int16), InputError),
    (np.zeros((2, 8, 8, 3), np.int16), InputError),
    (np.zeros((2, 8, 8), bool), InputError),
    (np.zeros((2, 8, 8), np.complex64), InputError),
])
def test_bad_arrays_are_refused(oracle_model, volume, error):
    with pytest.raises(error):
        segment_array(volume, Geometry((1.0, 1.0, 1.0)), oracle_model)


def test_batch_size_must_be_positive(phantom_case, oracle_model):
    ct, geometry = phantom_case
    with pytest.raises(ValueError, match="batch_size"):
        segment_array(ct, geometry, oracle_model, batch_size=0)


def test_tiny_unet_runs_the_real_network_path(phantom_case, tiny_unet_path):
    ct, geometry = phantom_case
    segmenter = LungSegmenter(tiny_unet_path, batch_size=4, threads=2, postprocess=False)
    assert segmenter.model.spec.size == 64 and segmenter.postprocess_options is None
    progress = Recorder()
    labels = segmenter.segment_array(ct, geometry, progress=progress).labels
    assert labels.shape == ct.shape and labels.dtype == np.uint8 and labels.max() <= 2
    assert progress.calls[-1] == (10, 10)


# --- the Python API -----------------------------------------------------------------------------------
def test_api_segments_a_simpleitk_image_onto_its_grid(phantom_case, oracle_model):
    ct, geometry = phantom_case
    image = sitk.GetImageFromArray(ct)
    geometry.apply_to_sitk(image)
    segmenter = LungSegmenter(oracle_model, batch_size=4)
    labels = segmenter.segment(image)
    assert isinstance(labels, sitk.Image) and labels.GetPixelID() == sitk.sitkUInt8
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == image.GetSpacing() and labels.GetOrigin() == image.GetOrigin()
    assert labels.GetDirection() == image.GetDirection()
    expected = segment_array(ct, geometry, oracle_model, batch_size=4).labels
    assert np.array_equal(sitk.GetArrayFromImage(labels), expected)


def test_api_segments_a_numpy_array_with_its_geometry(phantom_case, oracle_model):
    ct, geometry = phantom_case
    segmenter = LungSegmenter(oracle_model, batch_size=4)
    labels = segmenter.segment(ct, spacing=geometry.spacing, origin=geometry.origin,
                               direction=geometry.direction)
    assert isinstance(labels, np.ndarray)
    assert np.array_equal(labels, segment_array(ct, geometry, oracle_model, batch_size=4).labels)
    with pytest.raises(ValueError, match="spacing"):
        segmenter.segment(ct)


def test_api_refuses_a_2d_simpleitk_image(oracle_model):
    with pytest.raises(InputError, match="2-D"):
        LungSegmenter(oracle_model).segment(sitk.Image(16, 16, sitk.sitkInt16))

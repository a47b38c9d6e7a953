"""Geometry: canonical orientation, RAS/LPS conversions, and labelmaps that land exactly on the input grid
with the right lung on the patient's right, whatever the file's orientation."""
from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.core.geometry import Geometry, canonical_orientation, centroid_lps
from LungSegLib.core.inference import segment_array

PERMUTATIONS = list(itertools.permutations(range(3)))
FLIPS = list(itertools.product((False, True), repeat=3))


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def signed_permutation(perm, flips) -> np.ndarray:
    d = np.zeros((3, 3))
    for col, (row, flip) in enumerate(zip(perm, flips)):
        d[row, col] = -1.0 if flip else 1.0
    return d


def lps_points(geometry: Geometry, shape_kji) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(float)
    m = geometry.ijk_to_lps()
    return ijk @ m[:3, :3].T + m[:3, 3]


def assert_same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


# --- pure geometry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("perm", PERMUTATIONS)
@pytest.mark.parametrize("flips", FLIPS)
def test_canonical_axes_run_superior_posterior_left_for_all_48_orientations(perm, flips):
    spacing = (0.7, 1.3, 2.9)
    geometry = Geometry(spacing, (-40.0, 25.0, 110.0), signed_permutation(perm, flips))
    shape = (5, 4, 3)  # k, j, i: odd and all different, so a wrong permutation cannot pass
    o = canonical_orientation(geometry)
    assert o.obliquity_deg == pytest.approx(0.0, abs=1e-9)

    p = o.to_canonical(lps_points(geometry, shape))  # LPS of each canonical voxel, trailing axis kept
    assert np.all(np.diff(p[..., 2], axis=0) > 0)  # axis 0 towards Superior
    assert np.all(np.diff(p[..., 1], axis=1) > 0)  # axis 1 towards Posterior
    assert np.all(np.diff(p[..., 0], axis=2) > 0)  # axis 2 towards patient Left
    for axis, lps in ((0, 2), (1, 1), (2, 0)):
        assert np.allclose(np.abs(np.diff(p[..., lps], axis=axis)), o.spacing_zyx[axis])
    assert o.pixel_spacing_mm == (o.spacing_zyx[1], o.spacing_zyx[2])

    data = np.arange(np.prod(shape)).reshape(shape)
    canonical = o.to_canonical(data)
    assert canonical.shape == tuple(shape[a] for a in o.axes)
    assert np.array_equal(o.from_canonical(canonical), data)
    labels = np.zeros(shape, np.uint8)
    o.to_canonical(labels)[0, 0, 0] = 7  # a writable view: writes land on the input grid
    assert labels.sum() == 7


@pytest.mark.parametrize("axis, degrees", [(2, 14.0), (0, -9.0), (1, 25.0), (2, 44.0)])
def test_oblique_grid_maps_to_nearest_axes_and_reports_obliquity(axis, degrees):
    geometry = Geometry((0.8, 0.8, 3.0), (0, 0, 0), rotation(axis, degrees) @ np.diag([-1.0, 1.0, 1.0]))
    o = canonical_orientation(geometry)
    assert o.obliquity_deg == pytest.approx(abs(degrees), abs=1e-6)
    p = o.to_canonical(lps_points(geometry, (3, 4, 5)))
    assert np.all(np.diff(p[..., 2], axis=0) > 0)
    assert np.all(np.diff(p[..., 1], axis=1) > 0)
    assert np.all(np.diff(p[..., 0], axis=2) > 0)


def test_ras_and_lps_constructors_agree_with_simpleitk():
    direction = rotation(2, 20.0) @ rotation(0, 7.0) @ np.diag([1.0, -1.0, 1.0])
    image = sitk.Image(6, 5, 4, sitk.sitkInt16)
    image.SetSpacing((0.6, 0.9, 2.5))
    image.SetOrigin((-30.5, 12.25, 77.0))
    image.SetDirection(tuple(direction.ravel()))
    geometry = Geometry.from_sitk(image)
    for ijk in [(0, 0, 0), (5, 4, 3), (2.5, 1.0, 0.5)]:
        expected_lps = np.array(image.TransformContinuousIndexToPhysicalPoint(ijk))
        assert np.allclose(geometry.ijk_to_lps() @ np.append(ijk, 1.0), np.append(expected_lps, 1))
        ras = geometry.ijk_to_ras() @ np.append(ijk, 1.0)
        assert np.allclose(ras[:3], expected_lps * [-1, -1, 1])
    ras_matrix = geometry.ijk_to_ras()
    again = Geometry.from_ijk_to_ras(ras_matrix)
    assert np.allclose(again.spacing, geometry.spacing)
    assert np.allclose(again.origin, geometry.origin)
    assert np.allclose(again.direction, geometry.direction)
    from_ras = Geometry.from_ras(geometry.spacing, ras_matrix[:3, 3], ras_matrix[:3, :3] / geometry.spacing)
    assert np.allclose(from_ras.direction, geometry.direction)
    copy = sitk.Image(6, 5, 4, sitk.sitkUInt8)
    geometry.apply_to_sitk(copy)
    assert_same_grid(copy, image, tol=1e-12)


def test_nifti_header_is_ras_and_reads_back_as_the_same_lps_grid(tmp_path):
    direction = rotation(2, -12.0) @ signed_permutation((0, 2, 1), (True, False, True))
    geometry = Geometry((0.75, 1.5, 3.25), (40.0, -60.0, 15.0), direction)
    image = sitk.Image(7, 6, 5, sitk.sitkInt16)
    geometry.apply_to_sitk(image)
    path = tmp_path / "ras.nii"
    sitk.WriteImage(image, str(path))
    header = path.read_bytes()[:348]
    sform_code = struct.unpack("<h", header[254:256])[0]
    srows = np.array(struct.unpack("<12f", header[280:328])).reshape(3, 4)
    assert sform_code > 0
    assert np.allclose(srows, geometry.ijk_to_ras()[:3], atol=1e-4)  # NIfTI stores RAS

    back = Geometry.from_sitk(sitk.ReadImage(str(path)))
    assert np.allclose(back.spacing, geometry.spacing, atol=1e-5)
    assert np.allclose(back.origin, geometry.origin, atol=1e-4)
    assert np.allclose(back.direction, geometry.direction, atol=1e-5)
    a, b = canonical_orientation(back), canonical_orientation(geometry)
    assert (a.axes, a.flips) == (b.axes, b.flips)
    assert a.obliquity_deg == pytest.approx(b.obliquity_deg, abs=1e-3)


@pytest.mark.parametrize("spacing, direction", [
    ((0.0, 1.0, 1.0), np.eye(3)),
    ((1.0, -2.0, 1.0), np.eye(3)),
    ((1.0, 1.0, float("nan")), np.eye(3)),
    ((1.0, 1.0, 1.0), np.diag([1.0, 2.0, 1.0])),
    ((1.0, 1.0, 1.0), [[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),  # sheared: det 1, not orthonormal
])
def test_invalid_geometry_is_refused(spacing, direction):
    with pytest.raises(ValueError):
        Geometry(spacing, (0, 0, 0), direction)


def test_centroid_lps_uses_the_grid():
    geometry = Geometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0), np.diag([-1.0, 1.0, 1.0]))
    mask = np.zeros((3, 4, 5), bool)
    mask[1, 2, 3] = True
    assert np.allclose(centroid_lps(mask, geometry), [10.0 - 6.0, 20.0 + 6.0, 30.0 + 4.0])
    assert centroid_lps(np.zeros_like(mask), geometry) is None


# --- segmentation lands on the input grid, labels follow the patient's side -------------------------
@pytest.fixture(scope="module")
def base_case(chest_phantom, oracle_model):
    """An axial phantom CT (identity direction) and its oracle labelmap: the reference."""
    shape = (9, 41, 50)
    geometry = chest_phantom.geometry(shape, (7.0, 6.0, 9.0), shift_mm=(3.0, -2.0, 0.0))
    ct = chest_phantom.ct(geometry, shape)
    image = sitk.GetImageFromArray(ct)
    geometry.apply_to_sitk(image)
    labels = segment_array(ct, geometry, oracle_model, batch_size=4).labels
    return image, labels


def test_reference_segmentation_is_anatomically_right(base_case, chest_phantom, dice_score):
    image, labels = base_case
    geometry = Geometry.from_sitk(image)
    truth = chest_phantom.labels(geometry, labels.shape)
    assert dice_score(labels == 1, truth == 1) > 0.85
    assert dice_score(labels == 2, truth == 2) > 0.85
    assert centroid_lps(labels == 1, geometry)[0] < centroid_lps(labels == 2, geometry)[0]


def variant(image: sitk.Image, perm, flips) -> sitk.Image:
    """The same voxels in another array order; SimpleITK keeps every voxel's physical position."""
    return sitk.Flip(sitk.PermuteAxes(image, list(perm)), list(flips), False)


def back_on_grid(labels: np.ndarray, grid: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Nearest-neighbour resampling of ``labels`` (on ``grid``) onto ``reference`` — exact for
    permuted/flipped grids, which share voxel centres."""
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(grid)
    return sitk.GetArrayFromImage(sitk.Resample(label_image, reference, sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 255, sitk.sitkUInt8))


@pytest.mark.parametrize("perm", PERMUTATIONS)
@pytest.mark.parametrize("flips", FLIPS)
def test_same_ct_in_any_axis_order_gives_the_same_labels(base_case, oracle_model, perm, flips):
    image, reference = base_case
    moved = variant(image, perm, flips)
    ct = sitk.GetArrayViewFromImage(moved)
    geometry = Geometry.from_sitk(moved)
    labels = segment_array(ct, geometry, oracle_model, batch_size=4).labels
    assert labels.shape == ct.shape and labels.dtype == np.uint8
    assert np.array_equal(back_on_grid(labels, moved, image), reference)
    assert centroid_lps(labels == 1, geometry)[0] < centroid_lps(labels == 2, geometry)[0]


@pytest.mark.parametrize("perm, flips", [((0, 1, 2), (True, False, False)), ((1, 0, 2), (True, True, False)),
                                         ((2, 1, 0), (False, True, True)), ((0, 2, 1), (True, False, True))])
def test_real_ct_in_another_axis_order_gives_the_same_labels(real_ct_crop, oracle_model, perm, flips):
    image = sitk.ReadImage(str(real_ct_crop))
    reference = segment_array(sitk.GetArrayViewFromImage(image), Geometry.from_sitk(image), oracle_model,
                              batch_size=6).labels
    assert (reference == 1).sum() > 1000 and (reference == 2).sum() > 1000
    moved = variant(image, perm, flips)
    geometry = Geometry.from_sitk(moved)
    labels = segment_array(sitk.GetArrayViewFromImage(moved), geometry, oracle_model, batch_size=6).labels
    assert np.array_equal(back_on_grid(labels, moved, image), reference)
    assert centroid_lps(labels == 1, geometry)[0] < centroid_lps(labels == 2, geometry)[0]


@pytest.mark.parametrize("perm, flips, suffix", [
    ((0, 1, 2), (True, True, False), ".nii.gz"),   # the usual RAS-ordered NIfTI
    ((0, 1, 2), (False, False, False), ".nii"),
    ((2, 0, 1), (False, True, True), ".nii.gz"),   # sagittal stack
    ((0, 2, 1), (True, False, True), ".mha"),      # coronal stack
    ((1, 0, 2), (False, False, True), ".nrrd"),
])
def test_file_round_trip_lands_on_the_input_grid(base_case, oracle_model, tmp_path, perm, flips, suffix):
    from LungSegLib.api import LungSegmenter

    image, reference = base_case
    ct_path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(variant(image, perm, flips), str(ct_path))
    segmenter = LungSegmenter(oracle_model, batch_size=4)
    for out_name in ("lungs.seg.nrrd", "lungs" + suffix):
        out = tmp_path / out_name
        segmenter.segment_file(ct_path, out)
        written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(ct_path))
        assert_same_grid(written, original)
        labels = sitk.GetArrayFromImage(written)
        assert np.array_equal(back_on_grid(labels, written, image), reference)


@pytest.mark.parametrize("case", [
    # (shape kji, spacing ijk, direction, shift mm)
    ((8, 45, 52), (6.5, 6.5, 9.0), rotation(2, 15.0), (0, 0, 0)),                    # rotated in-plane
    ((9, 44, 50), (7.0, 6.0, 9.0), rotation(0, 10.0) @ rotation(2, -8.0), (5, 0, 0)),  # gantry tilt + roll
    ((7, 47, 51), (6.0, 7.5, 10.0), rotation(1, 20.0) @ np.diag([-1.0, -1.0, 1.0]), (0, 4, 0)),  # RAS oblique
    # (spacings within the range LungSeg accepts for the oracle's 3 mm grid: slices <= 10 mm, pixels <= 12 mm)
    ((45, 13, 52), (6.0, 10.0, 6.0), signed_permutation((0, 2, 1), (0, 0, 1)), (0, 0, 0)),  # coronal
    ((52, 41, 11), (6.0, 7.0, 12.0), signed_permutation((2, 1, 0), (1, 0, 0)), (0, 0, 0)),  # sagittal
    ((7, 37, 45), (6.3, 5.1, 9.7), np.eye(3), (-7, 3, 0)),                         # odd sizes, anisotropic
    ((1, 49, 61), (5.0, 5.0, 5.0), np.diag([-1.0, 1.0, -1.0]), (0, 0, 0)),           # a single slice
])
def test_labels_follow_patient_side_on_any_grid(chest_phantom, oracle_model, dice_score, case):
    shape, spacing, direction, shift = case
    geometry = chest_phantom.geometry(shape, spacing, direction, shift)
    ct = chest_phantom.ct(geometry, shape)
    result = segment_array(ct, geometry, oracle_model, batch_size=4)
    labels = result.labels
    assert labels.shape == ct.shape and result.geometry == geometry
    truth = chest_phantom.labels(geometry, shape)
    for lung in (1, 2):
        assert dice_score(labels == lung, truth == lung) > 0.8, f"lung {lung}"
    assert centroid_lps(labels == 1, geometry)[0] < chest_phantom.center[0] < \
        centroid_lps(labels == 2, geometry)[0]
    if canonical_orientation(geometry).obliquity_deg > 1:
        assert any(w.code == "oblique" and "oblique" in str(w) for w in result.warnings)


def test_binary_model_sides_also_come_from_patient_coordinates(base_case, binary_oracle_model, dice_score):
    image, reference = base_case
    for perm, flips in [((0, 1, 2), (True, False, False)), ((2, 1, 0), (False, True, True))]:
        moved = variant(image, perm, flips)
        geometry = Geometry.from_sitk(moved)
        labels = segment_array(sitk.GetArrayViewFromImage(moved), geometry, binary_oracle_model,
                               batch_size=3).labels
        assert set(np.unique(labels)) == {0, 1, 2}
        assert centroid_lps(labels == 1, geometry)[0] < centroid_lps(labels == 2, geometry)[0]
        # the binary oracle finds the same lungs as the 3-class one (its output function differs)
        back = back_on_grid(labels, moved, image)
        for lung in (1, 2):
            assert dice_score(back == lung, reference == lung) > 0.95

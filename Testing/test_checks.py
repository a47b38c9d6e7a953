"""Named warnings (core/checks.py), the accepted voxel spacing, the HU check judged inside the field of
view, and sheared grids (issue 10, points 5, 6 and 8)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.cli import main
from LungSegLib.core.checks import (CODES, Finding, check_spacing, findings_summary, input_findings,
                                    plausibility_findings, result_findings)
from LungSegLib.core.geometry import Geometry
from LungSegLib.core.imageio import read_ct, validate_ct_image
from LungSegLib.core.intensity import check_hounsfield, hounsfield_problem
from LungSegLib.errors import InputError

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"


def codes(findings):
    return sorted(f.code for f in findings)


# --- Finding -----------------------------------------------------------------------------------------
def test_finding_prints_its_message_and_round_trips_through_json():
    f = Finding("lung_missing", "No left lung was found (the other lung was).", "left")
    assert str(f) == f.message and f"{f}" == f.message
    assert f.to_dict() == {"code": "lung_missing", "message": f.message, "lung": "left"}
    assert Finding.from_dict(f.to_dict()) == f
    assert Finding.from_dict("an old plain warning") == Finding("warning", "an old plain warning")
    assert Finding.from_dict(f) is f
    with pytest.raises(AttributeError):
        f.code = "other"  # frozen: a stable record


def test_every_code_the_checks_produce_is_documented():
    expected = {"no_lung", "lung_missing", "lung_too_small", "volume_out_of_range", "ratio_out_of_range",
                "lung_touches_border", "thick_slices", "oblique", "non_hu_override", "non_finite_voxels",
                "spacing_unusual", "lung_base_low"}
    assert expected <= set(CODES)


# --- spacing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing, accepted_range", [
    ((10.0, 10.0, 2.0), "0.3-6 mm"),    # the 10 mm pixels (gave 3217 / 821 mL)
    ((0.1, 0.1, 1.0), "0.3-6 mm"),      # the 0.1 mm (gave 0 mL)
    ((0.7, 0.7, 12.0), "0.3-10 mm"),    # slices
    ((0.7, 0.7, 0.2), "0.3-10 mm"),
])
def test_absurd_spacing_is_refused_with_the_range(spacing, accepted_range):
    with pytest.raises(InputError, match=accepted_range) as info:
        check_spacing(Geometry(spacing))
    assert "spacing" in str(info.value) and "validated on" in str(info.value)


@pytest.mark.parametrize("spacing, expected", [
    ((0.7, 0.7, 1.25), []),
    ((0.5, 0.5, 0.6), []),
    ((4.0, 4.0, 5.0), []),
    ((5.0, 5.0, 2.0), ["spacing_unusual"]),   # 4-6 mm pixels: accepted, warned
    ((0.35, 0.35, 1.0), ["spacing_unusual"]),
    ((0.7, 0.7, 0.4), ["spacing_unusual"]),   # thinner than 0.6 mm slices
    ((0.7, 0.7, 7.5), ["thick_slices"]),
])
def test_spacing_margins_are_named_warnings(spacing, expected):
    assert codes(check_spacing(Geometry(spacing))) == expected


def test_spacing_is_read_from_the_patient_axes_not_the_array_axes():
    # sagittal storage: image axis i runs Superior, so its 7.5 mm is the slice spacing
    sagittal = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)
    assert codes(check_spacing(Geometry((7.5, 0.7, 0.7), direction=sagittal))) == ["thick_slices"]


def test_accepted_pixel_spacing_scales_with_the_model_grid():
    # a model on a 3 mm grid keeps the same resampling factors: 0.6-12 mm accepted, 1-8 mm supported
    assert codes(check_spacing(Geometry((10.0, 10.0, 2.0)), grid_pixel_mm=3.0)) == ["spacing_unusual"]
    with pytest.raises(InputError, match="0.6-12 mm"):
        check_spacing(Geometry((0.5, 0.5, 2.0)), grid_pixel_mm=3.0)


@pytest.mark.parametrize("spacing, pattern", [(10.0, "pixel spacing of 10 x 10 mm"),
                                              (0.1, "pixel spacing of 0.1 x 0.1 mm")])
def test_cli_refuses_absurd_spacing_with_exit_3_before_any_work(tmp_path, capsys, spacing, pattern):
    image = sitk.ReadImage(str(SAMPLE))
    image.SetSpacing((spacing, spacing, 4.25))
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(ct))
    code = main(["segment", str(ct), str(tmp_path / "lungs.nrrd"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and pattern in err and "0.3-6 mm" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd"]


# --- result findings ---------------------------------------------------------------------------------
#: A chest-sized grid: 256 x 256 pixels of 0.8 mm (205 mm) and 40 slices of 5 mm (200 mm).
SHAPE = (40, 256, 256)
CHEST = Geometry((0.8, 0.8, 5.0))


def two_lungs(left_cols=(146, 226), right_cols=(30, 110)) -> np.ndarray:
    """Right lung at small i (patient right in LPS), left lung at large i; ~1075 mL each."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:35, 60:200, right_cols[0]:right_cols[1]] = 1
    labels[5:35, 60:200, left_cols[0]:left_cols[1]] = 2
    return labels


def test_normal_result_has_no_findings():
    assert result_findings(two_lungs(), CHEST) == []
    assert plausibility_findings(two_lungs(), CHEST) == []


def test_no_lung_and_a_missing_lung():
    assert codes(result_findings(np.zeros(SHAPE, np.uint8), CHEST)) == ["no_lung"]
    labels = two_lungs()
    labels[labels == 2] = 0
    [finding] = result_findings(labels, CHEST)
    assert (finding.code, finding.lung) == ("lung_missing", "left")
    assert "left lung" in str(finding)


def test_a_tiny_lung_is_flagged_only_on_a_chest_sized_field_of_view():
    labels = two_lungs()
    labels[labels == 2] = 0
    labels[20, 100:110, 150:160] = 2  # 100 voxels x 3.2 uL = 0.32 mL
    found = result_findings(labels, CHEST)
    assert [(f.code, f.lung) for f in found] == [("lung_too_small", "left")]
    assert "0.3 mL" in str(found[0])
    small_fov = labels[18:23, 90:170, 20:170]  # a 64 x 120 mm, 25 mm crop
    assert "lung_too_small" not in codes(result_findings(small_fov, CHEST))


def test_volume_beyond_adult_anatomy_and_right_left_ratio():
    big = Geometry((2.0, 2.0, 5.0))  # the same voxels 2.5x wider: ~6720 mL per lung
    found = result_findings(two_lungs(), big)
    assert [(f.code, f.lung) for f in found] == [("volume_out_of_range", "right"), ("volume_out_of_range", "left")]
    lopsided = two_lungs(left_cols=(146, 166))  # left lung a quarter of the right
    [ratio] = result_findings(lopsided, CHEST)
    assert ratio.code == "ratio_out_of_range" and "4.00" in ratio.message


def test_a_lung_reaching_far_below_the_other_is_flagged():
    # k runs superior here (identity direction); the lungs of two_lungs() span slices 5-34 (5 mm each)
    labels = two_lungs()
    labels[0:5, 120:150, 170:200] = 2  # the left lung hangs down to slice 0 (bowel gas taken for lung)
    labels[5:12][labels[5:12] == 1] = 0  # the right lung's base at slice 12: 12 x 5 = 60 mm higher
    [base] = result_findings(labels, CHEST)
    assert (base.code, base.lung) == ("lung_base_low", "left") and "60 mm lower than the right lung" in base.message
    labels[11, 60:200, 30:110] = 1  # 55 mm: within what the hemidiaphragms differ by
    assert "lung_base_low" not in codes(result_findings(labels, CHEST))


def test_the_lower_lung_is_found_by_patient_position_not_array_order():
    labels = two_lungs()
    labels[:20][labels[:20] == 1] = 0  # the right lung starts 15 slices (75 mm) above the left
    assert [(f.code, f.lung) for f in result_findings(labels, CHEST)] == [("lung_base_low", "left")]
    # the same anatomy stored with k running towards the feet: the same finding
    down = Geometry((0.8, 0.8, 5.0), direction=np.diag([1.0, 1.0, -1.0]))
    assert [(f.code, f.lung) for f in result_findings(labels[::-1], down)] == [("lung_base_low", "left")]
    # the same array read with k towards the feet: the left lung now reaches *higher* (its apex), both bases
    # lie on slice 34: nothing to flag
    assert "lung_base_low" not in codes(result_findings(labels, down))
    # one lung missing: no base comparison
    only_left = np.where(labels == 2, 2, 0).astype(np.uint8)
    assert "lung_base_low" not in codes(result_findings(only_left, CHEST))


def test_lung_cut_by_the_image_border_is_flagged_per_lung():
    found = result_findings(two_lungs(right_cols=(0, 80)), CHEST)
    assert [(f.code, f.lung) for f in found] == [("lung_touches_border", "right")]
    # slices are not the in-plane border: lungs reaching the first and last slice are not flagged
    full_height = np.zeros(SHAPE, np.uint8)
    full_height[:, 60:200, 30:110] = 1
    full_height[:, 60:200, 146:226] = 2
    assert result_findings(full_height, CHEST) == []


def test_input_findings_name_obliquity_non_hu_override_and_non_finite_voxels():
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    tilted = Geometry((0.8, 0.8, 5.0), direction=[[1, 0, 0], [0, c, -s], [0, s, c]])
    found = input_findings(tilted, non_finite_voxels=50, total_voxels=1000,
                           non_hu_reason="it looks like raw stored values")
    assert codes(found) == ["non_finite_voxels", "non_hu_override", "oblique"]
    text = findings_summary(found)
    assert "oblique by 10.0 degrees" in text and "50 voxels (5% of the image)" in text
    assert "raw stored values" in text


# --- HU check judged inside the field of view --------------------------------------------------------
@pytest.fixture(scope="module")
def sample_hu() -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE))).astype(np.int32)


@pytest.fixture(scope="module")
def outside_circle(sample_hu) -> np.ndarray:
    rows, cols = np.indices(sample_hu.shape[1:])
    c = (np.array(sample_hu.shape[1:]) - 1) / 2
    return np.hypot(rows - c[0], cols - c[1]) > 0.45 * sample_hu.shape[1]


@pytest.mark.parametrize("padding", [-3024, -2000, -1024, None])
def test_real_ct_with_any_padding_value_passes(sample_hu, outside_circle, padding):
    ct = sample_hu.copy()
    if padding is not None:
        ct[:, outside_circle] = padding
    assert hounsfield_problem(ct) is None
    check_hounsfield(ct)


@pytest.mark.parametrize("padding", [-2000, -3024, 0, -1024])
def test_raw_stored_values_are_refused_whatever_the_padding(sample_hu, outside_circle, padding):
    """The issue's case: no rescale intercept (stored = HU + 1024) with -2000 padding passed the old check
    (its 1st percentile was the padding) and gave 'right 6 mL, left 0 mL'."""
    raw = np.clip(sample_hu + 1024, 0, None)
    raw[:, outside_circle] = padding
    with pytest.raises(InputError, match=r"rescale intercept.*subtract 1024") as info:
        check_hounsfield(raw)
    assert "padding" in str(info.value)  # the message says what was left out


def test_only_padding_and_all_non_finite_images_are_refused():
    padding_only = np.full((3, 20, 20), -3024, np.int16)
    padding_only[:, :5] = -2000
    assert "only padding" in hounsfield_problem(padding_only)
    assert "NaN or infinite" in hounsfield_problem(np.full((3, 8, 8), np.nan, np.float32))


# --- sheared grids -----------------------------------------------------------------------------------
def sheared(image: sitk.Image, degrees: float = 20.0) -> sitk.Image:
    d = np.eye(3)
    d[0, 1], d[1, 1] = np.sin(np.radians(degrees)), np.cos(np.radians(degrees))
    out = sitk.Image(image)
    out.SetDirection(tuple(d.ravel()))
    return out


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sheared_direction_is_refused_with_exit_3_not_a_traceback(tmp_path, capsys, suffix):
    ct = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sheared(sitk.ReadImage(str(SAMPLE))[100:160, 100:160, 20:26]), str(ct))
    with pytest.raises(InputError, match=r"non-orthogonal direction matrix.*sheared by 20.0 degrees"):
        read_ct(ct)
    code = main(["segment", str(ct), str(tmp_path / "lungs.nrrd"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "sheared" in err and "Traceback" not in err


def test_sheared_simpleitk_image_is_refused_by_the_api_checks():
    with pytest.raises(InputError, match="non-orthogonal"):
        validate_ct_image(sheared(sitk.Image(8, 8, 4, sitk.sitkInt16)))


def test_a_sheared_grid_given_as_numbers_is_bad_input_and_a_value_error():
    """The NumPy API (direction=) and Slicer's IJK-to-RAS matrix meet the same refusal (exit 3), still a
    ValueError for Python callers."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    direction = [[1.0, s, 0.0], [0.0, c, 0.0], [0.0, 0.0, 1.0]]
    with pytest.raises(InputError, match="sheared by 20.0 degrees") as info:
        Geometry((0.8, 0.8, 2.0), direction=direction)
    assert isinstance(info.value, ValueError) and info.value.exit_code == 3
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag([-0.8, -0.8, 2.0]) @ np.array(direction)
    with pytest.raises(InputError, match="non-orthogonal"):
        Geometry.from_ijk_to_ras(ijk_to_ras)

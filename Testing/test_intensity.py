"""Hounsfield-unit checks: real CT passes, non-HU inputs are refused with the cause named."""
from __future__ import annotations

import numpy as np
import pytest

from LungSegLib.errors import InputError
from LungSegLib.core.intensity import HU_WINDOW, check_hounsfield, window


@pytest.fixture(scope="module")
def ct_hu(chest_phantom):
    shape = (6, 48, 56)
    return chest_phantom.ct(chest_phantom.geometry(shape, (7.0, 6.0, 8.0)), shape)


def test_ct_in_hu_passes(ct_hu):
    check_hounsfield(ct_hu)
    check_hounsfield(ct_hu.astype(np.float32))
    padded = ct_hu.copy()
    padded[:, :4] = -3024  # scanner padding outside the reconstruction circle
    check_hounsfield(padded)


def test_raw_stored_values_without_intercept_are_refused(ct_hu):
    raw = (ct_hu.astype(np.int32) + 1024).astype(np.uint16)  # 0..4095 style: -1024 offset missing
    raw[0, 0, :3] = (4095, 3000, 2000)  # bone / metal
    with pytest.raises(InputError, match=r"rescale intercept.*subtract 1024.*--no-hu-check"):
        check_hounsfield(raw)


def test_mr_like_image_without_air_is_refused(ct_hu):
    rng = np.random.default_rng(1)
    mr = rng.uniform(0, 1000, size=ct_hu.shape).astype(np.float32)
    mr[:, :5] = 0  # background
    with pytest.raises(InputError, match=r"no air.*does not look like CT.*MR.*--no-hu-check"):
        check_hounsfield(mr)


def test_normalised_image_is_refused(ct_hu):
    normalised = window(ct_hu)  # 0..1
    with pytest.raises(InputError, match=r"not Hounsfield units.*normalised.*--no-hu-check"):
        check_hounsfield(normalised)


def test_image_without_air_but_negative_values_is_refused():
    rng = np.random.default_rng(2)
    soft = rng.uniform(-200, 300, size=(4, 30, 30))
    with pytest.raises(InputError, match="air .* should be near"):
        check_hounsfield(soft)


def test_constant_and_empty_images_are_refused():
    with pytest.raises(InputError, match="constant"):
        check_hounsfield(np.full((3, 8, 8), -1000, np.int16))
    with pytest.raises(InputError, match="empty"):
        check_hounsfield(np.zeros((0, 8, 8), np.int16))


def test_window_clips_and_scales_to_unit_range():
    lo, hi = HU_WINDOW
    out = window(np.array([-3024, lo, (lo + hi) / 2, hi, 3000]))
    assert out.dtype == np.float32
    assert np.allclose(out, [0, 0, 0.5, 1, 1])

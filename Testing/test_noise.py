"""Noise on the model grid: the per-slice estimate (HU), and smoothing of only the slices noisier than the
network was trained on (``LungSegLib.core.noise``, applied by the one preparation path)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from LungSegLib.core.geometry import Geometry
from LungSegLib.core.intensity import hu_to_unit
from LungSegLib.core.model import spec_from_card
from LungSegLib.core.noise import noise_sd_hu, smoothing_sigma_px, suppress_noise
from LungSegLib.core.preprocess import ModelGridSpec, prepare_volume
from LungSegLib.defaults import HU_WINDOW, NOISE_TARGET_HU, NOISE_TRIGGER_HU
from LungSegLib.errors import ModelError

WIDTH = HU_WINDOW[1] - HU_WINDOW[0]


def _chest_hu(size: int = 256) -> np.ndarray:
    """A model-grid chest slice in HU: air, a 40 HU body with -100 HU fat, two -850 HU lungs, 700 HU spine."""
    r, c = np.mgrid[:size, :size].astype(np.float64)
    hu = np.full((size, size), -1000.0)
    hu[((r - 128) / 90) ** 2 + ((c - 128) / 115) ** 2 < 1] = -100.0
    hu[((r - 128) / 84) ** 2 + ((c - 128) / 109) ** 2 < 1] = 40.0
    for cc in (80, 176):
        hu[((r - 120) / 60) ** 2 + ((c - cc) / 38) ** 2 < 1] = -850.0
    hu[(r - 190) ** 2 + (c - 128) ** 2 < 12 ** 2] = 700.0
    return hu


def _to_unit(hu: np.ndarray) -> np.ndarray:
    return np.clip(hu_to_unit(hu, HU_WINDOW), 0, 1).astype(np.float32)


@pytest.mark.parametrize("sd", [10.0, 40.0, 100.0, 150.0])
def test_the_estimate_reads_white_noise_in_hu(sd):
    """Within 20 % + 3 HU: the phantom's thin fat layer puts many edges among the tissue pixels, which read
    high; the trigger level was set with the same estimate on real CT."""
    rng = np.random.default_rng(0)
    hu = _chest_hu()[None] + rng.normal(0, sd, (3, 256, 256))
    estimate = noise_sd_hu(_to_unit(hu), HU_WINDOW)
    assert np.all(np.abs(estimate - sd) <= 0.2 * sd + 3.0), estimate
    assert np.ptp(estimate) < 0.1 * sd  # stable from slice to slice


def test_coarse_noise_is_read_too():
    """Noise with a grain of a few pixels (a low-dose soft-kernel scan) reads about as high as fine noise of
    the same SD (a second-difference estimate reads it at a fraction)."""
    rng = np.random.default_rng(6)
    coarse = ndimage.gaussian_filter(rng.normal(0, 1, (3, 256, 256)), (0, 1.0, 1.0))
    coarse *= 80.0 / coarse.std()
    estimate = noise_sd_hu(_to_unit(_chest_hu()[None] + coarse), HU_WINDOW)
    assert np.all(estimate > 0.6 * 80.0) and np.all(estimate > NOISE_TRIGGER_HU), estimate


def test_anatomy_edges_are_not_read_as_noise():
    assert noise_sd_hu(_to_unit(_chest_hu())[None], HU_WINDOW)[0] < 1.0


def test_a_slice_without_tissue_has_no_estimate():
    air = _to_unit(np.full((1, 256, 256), -1000.0) + np.random.default_rng(0).normal(0, 50, (1, 256, 256)))
    assert noise_sd_hu(air, HU_WINDOW)[0] == 0.0
    with pytest.raises(ValueError):
        noise_sd_hu(np.zeros((256, 256), np.float32), HU_WINDOW)


def test_smoothing_sigma_halves_with_the_noise():
    assert smoothing_sigma_px(100.0, 10.0) == pytest.approx(2 * smoothing_sigma_px(50.0, 10.0))
    # a Gaussian of that width brings white noise to the target
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 60.0, (512, 512))
    assert ndimage.gaussian_filter(noise, smoothing_sigma_px(60.0, 10.0)).std() == pytest.approx(10.0, rel=0.2)


def test_only_slices_above_the_trigger_are_smoothed():
    rng = np.random.default_rng(3)
    clean = _chest_hu()
    hu = np.stack([clean + rng.normal(0, 5, clean.shape), clean + rng.normal(0, 150, clean.shape),
                   clean + rng.normal(0, 15, clean.shape)])
    slices = _to_unit(hu)
    before = slices.copy()
    noise = suppress_noise(slices, HU_WINDOW, NOISE_TRIGGER_HU, NOISE_TARGET_HU)
    assert noise[0] < NOISE_TRIGGER_HU < noise[1] and noise[2] < NOISE_TRIGGER_HU
    assert np.array_equal(slices[0], before[0]) and np.array_equal(slices[2], before[2])
    # the smoothed slice: what is left of the noise in the body's flat interior is near the target
    interior = ndimage.binary_erosion(np.abs(clean - 40.0) < 1, iterations=6)
    sigma = smoothing_sigma_px(noise[1], NOISE_TARGET_HU)
    residual = (slices[1] - ndimage.gaussian_filter(_to_unit(clean), sigma, mode="nearest")) * WIDTH
    assert residual[interior].std() < 1.5 * NOISE_TARGET_HU
    assert abs(residual[interior].mean()) < 5.0
    # lungs stay lungs: the lung centre is still air-dense, the tissue still tissue
    assert slices[1][120, 80] * WIDTH + HU_WINDOW[0] < -700
    assert slices[1][128, 128] * WIDTH + HU_WINDOW[0] > -100


def test_trigger_zero_measures_but_never_smooths():
    rng = np.random.default_rng(4)
    slices = _to_unit(_chest_hu()[None] + rng.normal(0, 200, (1, 256, 256)))
    before = slices.copy()
    noise = suppress_noise(slices, HU_WINDOW, 0.0, NOISE_TARGET_HU)
    assert noise[0] > 100 and np.array_equal(slices, before)


def test_the_preparation_path_smooths_a_corrupted_slice_and_records_every_slice():
    rng = np.random.default_rng(5)
    volume = np.repeat(_chest_hu()[None], 6, axis=0).astype(np.int16)  # 256 x 256 at 1.5 mm: the model grid
    volume[3] = np.clip(volume[3] + rng.normal(0, 300, volume[3].shape), -1024, 3071).astype(np.int16)
    geometry = Geometry(spacing=(1.5, 1.5, 2.0))
    on = prepare_volume(volume, geometry, ModelGridSpec())
    off = prepare_volume(volume, geometry, ModelGridSpec(noise_trigger_hu=0.0))
    a, b = on.model_slices(slice(0, 6)), off.model_slices(slice(0, 6))
    same = [k for k in range(6) if np.array_equal(a[k], b[k])]
    assert len(same) == 5 and 3 not in same  # which canonical slice is the corrupted one depends on the order
    noisy = [k for k, v in on.noise_hu.items() if v > NOISE_TRIGGER_HU]
    assert sorted(on.noise_hu) == list(range(6)) and len(noisy) == 1
    assert a[noisy[0]].std() < b[noisy[0]].std()


def test_cards_set_the_levels_and_old_cards_get_the_defaults():
    assert spec_from_card({}).noise_trigger_hu == NOISE_TRIGGER_HU
    spec = spec_from_card({"input": {"noise_trigger_hu": 0}})
    assert spec.noise_trigger_hu == 0.0
    assert spec_from_card({"input": {"noise_trigger_hu": 40, "noise_target_hu": 15}}).noise_target_hu == 15.0
    with pytest.raises(ModelError, match="noise_target_hu"):
        spec_from_card({"input": {"noise_trigger_hu": 20, "noise_target_hu": 30}})

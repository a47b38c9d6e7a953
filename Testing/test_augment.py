"""Training augmentation: image and labels stay aligned, a mirror swaps right/left, disease stays in the lung."""
from __future__ import annotations

import numpy as np
import pytest

from LungSegLib.defaults import HU_WINDOW
from LungSegLib.training.augment import (AugmentConfig, Augmenter, air_bronchograms, flip_left_right, hu_to_unit,
                                         intensity, pathology, spatial)

SIZE = 128
# Intensities ([0, 1] model input) chosen per label so a warped image can be checked against its warped labels.
LEVEL = {0: hu_to_unit(40.0), 1: hu_to_unit(-850.0), 2: hu_to_unit(-700.0)}


def model_slice(size: int = SIZE):
    """A canonical model-grid slice: body, right lung (label 1) at small columns, smaller left lung (2)."""
    rows, cols = np.mgrid[:size, :size].astype(float) / size
    labels = np.zeros((size, size), np.uint8)
    labels[((rows - 0.5) / 0.28) ** 2 + ((cols - 0.3) / 0.14) ** 2 <= 1] = 1
    labels[((rows - 0.52) / 0.24) ** 2 + ((cols - 0.7) / 0.12) ** 2 <= 1] = 2
    body = ((rows - 0.5) / 0.4) ** 2 + ((cols - 0.5) / 0.46) ** 2 <= 1
    image = np.where(body, LEVEL[0], 0.0).astype(np.float32)
    for label in (1, 2):
        image[labels == label] = LEVEL[label]
    return image, labels


def mean_col(labels, label):
    return float(np.nonzero(labels == label)[1].mean())


def test_flip_mirrors_image_and_swaps_right_and_left():
    image, labels = model_slice()
    f_image, f_labels = flip_left_right(image, labels)
    np.testing.assert_array_equal(f_image, image[:, ::-1])
    # the old right lung, mirrored, is now labelled left, and vice versa
    np.testing.assert_array_equal(f_labels == 2, (labels == 1)[:, ::-1])
    np.testing.assert_array_equal(f_labels == 1, (labels == 2)[:, ::-1])
    assert mean_col(f_labels, 1) < mean_col(f_labels, 2)  # right lung still at the smaller columns
    assert (labels == 1).sum() > (labels == 2).sum()  # the fixture's lungs differ in size ...
    assert (f_labels == 2).sum() == (labels == 1).sum()  # ... so the swap is visible in the counts


@pytest.mark.parametrize("seed", range(4))
def test_spatial_warp_keeps_image_and_labels_aligned(seed):
    image, labels = model_slice()
    cfg = AugmentConfig(rotate_deg=20, scale=(0.8, 1.2), shift_px=10, p_elastic=1.0)
    w_image, w_labels = spatial(image, labels, np.random.default_rng(seed), cfg)
    assert w_image.shape == image.shape and w_labels.dtype == np.uint8
    assert set(np.unique(w_labels)) <= {0, 1, 2}
    assert not np.array_equal(w_labels, labels)  # it did move
    for label in (1, 2):
        inside = w_labels == label
        assert inside.sum() > 0.5 * (labels == label).sum()
        # away from the edges the warped image has the intensity of the warped label
        core = inside & (np.abs(w_image - LEVEL[label]) < 0.02)
        assert core.sum() / inside.sum() > 0.85


def test_augmenter_keeps_the_right_lung_on_the_patients_right():
    image, labels = model_slice()
    augment = Augmenter(AugmentConfig(p_flip=0.5, rotate_deg=15))
    rng = np.random.default_rng(0)
    for _ in range(12):
        a_image, a_labels = augment(image, labels, rng)
        assert a_image.dtype == np.float32 and a_image.min() >= 0.0 and a_image.max() <= 1.0
        assert mean_col(a_labels, 1) < mean_col(a_labels, 2)


def test_pathology_is_painted_inside_the_lung_only_and_labels_stay():
    image, labels = model_slice()
    rng = np.random.default_rng(1)
    dense = 0
    for _ in range(10):
        out = pathology(image, labels, rng)
        changed = np.abs(out - image) > 1e-6
        assert changed.any()
        assert not (changed & (labels == 0)).any()
        dense = max(dense, int((out[labels > 0] > hu_to_unit(-150.0)).sum()))
    assert dense > 20  # consolidation / fluid / nodules are soft-tissue dense


def test_intensity_changes_values_within_the_window():
    image, _ = model_slice()
    out = intensity(image, np.random.default_rng(2), AugmentConfig(hu_shift=40, noise_hu=30))
    assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, image)
    # lung stays much darker than soft tissue
    _, labels = model_slice()
    assert out[labels == 1].mean() < out[(labels == 0) & (image > 0.5)].mean() - 0.3


def test_same_seed_same_augmentation():
    image, labels = model_slice()
    a = Augmenter()(image, labels, np.random.default_rng(7))
    b = Augmenter()(image, labels, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def with_context(image):
    """The slice with two context channels (darker below, brighter above) -> (size, size, 3)."""
    return np.stack([image * 0.9, image, np.clip(image * 1.1, 0, 1)], axis=-1).astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
def test_one_channel_input_augments_exactly_like_a_plain_slice(seed):
    """The shipped (single-slice) recipe is unchanged by the channel axis training now adds."""
    image, labels = model_slice()
    cfg = AugmentConfig(p_pathology=1.0, p_negative=1.0, p_blur=1.0)
    plain = Augmenter(cfg)(image, labels, np.random.default_rng(seed))
    channel = Augmenter(cfg)(image[..., None], labels, np.random.default_rng(seed))
    np.testing.assert_allclose(channel[0][..., 0], plain[0], atol=1e-6)
    np.testing.assert_array_equal(channel[1], plain[1])


@pytest.mark.parametrize("seed", range(3))
def test_context_channels_move_with_the_slice_and_keep_their_own_values(seed):
    image, labels = model_slice()
    cfg = AugmentConfig(rotate_deg=20, p_elastic=1.0)
    w_plain, w_labels = spatial(image, labels, np.random.default_rng(seed), cfg)
    w_ctx, w_labels_ctx = spatial(with_context(image), labels, np.random.default_rng(seed), cfg)
    assert w_ctx.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(w_labels_ctx, w_labels)
    np.testing.assert_allclose(w_ctx[..., 1], w_plain, atol=1e-6)  # the same warp for every channel
    np.testing.assert_allclose(w_ctx[..., 0], 0.9 * w_plain, atol=1e-5)
    out = intensity(with_context(image), np.random.default_rng(seed), AugmentConfig(p_blur=1.0))
    # in-plane blur only: the darker channel below stays darker than the slice in the lungs
    assert out[..., 0][labels > 0].mean() < out[..., 1][labels > 0].mean()


def test_disease_painted_with_context_reaches_every_channel_inside_the_lung_only():
    image, labels = model_slice()
    rng = np.random.default_rng(3)
    for _ in range(5):
        out = pathology(with_context(image), labels, rng)
        changed = np.abs(out - with_context(image)) > 1e-6
        assert out.shape == (SIZE, SIZE, 3)
        assert not (changed & (labels == 0)[..., None]).any()
        assert all(changed[..., c].any() for c in range(3))


def _noise_sd_hu(out, flat):
    return float(np.std(out[flat])) * (HU_WINDOW[1] - HU_WINDOW[0])


def test_heavy_noise_is_low_dose_strength_and_plain_noise_stays_mild():
    image = np.full((SIZE, SIZE), hu_to_unit(-300.0), np.float32)  # far from the window's clipping ends
    flat = np.ones(image.shape, bool)
    plain = AugmentConfig(p_heavy_noise=0.0, p_blur=0.0, hu_shift=0.0, contrast=(1.0, 1.0))
    heavy = AugmentConfig(p_heavy_noise=1.0, p_blur=0.0, hu_shift=0.0, contrast=(1.0, 1.0))
    mild = [_noise_sd_hu(intensity(image, np.random.default_rng(s), plain), flat) for s in range(20)]
    strong = [_noise_sd_hu(intensity(image, np.random.default_rng(s), heavy), flat) for s in range(20)]
    assert max(mild) <= plain.noise_hu * 1.05
    assert min(strong) >= heavy.heavy_noise_hu[0] * 0.95 and max(strong) <= heavy.heavy_noise_hu[1] * 1.05
    assert max(strong) > 150.0  # the range is used, not just its low end


@pytest.mark.parametrize("seed", range(4))
def test_air_bronchograms_are_air_tubes_inside_the_dense_region(seed):
    image, labels = model_slice()
    region = labels == 1
    dense = image.copy()
    dense[region] = hu_to_unit(40.0)
    before = dense.copy()
    drawn = air_bronchograms(dense, region, np.random.default_rng(seed), HU_WINDOW)
    assert drawn.sum() >= 6
    from scipy import ndimage
    assert not (drawn & ~ndimage.binary_erosion(region)).any()  # never on or outside the region's edge
    assert np.all(dense[drawn] < hu_to_unit(-700.0))  # air, not tissue
    np.testing.assert_array_equal(dense[~drawn], before[~drawn])
    # tubes, not blobs: most drawn pixels have undrawn pixels within 2 pixels across the tube
    thick = ndimage.binary_erosion(drawn, iterations=2)
    assert thick.sum() < 0.2 * drawn.sum()


@pytest.mark.parametrize("p_bronchogram", [1.0, 0.0])
def test_consolidation_keeps_its_lung_label_with_bronchograms_and_patchy_aeration(p_bronchogram):
    from scipy import ndimage
    image, labels = model_slice()
    lung = labels > 0
    cfg = AugmentConfig(p_pathology=1.0, p_negative=0.0, p_flip=0.0, p_spatial=0.0, p_intensity=0.0,
                        p_bronchogram=p_bronchogram, p_patchy=0.5)
    augment = Augmenter(cfg)
    bronchograms, patchy = 0, 0
    for seed in range(30):
        out, out_labels = augment(image, labels, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_labels, labels)
        dense = lung & (out > hu_to_unit(-150.0))
        if dense.sum() < 50:
            continue
        outline = ndimage.binary_fill_holes(ndimage.binary_closing(dense, iterations=3)) & lung
        # air well below the lung's own -850 / -700 HU inside the dense area: a bronchogram
        bronchograms += int((outline & (out < hu_to_unit(-900.0))).sum() >= 6)
        # aerated spots left inside the painted area's outline (without bronchograms, only patchiness)
        patchy += int((outline & ~dense & (out < hu_to_unit(-400.0))).sum() > 10)
    if p_bronchogram:
        assert bronchograms >= 5
    else:
        assert bronchograms == 0
        assert patchy >= 3


def test_pleural_consolidation_setting_moves_the_blobs_to_the_pleura():
    from scipy import ndimage

    image, labels = model_slice(512)  # lungs much larger than the blobs
    depth = ndimage.distance_transform_edt(labels > 0)  # pixels from the lung's edge

    def mean_depth(p_pleural):
        depths = []
        for seed in range(40):
            out = pathology(image, labels, np.random.default_rng(seed), HU_WINDOW, p_bronchogram=0.0,
                            p_patchy=0.0, p_pleural=p_pleural)
            painted = np.abs(out - image) > 1e-6
            depths.append(depth[painted].mean())
        return float(np.mean(depths))

    assert mean_depth(1.0) < 0.85 * mean_depth(0.0)


def test_settings_that_are_off_draw_no_random_numbers():
    """The bundled recipe's training batches depend on the random stream: a setting added later and
    left off must not shift it (otherwise the defaults no longer reproduce the bundled model)."""
    from LungSegLib.training.augment import _happens

    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    assert not any(_happens(0.0, rng) for _ in range(5))
    assert rng.bit_generator.state == before
    assert _happens(1.0, rng) and rng.bit_generator.state != before

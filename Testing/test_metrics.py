"""Segmentation metrics against hand-computed values and a brute-force surface distance."""
from __future__ import annotations

import math

import numpy as np
import pytest

from LungSegLib.evaluation import metrics


def box(shape, k, j, i) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = True
    return m


def test_dice_and_iou_of_overlapping_boxes():
    pred = box((3, 6, 6), (1, 2), (1, 3), (1, 3))   # 4 voxels
    truth = box((3, 6, 6), (1, 2), (1, 4), (1, 3))  # 6 voxels, 4 shared
    assert metrics.dice(pred, truth) == pytest.approx(2 * 4 / 10)
    assert metrics.iou(pred, truth) == pytest.approx(4 / 6)
    assert metrics.dice(pred, ~pred) == 0.0


def test_empty_mask_conventions():
    empty = np.zeros((3, 4, 4), bool)
    one = box((3, 4, 4), (1, 2), (1, 2), (1, 2))
    spacing = (2.0, 1.0, 1.0)
    assert metrics.dice(empty, empty) == 1.0 and metrics.iou(empty, empty) == 1.0
    assert metrics.hd95(empty, empty, spacing) == 0.0 and metrics.assd(empty, empty, spacing) == 0.0
    for a, b in ((one, empty), (empty, one)):
        assert metrics.dice(a, b) == 0.0 and metrics.iou(a, b) == 0.0
        assert math.isinf(metrics.hd95(a, b, spacing)) and math.isinf(metrics.assd(a, b, spacing))
        assert all(math.isinf(v) for v in metrics.hd95_and_assd(a, b, spacing))
    with pytest.raises(ValueError):
        metrics.surface_distances(one, empty, spacing)


def test_surface_is_mask_minus_its_erosion():
    cube = box((5, 5, 5), (1, 4), (1, 4), (1, 4))
    s = metrics.surface(cube)
    assert s.sum() == 26 and not s[2, 2, 2]
    single = box((3, 3, 3), (1, 2), (1, 2), (1, 2))
    assert np.array_equal(metrics.surface(single), single)


def test_distances_use_anisotropic_spacing_per_axis():
    # spacing per array axis (k, j, i): a shift of 2 columns is 1 mm, of 1 slice is 3 mm
    spacing = (3.0, 2.0, 0.5)
    a = box((4, 4, 6), (1, 2), (1, 2), (1, 2))
    b_cols = box((4, 4, 6), (1, 2), (1, 2), (3, 4))
    b_slice = box((4, 4, 6), (2, 3), (1, 2), (1, 2))
    assert metrics.hd95(a, b_cols, spacing) == pytest.approx(1.0)
    assert metrics.assd(a, b_cols, spacing) == pytest.approx(1.0)
    assert metrics.hd95(a, b_slice, spacing) == pytest.approx(3.0)
    # diagonal: sqrt(3^2 + 2^2 + 1^2)
    b_diag = box((4, 4, 6), (2, 3), (2, 3), (3, 4))
    assert metrics.hd95(a, b_diag, spacing) == pytest.approx(math.sqrt(14.0))


def test_shifted_slab_hand_computed():
    # A 1-voxel-thick slab (all surface) and the same slab one slice up, 2.5 mm apart: every surface
    # voxel is 2.5 mm from the other surface, so HD95 = ASSD = 2.5 mm.
    a = box((6, 8, 8), (2, 3), (1, 7), (1, 7))
    b = box((6, 8, 8), (3, 4), (1, 7), (1, 7))
    assert metrics.hd95(a, b, (2.5, 0.7, 0.7)) == pytest.approx(2.5)
    assert metrics.assd(a, b, (2.5, 0.7, 0.7)) == pytest.approx(2.5)
    assert metrics.hd95(a, a, (2.5, 0.7, 0.7)) == 0.0


def brute_force_distances(a, b, spacing):
    pa = np.argwhere(metrics.surface(a)) * np.asarray(spacing)
    pb = np.argwhere(metrics.surface(b)) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1), d.min(axis=0)


def test_surface_distances_match_brute_force_on_random_blobs():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    spacing = (2.5, 0.8, 1.1)
    # blobs away from the array border and from each other's box edges: the crop must not matter
    a = ndimage.binary_opening(rng.random((14, 20, 22)) > 0.45, iterations=1)
    b = ndimage.binary_opening(rng.random((14, 20, 22)) > 0.5, iterations=1)
    a[:, :, :4] = False
    b[:3] = False
    got_ab, got_ba = metrics.surface_distances(a, b, spacing)
    want_ab, want_ba = brute_force_distances(a, b, spacing)
    assert np.allclose(np.sort(got_ab), np.sort(want_ab))
    assert np.allclose(np.sort(got_ba), np.sort(want_ba))
    assert metrics.hd95(a, b, spacing) == pytest.approx(max(np.percentile(want_ab, 95),
                                                            np.percentile(want_ba, 95)))
    pooled = np.concatenate([want_ab, want_ba])
    assert metrics.assd(a, b, spacing) == pytest.approx(pooled.mean())
    assert metrics.hd95_and_assd(a, b, spacing) == pytest.approx((metrics.hd95(a, b, spacing), pooled.mean()))


def test_valid_mask_leaves_slices_out():
    truth = box((4, 5, 5), (0, 4), (1, 4), (1, 4))
    pred = truth.copy()
    pred[2] = False  # a slice missing from the prediction
    keep = np.array([True, True, False, True])[:, None, None]
    assert metrics.dice(pred, truth) < 1.0
    assert metrics.dice(pred, truth, keep) == 1.0
    assert metrics.volume_ml(truth, (1.0, 1.0, 1.0), keep) == pytest.approx(27 / 1000)


def test_volume_in_ml_and_volume_error():
    mask = np.zeros((2, 5, 5), bool)
    mask.flat[:10] = True
    assert metrics.volume_ml(mask, (2.0, 1.0, 0.5)) == pytest.approx(10 * 1.0 / 1000)
    diff, pct = metrics.volume_error(1.1, 1.0)
    assert diff == pytest.approx(0.1) and pct == pytest.approx(10.0)
    diff, pct = metrics.volume_error(0.5, 0.0)
    assert diff == pytest.approx(0.5) and math.isnan(pct)


def test_swap_check_flags_exchanged_sides():
    truth = np.zeros((3, 6, 10), np.uint8)
    truth[:, 1:5, 1:4] = 1
    truth[:, 1:5, 6:9] = 2
    swapped, as_is, exchanged = metrics.sides_swapped(metrics.swap_labels(truth), truth)
    assert swapped and as_is == 0.0 and exchanged == 1.0
    swapped, as_is, exchanged = metrics.sides_swapped(truth, truth)
    assert not swapped and as_is == 1.0
    # a prediction that fits neither way is not called swapped, however slightly better exchanged
    junk = np.zeros_like(truth)
    junk[:, 1, 1] = 2
    junk[:, 5, 9] = 1
    swapped, as_is, exchanged = metrics.sides_swapped(junk, truth)
    assert exchanged > as_is and not swapped
    assert metrics.mean_lung_dice(truth, truth) == 1.0

"""The fast paths give what the plain formulas give: banded resampling, the narrowed way back to the
input grid, the direct label decision and the labelling-based hole filling."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from LungSegLib.core.geometry import interpolation_matrix
from LungSegLib.core.inference import _labels_from_lungs, _lung_box
from LungSegLib.core.postprocess import fill_lung_holes
from LungSegLib.core.preprocess import ModelGridSpec, SliceResampler, _Banded

SPEC = ModelGridSpec(size=64, pixel_mm=3.0)


@pytest.mark.parametrize("n_in,sp_in,n_out,sp_out", [(150, 0.7, 64, 3.0), (64, 3.0, 150, 0.7), (40, 2.0, 64, 3.0)])
def test_banded_equals_dense(n_in, sp_in, n_out, sp_out):
    w, _ = interpolation_matrix(n_in, sp_in, n_out, sp_out, offset_mm=-5.0)
    x = np.random.default_rng(0).random((2, n_in, n_in), dtype=np.float32)
    banded = _Banded.of(w, tile=16)
    np.testing.assert_allclose(banded.rows(x), np.matmul(w, x), atol=1e-5)
    np.testing.assert_allclose(banded.cols(x), np.matmul(x, w.T), atol=1e-5)


def test_to_input_within_gives_the_same_labels():
    resampler = SliceResampler((150, 170), (0.7, 0.8), (50.0, 70.0), SPEC)
    rng = np.random.default_rng(1)
    lungs = (rng.random((2, 2, 64, 64)) * 0.25).astype(np.float32)  # negligible everywhere ...
    lungs[:, :, 20:35, 10:30] = rng.random((2, 2, 15, 20))  # ... but here
    full, (rows, cols) = resampler.to_input(lungs, channel_axis=1)
    expected = np.zeros((2, 150, 170), np.uint8)
    expected[:, rows, cols] = _labels_from_lungs(full)
    box = _lung_box(lungs)
    assert box == ((20, 35), (10, 30))
    part, (rows, cols) = resampler.to_input(lungs, channel_axis=1, within=box)
    assert part.shape[2] < full.shape[2] and part.shape[3] < full.shape[3]
    got = np.zeros_like(expected)
    got[:, rows, cols] = _labels_from_lungs(part)
    np.testing.assert_array_equal(got, expected)
    assert expected.any()


def test_channels_first_equals_channels_last():
    resampler = SliceResampler((150, 170), (0.7, 0.8), (50.0, 70.0), SPEC)
    maps = np.random.default_rng(2).random((2, 64, 64, 2), dtype=np.float32)
    last, where_last = resampler.to_input(maps)
    first, where_first = resampler.to_input(np.ascontiguousarray(np.moveaxis(maps, -1, 1)), channel_axis=1)
    assert where_first == where_last
    np.testing.assert_array_equal(np.moveaxis(first, 1, -1), last)


def test_label_decision_is_argmax_with_ties_to_the_lower_label():
    rng = np.random.default_rng(3)
    lungs = rng.choice(np.float32([0.0, 0.25, 1 / 3, 0.5, 0.7]), size=(4, 2, 16, 16))
    background = 1.0 - lungs.sum(axis=1, keepdims=True)
    expected = np.argmax(np.concatenate([background, lungs], axis=1), axis=1).astype(np.uint8)
    np.testing.assert_array_equal(_labels_from_lungs(lungs), expected)


def test_hole_filling_matches_scipy():
    rng = np.random.default_rng(4)
    z, y, x = np.mgrid[0:30, 0:40, 0:50]
    labels = np.zeros((30, 40, 50), np.uint8)
    labels[((x - 14) / 10) ** 2 + ((y - 20) / 15) ** 2 + ((z - 15) / 12) ** 2 < 1] = 1
    labels[((x - 36) / 10) ** 2 + ((y - 20) / 15) ** 2 + ((z - 15) / 12) ** 2 < 1] = 2
    labels[rng.random(labels.shape) < 0.08] = 0  # holes of every shape, some open to the outside
    labels[13:17, 18:22, 12:16] = 0  # a closed 3-D cavity
    expected = labels.copy()
    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    for lung in (1, 2):
        mask = expected == lung
        filled = ndimage.binary_fill_holes(mask) | ndimage.binary_fill_holes(mask, structure=in_plane)
        expected[filled & (expected == 0)] = lung
    got = fill_lung_holes(labels.copy())
    np.testing.assert_array_equal(got, expected)
    assert (got > 0).sum() > (labels > 0).sum()

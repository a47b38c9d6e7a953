"""The one preprocessing path: slices resampled to the model's millimetre grid, centred on the body,
and model-grid maps brought back onto the input slices."""
from __future__ import annotations

import numpy as np
import pytest

from LungSegLib.core.geometry import interpolation_matrix, support
from LungSegLib.core.preprocess import ModelGridSpec, SliceResampler, body_center_mm, resampler_for_volume

SPEC = ModelGridSpec(size=64, pixel_mm=3.0)


# --- 1-D interpolation ------------------------------------------------------------------------------
def test_same_grid_is_the_identity():
    w, coverage = interpolation_matrix(7, 1.5, 7, 1.5)
    assert np.allclose(w, np.eye(7))
    assert np.allclose(coverage, 1.0)


@pytest.mark.parametrize("n_in, sp_in, n_out, sp_out, offset", [
    (40, 0.8, 30, 1.5, 2.0),     # shrinking (anti-aliased)
    (20, 3.0, 50, 1.1, -4.0),    # enlarging (linear), partly outside the input
    (33, 0.97, 33, 0.97, 0.5),   # half-pixel shift
])
def test_linear_ramps_are_preserved_where_the_input_covers(n_in, sp_in, n_out, sp_out, offset):
    w, coverage = interpolation_matrix(n_in, sp_in, n_out, sp_out, offset_mm=offset)
    assert w.shape == (n_out, n_in) and w.dtype == np.float32
    assert np.all(w >= 0) and np.all(coverage <= 1 + 1e-6)
    assert np.allclose(w.sum(axis=1), coverage, atol=1e-5)
    x_in = np.arange(n_in) * sp_in
    x_out = offset + np.arange(n_out) * sp_out
    inside = coverage > 1 - 1e-6
    assert inside.sum() > n_out // 3
    # a sampled triangle kernel is not exactly linear-preserving when shrinking: allow 0.1 input pixel
    assert np.allclose((w @ (2.0 * x_in + 5.0))[inside], (2.0 * x_out + 5.0)[inside], atol=2.0 * 0.1 * sp_in)
    outside = (x_out < -max(sp_in, sp_out)) | (x_out > x_in[-1] + max(sp_in, sp_out))
    assert np.all(coverage[outside] == 0)


def test_support_spans_the_used_inputs():
    w, _ = interpolation_matrix(100, 1.0, 5, 1.0, offset_mm=40.0)
    lo, hi = support(w)
    assert lo <= 40 and hi >= 45 and hi - lo <= 8
    assert support(np.zeros((3, 4))) == (0, 0)


# --- slice resampler --------------------------------------------------------------------------------
def test_a_dot_lands_at_its_millimetre_position_on_the_model_grid():
    shape, spacing = (51, 61), (0.9, 1.3)
    center = (20.0, 35.0)
    r = SliceResampler(shape, spacing, center, SPEC)
    slices = np.full((1,) + shape, -1024.0)  # 0 after windowing, like the space outside the scan
    dot = (30, 15)  # input row, column
    slices[0, dot[0] - 2:dot[0] + 3, dot[1] - 2:dot[1] + 3] = 400.0
    out = r.to_model(slices)
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    start = np.array(center) - (SPEC.size - 1) / 2 * SPEC.pixel_mm
    expected = (np.array(dot) * spacing - start) / SPEC.pixel_mm
    weights = out[0]
    found = np.array([weights.sum(axis=1) @ np.arange(64), weights.sum(axis=0) @ np.arange(64)])
    found /= weights.sum()
    assert np.allclose(found, expected, atol=0.25)


def test_window_and_outside_of_the_scan():
    shape = (20, 24)  # 2 mm pixels: 40 x 48 mm, much smaller than the 192 mm model grid
    r = SliceResampler(shape, (2.0, 2.0), (19.0, 23.0), SPEC)
    out = r.to_model(np.full((2,) + shape, 1500, np.int16))  # above the window: clipped to 1
    assert np.isclose(out.max(), 1.0, atol=1e-5)
    assert out[:, 0, 0].max() == 0.0 and out[:, -1, -1].max() == 0.0  # outside the scan: air
    assert np.allclose(r.to_model(np.full((1,) + shape, -3024.0)), 0.0)


@pytest.mark.parametrize("shape, spacing", [((45, 37), (4.1, 5.3)), ((128, 96), (1.0, 1.0)),
                                            ((9, 70), (7.0, 2.0))])
def test_maps_come_back_onto_the_input_slices(shape, spacing):
    extent = np.array(shape) * spacing
    center = tuple(extent / 2 - np.array(spacing) / 2 + [3.0, -2.0])
    r = SliceResampler(shape, spacing, center, SPEC)
    # a smooth (linear) map defined in model-grid millimetres
    start = np.array(center) - (SPEC.size - 1) / 2 * SPEC.pixel_mm
    grid = np.arange(SPEC.size) * SPEC.pixel_mm
    maps = (0.2 + 0.001 * grid[:, None] + 0.002 * grid[None, :])[None, :, :, None].repeat(2, axis=-1)
    maps[..., 1] *= 0.5
    back, (rows, cols) = r.to_input(maps)
    assert back.shape == (1, rows.stop - rows.start, cols.stop - cols.start, 2)
    assert 0 <= rows.start < rows.stop <= shape[0] and 0 <= cols.start < cols.stop <= shape[1]
    y = np.arange(rows.start, rows.stop) * spacing[0] - start[0]
    x = np.arange(cols.start, cols.stop) * spacing[1] - start[1]
    expected = 0.2 + 0.001 * y[:, None] + 0.002 * x[None, :]
    inner = (slice(1, -1), slice(1, -1))  # edge pixels may lie half outside the model grid
    # within ~0.5 mm of position (the map's gradient is 0.002 per mm)
    assert np.allclose(back[0, ..., 0][inner], expected[inner], atol=1e-3)
    assert np.allclose(back[0, ..., 1][inner], 0.5 * expected[inner], atol=5e-4)


def test_labels_go_to_the_model_grid_by_majority():
    shape, spacing = (60, 60), (1.0, 1.0)
    r = SliceResampler(shape, spacing, (29.5, 29.5), ModelGridSpec(size=32, pixel_mm=2.0))
    labels = np.zeros((1,) + shape, np.uint8)
    labels[0, 10:50, 5:25] = 1
    labels[0, 10:50, 35:55] = 2
    out = r.labels_to_model(labels, n_classes=3)
    assert out.dtype == np.uint8 and out.shape == (1, 32, 32)
    # model pixel m is at 29.5 + (m - 15.5) * 2 mm: the right block spans columns ~3..12, the left ~18..27
    assert np.all(out[0, 8:24, 4:11] == 1) and np.all(out[0, 8:24, 19:26] == 2)
    assert np.all(out[0, :, 14:17] == 0) and np.all(out[0, :2] == 0)
    assert abs((out == 1).sum() - 40 * 20 / 4) <= 40 and abs((out == 2).sum() - 40 * 20 / 4) <= 40


# --- body centring ------------------------------------------------------------------------------------
def test_body_centre_ignores_air_and_a_separated_couch():
    nz, h, w, sp = 6, 120, 140, (2.0, 2.0)
    vol = np.full((nz, h, w), -1000, np.int16)
    rr, cc = np.mgrid[:h, :w]
    body = ((rr - 50) / 35.0) ** 2 + ((cc - 85) / 45.0) ** 2 <= 1  # centre row 50, column 85
    vol[:, body] = 40
    vol[:, 100:106, 10:130] = 200  # couch, 30 mm below the body, wider than it
    center = body_center_mm(vol, sp)
    assert np.allclose(center, (50 * 2.0, 85 * 2.0), atol=6.0)
    r = resampler_for_volume(vol, sp, SPEC)
    assert r.center_mm == center and r.shape == (h, w) and r.pixel_spacing == sp


def test_body_centre_falls_back_to_the_slice_centre():
    vol = np.full((1, 31, 41), -1000, np.int16)
    assert np.allclose(body_center_mm(vol, (1.5, 0.5)), (15 * 1.5, 20 * 0.5))


def test_single_slice_and_anisotropic_volume(chest_phantom):
    shape = (1, 37, 45)
    geometry = chest_phantom.geometry(shape, (9.0, 6.0, 5.0))
    vol = chest_phantom.ct(geometry, shape)
    r = resampler_for_volume(vol, (6.0, 9.0), SPEC)
    # the phantom's body centre is the grid centre
    assert np.allclose(r.center_mm, (18 * 6.0, 22 * 9.0), atol=9.0)
    out = r.to_model(vol)
    assert out.shape == (1, 64, 64) and 0.0 <= out.min() and out.max() <= 1.0

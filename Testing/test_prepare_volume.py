"""One preparation path (orientation -> model grid -> intensity) and one HU scaling, shared by inference
and training."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.core.intensity import hu_to_unit, window, window_offset_scale
from LungSegLib.core.preprocess import ModelGridSpec, prepare_volume
from LungSegLib.defaults import BODY_HU, HU_WINDOW

SPEC = ModelGridSpec(size=64, pixel_mm=6.0)
SHAPE = (10, 80, 72)
SPACING = (4.5, 4.0, 8.0)


def test_one_hu_scaling():
    lo, hi = HU_WINDOW
    offset, scale = window_offset_scale(HU_WINDOW)
    assert (offset, scale) == (lo, 1.0 / (hi - lo))
    assert hu_to_unit(lo) == 0.0 and hu_to_unit(hi) == pytest.approx(1.0)
    hu = np.array([-3024.0, lo, BODY_HU, 40.0, hi, 3000.0])
    assert np.allclose(window(hu), hu_to_unit(np.clip(hu, lo, hi)), atol=1e-7)
    # the model grid's intensities follow the same formula: a uniform slice stays uniform
    prepared = prepare_volume(np.full((2, 40, 40), 40, np.int16), _identity_geometry(),
                              ModelGridSpec(size=8, pixel_mm=2.0))
    assert np.allclose(prepared.model_slices(slice(None)), hu_to_unit(40.0), atol=1e-6)


def _identity_geometry(spacing=(2.0, 2.0, 3.0)):
    from LungSegLib.core.geometry import Geometry

    return Geometry(spacing, (0.0, 0.0, 0.0))


def test_prepared_volume_is_the_canonical_stack_on_the_model_grid(chest_phantom):
    flip_x = np.diag([-1.0, 1.0, 1.0])  # stored right-left mirrored
    geometry = chest_phantom.geometry(SHAPE, SPACING, direction=flip_x)
    ct = chest_phantom.ct(geometry, SHAPE)
    prepared = prepare_volume(ct, geometry, SPEC)
    assert prepared.canonical.shape == (SHAPE[0], SHAPE[1], SHAPE[2])
    assert np.shares_memory(prepared.canonical, ct)  # a view: the input is never copied or modified
    slices = prepared.model_slices(np.arange(SHAPE[0]))
    assert slices.shape == (SHAPE[0], 64, 64) and slices.dtype == np.float32
    assert 0.0 <= slices.min() and slices.max() <= 1.0
    # the phantom's right lung (label 1) lies on the canonical stack's smaller columns
    labels = prepared.orientation.to_canonical(chest_phantom.labels(geometry, SHAPE))
    cols = np.nonzero(labels)[2]
    assert cols[labels[np.nonzero(labels)] == 1].mean() < cols[labels[np.nonzero(labels)] == 2].mean()


@pytest.mark.parametrize("context_mm", [0.0, 6.0])
def test_training_caches_exactly_what_inference_feeds_the_network(chest_phantom, tmp_path, context_mm):
    from LungSegLib.training.dataset import find_cases, prepare_case

    spec = ModelGridSpec(size=SPEC.size, pixel_mm=SPEC.pixel_mm, context_mm=context_mm)

    geometry = chest_phantom.geometry(SHAPE, SPACING)
    ct, labels = chest_phantom.ct(geometry, SHAPE), chest_phantom.labels(geometry, SHAPE)
    folder = tmp_path / "cases" / "p1"
    folder.mkdir(parents=True)
    for array, name in ((ct, "ct.nrrd"), (labels, "label.nrrd")):
        image = sitk.GetImageFromArray(array)
        geometry.apply_to_sitk(image)
        sitk.WriteImage(image, str(folder / name))
    cached = prepare_case(find_cases(tmp_path / "cases")[0], tmp_path / "cache", spec)
    # what segment_array feeds the network, batch by batch
    prepared = prepare_volume(ct, geometry, spec)
    reuse = {}
    fed = np.concatenate([prepared.model_input(np.arange(a, min(a + 3, SHAPE[0])), reuse)
                          for a in range(0, SHAPE[0], 3)])
    assert fed.shape == (SHAPE[0], 64, 64, spec.channels)
    np.testing.assert_array_equal(np.asarray(cached.image), fed.astype(np.float16))


@pytest.mark.parametrize("z_direction", [1.0, -1.0])
def test_context_channels_show_the_ct_a_fixed_distance_below_and_above(z_direction):
    """Channels 0/1/2 are the CT ``context_mm`` towards the feet, the slice, ``context_mm`` towards the
    head (patient directions whatever the file's slice order), interpolated in mm and clamped at the ends."""
    from LungSegLib.core.geometry import Geometry

    n, spacing_z, context = 12, 4.0, 6.0
    geometry = Geometry((2.0, 2.0, spacing_z), (0.0, 0.0, 0.0), np.diag([1.0, 1.0, z_direction]))
    # each slice uniform; HU grows 50 per slice towards the head (patient superior = +z in LPS)
    k = np.arange(n) if z_direction > 0 else np.arange(n)[::-1]
    ct = np.broadcast_to((-900 + 50 * k)[:, None, None], (n, 40, 40)).astype(np.int16)
    spec = ModelGridSpec(size=8, pixel_mm=2.0, context_mm=context)
    prepared = prepare_volume(ct, geometry, spec)
    reuse = {}
    x = np.concatenate([prepared.model_input(np.arange(a, min(a + 5, n)), reuse) for a in range(0, n, 5)])
    assert x.shape == (n, 8, 8, 3) and spec.channels == 3
    assert len(reuse) < n  # slices below the batch's needs are dropped as the walk goes up
    centre = x[:, 4, 4]  # (n, 3) at the middle pixel
    position = np.arange(n)[:, None] + np.array([-1, 0, 1]) * context / spacing_z  # canonical = superior
    expected = hu_to_unit(-900 + 50 * np.clip(position, 0, n - 1))
    np.testing.assert_allclose(centre, expected, atol=1e-5)
    # resampling each slice once (reuse) or afresh gives the same input
    np.testing.assert_allclose(prepared.model_input(np.arange(3, 7)), x[3:7], atol=1e-6)
    # without context: one channel, the slice itself
    plain = prepare_volume(ct, geometry, ModelGridSpec(size=8, pixel_mm=2.0))
    np.testing.assert_array_equal(plain.model_input(np.arange(n))[..., 0], plain.model_slices(np.arange(n)))

"""Augmentation by the label convention: disease at the lung border is never fat-dense, and lookalikes
(fat pads, gas pockets, pleural effusion) are painted as background (training/negatives.py)."""
from __future__ import annotations

import numpy as np
import pytest

from LungSegLib.training.augment import AugmentConfig, Augmenter, BORDER_MIN_HU, hu_to_unit, pathology
from LungSegLib.training.negatives import (effusion_outside, fat_at_border, gas_beside_lung, negative_example,
                                           outer_boundary)

from test_augment import model_slice

WINDOW = (-1024.0, 600.0)


def hu(image):
    return image * (WINDOW[1] - WINDOW[0]) + WINDOW[0]


@pytest.mark.parametrize("seed", range(6))
def test_fat_pad_at_the_border_is_fat_and_background(seed):
    image, labels = model_slice()
    out, out_labels = fat_at_border(image, labels, np.random.default_rng(seed), WINDOW)
    painted = np.abs(out - image) > 1e-6
    assert painted.sum() > 10
    values = hu(out[painted])
    assert -170 < np.median(values) < -40  # fat density (± texture)
    assert (out_labels[painted] == 0).all()  # fat is never lung
    assert ((labels > 0) & painted).any()  # it took the place of lung at the border ...
    assert ((labels == 0) & painted).any()  # ... and reaches into the tissue outside it
    assert (out_labels[~painted] == labels[~painted]).all()
    assert not (painted & (image == 0.0)).any()  # never into the air around the patient


@pytest.mark.parametrize("seed", range(6))
def test_gas_pocket_stays_background_behind_a_wall(seed):
    from scipy import ndimage

    image, labels = model_slice()
    out, out_labels = gas_beside_lung(image, labels, np.random.default_rng(seed), WINDOW)
    painted = np.abs(out - image) > 1e-6
    assert painted.sum() > 5
    assert np.median(hu(out[painted])) < -850
    np.testing.assert_array_equal(out_labels, labels)
    dist = ndimage.distance_transform_edt(labels == 0)
    assert dist[painted].min() > 2.0  # a wall of tissue between gas and lung


@pytest.mark.parametrize("seed", range(4))
def test_gas_pocket_below_the_lung_bases_lies_inside_the_body(seed):
    from scipy import ndimage

    image, labels = model_slice()
    image[labels > 0] = image.max()  # a slice below the bases: soft tissue where the lungs were
    labels = np.zeros_like(labels)
    out, out_labels = negative_example(image, labels, np.random.default_rng(seed), WINDOW,
                                       gas_below_bases=True)  # only gas fits
    painted = np.abs(out - image) > 1e-6
    assert painted.sum() > 5 and np.median(hu(out[painted])) < -850
    assert not out_labels.any()
    body = image > 0.0
    assert (ndimage.distance_transform_edt(body)[painted] > 8).all()  # inside the abdomen, not at the skin


def test_a_slice_below_the_bases_is_left_alone_in_the_bundled_recipe():
    image, labels = model_slice()
    image[labels > 0] = image.max()
    labels = np.zeros_like(labels)
    for seed in range(6):
        out, out_labels = negative_example(image, labels, np.random.default_rng(seed), WINDOW)
        np.testing.assert_array_equal(out, image)
        assert not out_labels.any()


@pytest.mark.parametrize("seed", range(6))
def test_effusion_is_fluid_outside_the_lung(seed):
    image, labels = model_slice()
    out, out_labels = effusion_outside(image, labels, np.random.default_rng(seed), WINDOW)
    painted = np.abs(out - image) > 1e-6
    assert painted.sum() > 20
    assert (labels[painted] > 0).all() and (out_labels[painted] == 0).all()
    assert -40 < np.median(hu(out[painted])) < 60
    rows = np.nonzero(painted)[0]
    lung_rows = np.nonzero(labels > 0)[0]
    assert rows.mean() > np.median(lung_rows)  # dependent: towards posterior (larger rows)


def test_painted_disease_touching_the_border_is_denser_than_fat():
    image, labels = model_slice()
    border = outer_boundary(labels, 2)
    touched = 0
    for seed in range(40):
        out = pathology(image, labels, np.random.default_rng(seed))
        painted = (np.abs(out - image) > 1e-6) & border
        if painted.sum() < 5:
            continue
        touched += 1
        values = hu(out[painted])
        # a lesion at the pleura is at least BORDER_MIN_HU (its texture, 12 HU SD, aside): not fat
        assert np.median(values) >= BORDER_MIN_HU - 15
        assert np.mean((values >= -150) & (values <= -50)) < 0.1
    assert touched >= 10


def test_augmenter_paints_negatives_as_background():
    image, labels = model_slice()
    augment = Augmenter(AugmentConfig(p_pathology=0.0, p_negative=1.0, p_flip=0.0, p_spatial=0.0,
                                      p_intensity=0.0))
    rng = np.random.default_rng(3)
    lost = 0
    for _ in range(12):
        a_image, a_labels = augment(image, labels, rng)
        assert a_image.dtype == np.float32 and 0.0 <= a_image.min() and a_image.max() <= 1.0
        assert not np.array_equal(a_image, image)
        assert set(np.unique(a_labels)) <= {0, 1, 2}
        assert ((a_labels > 0) <= (labels > 0)).all()  # negatives only ever take lung away
        lost += int((labels > 0).sum() - (a_labels > 0).sum())
    assert lost > 0
    # and with p_negative=0 the labels are never touched
    plain = Augmenter(AugmentConfig(p_pathology=1.0, p_negative=0.0, p_flip=0.0, p_spatial=0.0, p_intensity=0.0))
    for _ in range(5):
        np.testing.assert_array_equal(plain(image, labels, rng)[1], labels)


def test_negative_example_kinds_and_clipping():
    image, labels = model_slice()
    for kind in ("fat", "gas", "effusion"):
        out, out_labels = negative_example(image, labels, np.random.default_rng(0), WINDOW, kinds=(kind,))
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        assert not np.array_equal(out, image)
    assert hu_to_unit(-1024.0) == 0.0


@pytest.mark.parametrize("window", [(-1000.0, 200.0), (-1200.0, 1000.0)])
def test_painted_densities_follow_the_models_hu_window(window):
    """A model fine-tuned with ``--init`` keeps its own HU window: disease, fat and noise must be painted
    in HU of that window, not the default one (the window used to be a second, fixed copy)."""
    lo, hi = window
    _, labels = model_slice()
    image = np.full(labels.shape, (-100.0 - lo) / (hi - lo), np.float32)  # soft tissue
    image[labels > 0] = (-850.0 - lo) / (hi - lo)  # aerated lung
    augment = Augmenter(AugmentConfig(p_pathology=1.0, p_negative=0.0, p_flip=0.0, p_spatial=0.0,
                                      p_intensity=0.0), window)
    painted_hu = []
    for seed in range(8):
        out, out_labels = augment(image, labels, np.random.default_rng(seed))
        painted = np.abs(out - image) > 1e-6
        painted_hu.append(out[painted] * (hi - lo) + lo)
        np.testing.assert_array_equal(out_labels, labels)
    values = np.concatenate(painted_hu)
    # consolidation/nodules −100..+80 HU, softened at their edge towards the −850 HU lung around them
    assert -160 < np.median(values) < 100


def test_train_config_reads_runs_saved_with_a_window_copy_in_the_augmentation():
    from LungSegLib.training.train import TrainConfig

    saved = TrainConfig(hu_window=(-1000.0, 200.0)).to_json()
    saved["augment_config"]["hu_window"] = [-1024.0, 600.0]  # how earlier versions saved it
    config = TrainConfig.from_json(saved)
    assert config.hu_window == (-1000.0, 200.0)
    assert config.augment_config == AugmentConfig()


@pytest.mark.parametrize("painter", [fat_at_border, gas_beside_lung, effusion_outside])
def test_lookalikes_with_context_channels_span_every_channel(painter):
    """With through-plane context the lookalike is painted in all channels at the same pixels, chosen
    from the slice itself (the middle channel)."""
    from test_augment import with_context

    image, labels = model_slice()
    ctx = with_context(image)
    out, out_labels = painter(ctx, labels, np.random.default_rng(4), WINDOW)
    plain, plain_labels = painter(image, labels, np.random.default_rng(4), WINDOW)
    painted = np.abs(out - ctx) > 1e-6
    assert out.shape == ctx.shape and painted[..., 1].sum() > 5
    np.testing.assert_array_equal(painted[..., 0], painted[..., 1])
    np.testing.assert_array_equal(out_labels, plain_labels)  # the same place as on the plain slice

"""Post-processing on the canonical stack: islands, holes, side fixes and splitting a binary mask by side."""
from __future__ import annotations

import numpy as np
import pytest

from LungSegLib.core.postprocess import (LEFT, RIGHT, PostprocessOptions, fill_lung_holes, fix_left_right,
                                    keep_main_components, postprocess, split_by_side)


def two_lungs(shape=(12, 40, 60)) -> np.ndarray:
    """Canonical labels: right lung (1) at small columns, left lung (2) at large columns."""
    labels = np.zeros(shape, np.uint8)
    labels[2:10, 8:32, 6:26] = RIGHT
    labels[2:10, 8:32, 34:54] = LEFT
    return labels


def test_stray_islands_are_dropped_and_big_parts_kept():
    labels = two_lungs()
    labels[0, 0:2, 0:2] = RIGHT          # a speck far from everything
    labels[11, 36:39, 56:59] = LEFT       # another
    big_part = np.zeros_like(labels, bool)
    big_part[2:10, 34:40, 8:24] = True    # a separate right-lung part, 20 % of the main one
    labels[big_part] = RIGHT
    out = keep_main_components(labels.copy())
    assert out[0, 0, 0] == 0 and out[11, 37, 57] == 0
    assert np.all(out[big_part] == RIGHT)
    assert (out == RIGHT).sum() == 8 * 24 * 20 + big_part.sum()
    assert (out == LEFT).sum() == 8 * 24 * 20


def test_small_island_touching_the_other_lung_joins_it():
    labels = two_lungs()
    labels[4:6, 12:14, 54] = RIGHT  # a mislabelled sliver on the left lung's outer edge
    out = keep_main_components(labels.copy())
    assert np.all(out[4:6, 12:14, 54] == LEFT)
    assert (out == RIGHT).sum() == 8 * 24 * 20


def test_swapped_sides_are_fixed():
    labels = two_lungs()
    swapped = np.where(labels == RIGHT, LEFT, np.where(labels == LEFT, RIGHT, 0)).astype(np.uint8)
    assert np.array_equal(fix_left_right(swapped), labels)
    one_lung = np.where(labels == LEFT, LEFT, 0).astype(np.uint8)
    assert np.array_equal(fix_left_right(one_lung.copy()), one_lung)  # nothing to compare with


@pytest.mark.parametrize("wrong", [RIGHT, LEFT])
def test_both_lungs_under_one_label_are_split_by_side(wrong):
    """A network that never learned the sides calls both lungs one of them (and a speck the other)."""
    labels = two_lungs()
    one_sided = np.where(labels > 0, wrong, 0).astype(np.uint8)
    speck = (5, 10, 10) if wrong == LEFT else (5, 10, 50)
    one_sided[speck] = RIGHT if wrong == LEFT else LEFT
    out = fix_left_right(one_sided)
    assert np.array_equal(out[labels > 0], labels[labels > 0])
    # a single lung (the other removed or collapsed) keeps its label, even with a speck of the other
    single = np.where(labels == LEFT, LEFT, 0).astype(np.uint8)
    single[5, 10, 40] = RIGHT
    assert np.array_equal(fix_left_right(single.copy()), single)


def test_enclosed_and_in_plane_holes_are_filled_but_not_over_the_other_lung():
    labels = two_lungs()
    labels[5, 15:18, 12:15] = 0            # a nodule enclosed in 3-D
    labels[2:10, 20:23, 18:21] = 0         # a vessel running through all lung slices (open in z)
    labels[2:10, 24:27, 40:43] = RIGHT     # the other lung's label inside the left lung stays
    out = fill_lung_holes(labels.copy())
    assert np.all(out[5, 15:18, 12:15] == RIGHT)
    assert np.all(out[2:10, 20:23, 18:21] == RIGHT)
    assert np.all(out[2:10, 24:27, 40:43] == RIGHT)
    assert np.all(out[:, :, 26:34] == 0)   # the gap between the lungs is not a hole


@pytest.mark.parametrize("options", [
    PostprocessOptions(keep_largest=False),
    PostprocessOptions(fill_holes=False),
    PostprocessOptions(fix_sides=False),
    PostprocessOptions(False, False, False),
])
def test_each_step_can_be_turned_off(options):
    labels = two_lungs()
    labels[0, 0, 0] = RIGHT          # speck
    labels[5, 15:18, 12:15] = 0      # hole
    swapped = np.where(labels == RIGHT, LEFT, np.where(labels == LEFT, RIGHT, 0)).astype(np.uint8)
    out = postprocess(swapped.copy(), options)
    right_label = RIGHT if options.fix_sides else LEFT
    assert (out[0, 0, 0] == 0) == options.keep_largest
    assert np.all(out[5, 15:18, 12:15] == (right_label if options.fill_holes else 0))
    assert out[5, 20, 10] == right_label


def test_postprocess_works_in_place_and_on_empty_or_single_slice_volumes():
    labels = two_lungs()
    labels[0, 0, 0] = RIGHT
    assert postprocess(labels) is labels and labels[0, 0, 0] == 0
    empty = np.zeros((3, 5, 5), np.uint8)
    assert not postprocess(empty).any()
    one = two_lungs()[4:5]
    assert np.array_equal(postprocess(one.copy()), one)


def test_split_by_side_separate_lungs():
    labels = two_lungs()
    assert np.array_equal(split_by_side(labels > 0), labels)
    assert not split_by_side(np.zeros((2, 3, 4), bool)).any()


def test_split_by_side_cuts_lungs_touching_at_the_anterior_junction():
    labels = two_lungs()
    mask = labels > 0
    mask[2:10, 8:12, 26:34] = True  # a bridge: one 3-D component
    out = split_by_side(mask)
    assert np.array_equal(out > 0, mask)
    assert np.all(out[labels == RIGHT] == RIGHT) and np.all(out[labels == LEFT] == LEFT)
    bridge = out[2:10, 8:12, 26:34]
    assert (bridge == RIGHT).any() and (bridge == LEFT).any()
    cols_r = np.argwhere(out == RIGHT)[:, 2]
    cols_l = np.argwhere(out == LEFT)[:, 2]
    assert cols_r.max() < cols_l.min()  # one cut column between the sides


def test_an_apex_piece_cut_off_above_the_lung_is_kept_and_gas_below_is_not():
    """The network can cut a lung apex off at a tumour (seen on a left-out case: 45 mL, 1.6 % of the
    lung); it lies wholly in the upper half of the lung's slices, abdominal gas below the base."""
    labels = np.zeros((40, 40, 60), np.uint8)
    labels[4:30, 8:32, 6:26] = RIGHT
    labels[4:34, 8:32, 34:54] = LEFT
    apex = np.zeros_like(labels, bool)
    apex[31:36, 14:22, 10:18] = True      # above a one-slice gap: 320 voxels, 2.6 % of the right lung
    gas = np.zeros_like(labels, bool)
    gas[0:3, 14:22, 40:48] = True         # under the left base, one-slice gap: 192 voxels, 1.3 %
    speck = np.zeros_like(labels, bool)
    speck[37:39, 2:4, 2:4] = True         # 8 voxels above the right lung: too small to be lung
    labels[apex], labels[speck], labels[gas] = RIGHT, RIGHT, LEFT
    out = keep_main_components(labels.copy())
    assert (out[apex] == RIGHT).all()
    assert (out[gas] == 0).all() and (out[speck] == 0).all()
    dropped = keep_main_components(labels.copy(), upper_fraction=0.0)
    assert (dropped[apex] == 0).all()
    # the same island in the lower half of the lung's slices is dropped
    low = labels.copy()
    low[apex] = 0
    low[5:10, 36:39, 10:18] = 0
    low[5:10, 34:40, 10:18] = 0
    island = np.zeros_like(labels, bool)
    island[5:10, 35:40, 10:18] = True     # below the right lung's middle slice, apart from it
    low[island] = RIGHT
    assert (keep_main_components(low.copy())[island] == 0).all()
    # and through postprocess() with its options
    opts = PostprocessOptions(fill_holes=False, fix_sides=False, remove_airways=False, boundary_midpoint=False)
    assert (postprocess(labels.copy(), opts)[apex] == RIGHT).all()
    assert (postprocess(labels.copy(), opts, ct=np.zeros(labels.shape), spacing=(3.0, 1.0, 1.0))[apex] == RIGHT).all()


def test_an_island_far_above_the_apex_is_not_lung():
    """Air in the neck or between raised arms (seen on a left-out case: 36 mL, 55 mm above the apex) is
    not a piece of apex: an upper island is kept only within ``upper_island_gap_mm`` of the lung's top."""
    labels = np.zeros((40, 40, 60), np.uint8)
    labels[4:24, 8:32, 6:26] = RIGHT
    labels[4:24, 8:32, 34:54] = LEFT
    near, far = np.zeros_like(labels, bool), np.zeros_like(labels, bool)
    near[26:30, 14:22, 10:18] = True      # 2 empty slices (6 mm at 3 mm) above the right lung
    far[33:38, 14:22, 40:48] = True       # 9 empty slices (27 mm) above the left lung
    labels[near], labels[far] = RIGHT, LEFT
    opts = PostprocessOptions(fill_holes=False, fix_sides=False, remove_airways=False, boundary_midpoint=False)
    ct = np.full(labels.shape, -850.0)
    out = postprocess(labels.copy(), opts, ct=ct, spacing=(3.0, 1.0, 1.0))
    assert (out[near] == RIGHT).all() and (out[far] == 0).all()
    # at 1 mm slices the far island is 9 mm away: kept; with no gap limit (no spacing given) as well
    assert (postprocess(labels.copy(), opts, ct=ct, spacing=(1.0, 1.0, 1.0))[far] == LEFT).all()
    assert (keep_main_components(labels.copy())[far] == LEFT).all()


def test_an_upper_island_outside_the_lung_footprint_is_not_lung():
    """The couch's air cells behind the patient, labelled lung at the level of the upper lobes (a left-out
    fold of the bundled recipe: 15 mL on one slice, HD95 85 mm), lie in the upper half of the lung's slices
    like a cut-off apex piece, but outside the lung's in-plane footprint."""
    labels = np.zeros((40, 60, 60), np.uint8)
    labels[4:30, 8:32, 6:26] = RIGHT
    labels[4:30, 8:32, 34:54] = LEFT
    couch = np.zeros_like(labels, bool)
    couch[22:25, 50:56, 4:24] = True      # behind the patient (rows past the lungs), 360 voxels: 2.9 %
    apex = np.zeros_like(labels, bool)
    apex[31:35, 14:22, 10:18] = True      # above the lung, over its footprint
    labels[couch], labels[apex] = RIGHT, RIGHT
    out = keep_main_components(labels.copy())
    assert (out[couch] == 0).all()
    assert (out[apex] == RIGHT).all()
    # half over the footprint is enough (an upper-lobe piece at the lung's edge)
    edge = labels.copy()
    edge[couch] = 0
    piece = np.zeros_like(labels, bool)
    piece[31:34, 28:36, 10:18] = True     # above a one-slice gap; rows 28-31 over the lung, 32-35 beyond it
    edge[piece] = RIGHT
    assert (keep_main_components(edge.copy())[piece] == RIGHT).all()
    edge[piece] = 0
    piece[31:34, 28:30] = False           # now a third over the lung: dropped
    edge[piece] = RIGHT
    assert (keep_main_components(edge)[piece] == 0).all()

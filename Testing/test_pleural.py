"""Dense lesions against the rib cage that the network cut out of the lung are put back
(``LungSegLib.core.pleural``, a default post-processing step), and nothing else is: not the heart in a
medial concavity, not tissue under the lung base, not fat, not a bite far from the ribs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from LungSegLib.core.pleural import fill_pleural_lesions
from LungSegLib.core.postprocess import PostprocessOptions, postprocess
from LungSegLib.labels import LEFT, RIGHT

SPACING = (3.0, 1.5, 1.5)  # (slice, row, column) mm
SHAPE = (40, 160, 200)


def _chest(ribs: bool = True):
    """A canonical chest (columns towards patient left): +40 HU body, two -850 HU lungs spanning slices
    4-35, a 2-pixel bone ring (ribs) around them, and the labels of those lungs."""
    z, r, c = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    ct = np.full(SHAPE, -1000, dtype=np.int16)
    body = ((r - 80) / 75.0) ** 2 + ((c - 100) / 95.0) ** 2 < 1
    ct[np.broadcast_to(body, SHAPE)] = 40
    ring = ((r - 80) / 62.0) ** 2 + ((c - 100) / 82.0) ** 2
    if ribs:
        ct[np.broadcast_to((ring > 1.0) & (ring < 1.07), SHAPE)] = 700
    labels = np.zeros(SHAPE, dtype=np.uint8)
    height = np.abs(z - 19.5) / 16.0
    for value, centre in ((RIGHT, 55), (LEFT, 145)):
        lung = ((r - 80) / 55.0) ** 2 + ((c - centre) / 36.0) ** 2 + height ** 6 < 1  # steep sides, like a rib cage
        labels[lung] = value
        ct[lung] = -850
    return ct, labels


def _ball(centre, radius_mm):
    z, r, c = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return np.hypot(np.hypot((z - centre[0]) * SPACING[0], (r - centre[1]) * SPACING[1]),
                    (c - centre[2]) * SPACING[2]) <= radius_mm


def _cut(ct, labels, region, hu):
    """Paint ``region`` of the lungs at ``hu`` and take it out of the labels (what the network did)."""
    lesion = region & (labels > 0)
    ct[lesion] = hu
    cut = labels.copy()
    cut[lesion] = 0
    return lesion, cut


def test_a_lesion_against_the_ribs_is_put_back():
    ct, labels = _chest()
    lesion, cut = _cut(ct, labels, _ball((20, 80, 22), 22.0), 35)  # the right lung's lateral side
    assert lesion.sum() > 1000
    added = fill_pleural_lesions(cut, ct, SPACING)
    assert (cut[lesion] == RIGHT).mean() > 0.8
    assert (added & ~lesion).sum() < 0.05 * added.sum()  # hardly anything beyond the old lung
    assert not (cut[added] == LEFT).any()


@pytest.mark.parametrize("case", ["medial", "base", "fat", "no ribs"])
def test_what_is_not_a_pleural_lesion_stays_out(case):
    ct, labels = _chest(ribs=case != "no ribs")
    centre = {"medial": (20, 80, 178), "base": (5, 80, 22), "fat": (20, 80, 22), "no ribs": (20, 80, 22)}[case]
    if case == "medial":  # the left lung's medial side (like the heart in the cardiac notch)
        centre = (20, 80, 112)
    hu = -100 if case == "fat" else 35
    lesion, cut = _cut(ct, labels, _ball(centre, 22.0), hu)
    assert lesion.sum() > 300
    before = cut.copy()
    added = fill_pleural_lesions(cut, ct, SPACING)
    assert (added & lesion).sum() < 0.05 * lesion.sum(), case
    assert np.array_equal(cut > 0, (before > 0) | added)


def test_it_is_a_default_step_that_needs_the_ct():
    ct, labels = _chest()
    lesion, cut = _cut(ct, labels, _ball((20, 80, 22), 22.0), 35)
    on = postprocess(cut.copy(), PostprocessOptions(remove_airways=False, boundary_midpoint=False), ct=ct,
                     spacing=SPACING)
    off = postprocess(cut.copy(), PostprocessOptions(remove_airways=False, boundary_midpoint=False,
                                                     fill_pleural_lesions=False), ct=ct, spacing=SPACING)
    without_ct = postprocess(cut.copy(), PostprocessOptions(remove_airways=False, boundary_midpoint=False))
    assert (on[lesion] == RIGHT).mean() > 0.8
    assert (off[lesion] > 0).mean() < 0.05 and (without_ct[lesion] > 0).mean() < 0.05


def test_on_the_real_sample_a_cut_pleural_lesion_comes_back_and_nothing_else_is_added():
    """The bundled sample CT and its reference labels (real ribs, heart, diaphragm): a 20 mm ball of +35 HU
    against the right lung's lateral pleura, cut out of the labels, is put back; the uncut reference gains
    almost nothing."""
    import SimpleITK as sitk

    from LungSegLib.core.geometry import Geometry, canonical_orientation

    sample = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
    image = sitk.ReadImage(str(sample / "ACRIN-FLT-Breast-001_chest.nrrd"))
    orientation = canonical_orientation(Geometry.from_sitk(image))
    ct = orientation.to_canonical(sitk.GetArrayFromImage(image)).copy()
    labels = orientation.to_canonical(
        sitk.GetArrayFromImage(sitk.ReadImage(str(sample / "ACRIN-FLT-Breast-001_lungs-label.nrrd")))).copy()
    spacing = orientation.spacing_zyx
    voxel_ml = float(np.prod(spacing)) / 1000.0

    reference = labels.copy()
    assert fill_pleural_lesions(reference, ct, spacing).sum() * voxel_ml < 2.0

    right = labels == RIGHT
    zs = np.flatnonzero(right.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    rows, cols = np.nonzero(right[z])
    row = int(np.median(rows))
    col = int(cols[rows == row].min())  # the lateral pleura (columns run towards patient left)
    zz, rr, cc = np.ogrid[:ct.shape[0], :ct.shape[1], :ct.shape[2]]
    ball = np.hypot(np.hypot((zz - z) * spacing[0], (rr - row) * spacing[1]),
                    (cc - col - 10.0 / spacing[2]) * spacing[2]) <= 20.0
    lesion, cut = _cut(ct, labels, ball, 35)
    assert lesion.sum() * voxel_ml > 10.0
    added = fill_pleural_lesions(cut, ct, spacing)
    assert (cut[lesion] == RIGHT).mean() > 0.7
    assert (added & ~lesion).sum() * voxel_ml < 2.0

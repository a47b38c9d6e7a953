"""The per-slice confidence statistics depend on the slice alone, not on the batch it ran in."""
from __future__ import annotations

import numpy as np
import pytest

from LungSegLib.core.confidence import STATS, ConfidenceOptions, SliceScorer
from LungSegLib.core.inference import segment_array


def _maps() -> np.ndarray:
    """Two slices' ``[2, C, S, S]`` lung probabilities: a small right lung on slice 0 with a faint tail
    (0.01) everywhere else, a large left lung far from it on slice 1."""
    lungs = np.zeros((2, 2, 64, 64), np.float32)
    lungs[0, 0] = 0.01
    lungs[0, 0, 10:20, 10:20] = 0.9
    lungs[1, 1, 30:60, 30:60] = 0.95
    return lungs


def _stats(batches) -> dict:
    scorer = SliceScorer(2, 2, 1.5, ConfidenceOptions())
    lungs = _maps()
    for start, stop in batches:
        scorer.observe(start, np.zeros((stop - start, 64, 64, 1), np.float32), lungs[start:stop],
                       np.ones(stop - start, bool), predict=None, binary=False)
    return scorer.stats


def test_slice_statistics_do_not_depend_on_the_batch():
    together, apart = _stats([(0, 2)]), _stats([(0, 1), (1, 2)])
    for name in STATS:
        np.testing.assert_array_equal(together[name], apart[name], err_msg=name)
    # slice 0's expected error: its lung's edge-free square counts 100 x 0.1, and only its own box counts
    assert together["expected_error_px"][0, 0] == pytest.approx(10.0, rel=1e-4)
    assert together["area_px"][0, 0] == 100 and together["area_px"][1, 1] == 900


def test_confidence_is_the_same_for_every_batch_size(chest_phantom, oracle_model):
    shape = (12, 40, 48)
    geometry = chest_phantom.geometry(shape, (7.0, 6.5, 6.0))
    ct = chest_phantom.ct(geometry, shape)
    runs = [segment_array(ct, geometry, oracle_model, batch_size=b, confidence=ConfidenceOptions()).confidence
            for b in (1, 5, 12)]
    for other in runs[1:]:
        for name in ("area_px", "expected_error_px", "entropy_px", "margin_px"):
            np.testing.assert_allclose(other.stats[name], runs[0].stats[name], rtol=1e-5, atol=1e-3)


def test_skipped_slices_get_their_neighbours_statistics_interpolated():
    scorer = SliceScorer(5, 2, 1.5, ConfidenceOptions())
    lungs = np.zeros((2, 2, 64, 64), np.float32)
    lungs[0, 0, 10:20, 10:20] = 0.9   # slice 0: 100 px
    lungs[1, 0, 10:30, 10:30] = 0.9   # slice 4: 400 px
    scorer.score_network_slices(np.array([0, 4]), lungs)
    scorer.finish(predict=None, binary=False)
    np.testing.assert_allclose(scorer.stats["area_px"][:, 0], [100, 175, 250, 325, 400])
    np.testing.assert_allclose(scorer.stats["expected_error_px"][:, 0], [10, 17.5, 25, 32.5, 40], rtol=1e-4)
    assert np.isnan(scorer.stats["flip_disagreement_px"]).all()
    with pytest.raises(ValueError, match="flip"):
        SliceScorer(5, 2, 1.5, ConfidenceOptions(flip=True)).score_network_slices(np.array([0]), lungs[:1])

"""The slice step: on thin-slice CT the network runs on slices at most ``slice_step_mm`` apart and the
slices between are interpolated on the model grid (``LungSegLib.core.inference.network_slices``)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.api import LungSegmenter
from LungSegLib.cli import main
from LungSegLib.core.confidence import ConfidenceOptions
from LungSegLib.core.inference import _between, network_slices, segment_array
from LungSegLib.defaults import SLICE_STEP_MM
from LungSegLib.errors import UsageError


@pytest.mark.parametrize("n, slice_mm, step, expected", [
    (10, 1.0, 2.5, [0, 2, 4, 6, 8, 9]),   # every 2nd, the last always run
    (7, 0.6, 2.5, [0, 4, 6]),            # every 4th (2.4 mm)
    (9, 1.25, 2.5, [0, 2, 4, 6, 8]),     # exactly half the step: every 2nd
    (5, 1.3, 2.5, [0, 1, 2, 3, 4]),      # thicker than half the step: all
    (5, 3.0, 2.5, [0, 1, 2, 3, 4]),
    (6, 0.5, 0.0, [0, 1, 2, 3, 4, 5]),   # 0: every slice
    (1, 0.5, 2.5, [0]),
    (0, 0.5, 2.5, []),
])
def test_network_slices(n, slice_mm, step, expected):
    assert network_slices(n, slice_mm, step).tolist() == expected


def test_between_interpolates_linearly_and_continues_from_the_previous_batch():
    maps = np.stack([np.full((2, 3, 3), v, np.float32) for v in (0.0, 0.9)])  # computed slices 0 and 3
    first, block = _between(0, None, np.array([0, 3]), maps)
    assert first == 0 and block.shape == (4, 2, 3, 3)
    np.testing.assert_allclose(block[:, 0, 0, 0], [0.0, 0.3, 0.6, 0.9], atol=1e-6)
    # the next batch starts after slice 3 and interpolates from slice 3's map
    first, block = _between(4, maps[1], np.array([5]), np.full((1, 2, 3, 3), 0.1, np.float32))
    assert first == 4
    np.testing.assert_allclose(block[:, 1, 2, 2], [0.5, 0.1], atol=1e-6)


@pytest.fixture(scope="module")
def thin_case(chest_phantom):
    """The phantom at 1.2 mm slices (with the oracle's 3 mm grid the network runs every 2nd slice), its
    slice axis reversed so the canonical stack runs the other way from the file."""
    shape = (150, 40, 48)
    direction = np.diag([1.0, 1.0, -1.0])
    geometry = chest_phantom.geometry(shape, (7.0, 6.5, 1.2), direction)
    return chest_phantom.ct(geometry, shape), geometry


def test_interpolated_slices_agree_with_running_every_slice(thin_case, oracle_model, dice_score):
    ct, geometry = thin_case
    every = segment_array(ct, geometry, oracle_model, slice_step_mm=0)
    stepped = segment_array(ct, geometry, oracle_model)  # the default step
    assert every.network_slices == 150
    assert stepped.network_slices == len(network_slices(150, 1.2, SLICE_STEP_MM)) == 76
    for lung in (1, 2):
        assert (stepped.labels == lung).sum() > 1000
        assert dice_score(stepped.labels == lung, every.labels == lung) > 0.99
    # the slices the network ran on are labelled exactly as when it runs every slice (canonical slice k is
    # file slice 149 - k here)
    ran = 149 - network_slices(150, 1.2, SLICE_STEP_MM)
    np.testing.assert_array_equal(stepped.labels[ran], every.labels[ran])


def test_a_blank_slice_between_the_networks_slices_is_background(thin_case, oracle_model):
    """A dropped-out slice (nothing denser than air) is not filled in from its neighbours: it is background,
    as when the network runs on it, so the review still names the gap."""
    from LungSegLib.core.review import build_review

    ct, geometry = thin_case
    blank = ct.copy()
    blank[74] = -1024  # canonical slice 75: not one the network runs on (0, 2, ..., 148, 149)
    assert 75 not in network_slices(150, 1.2, SLICE_STEP_MM)
    result = segment_array(blank, geometry, oracle_model, confidence=ConfidenceOptions())
    assert result.network_slices == 76
    assert not result.labels[74].any() and result.labels[73].any() and result.labels[75].any()
    gaps = {(it.slice_index, it.lung) for it in build_review(result.labels, geometry, result.confidence)
            if it.reason == "lung_gap"}
    assert {(74, "right"), (74, "left")} <= gaps


def test_the_step_follows_the_slice_spacing_in_mm(chest_phantom, oracle_model):
    for spacing, ran in ((0.6, 9), (3.0, 30)):  # every 4th (2.4 mm) and the last; 3 mm slices: all
        shape = (30, 40, 48)
        geometry = chest_phantom.geometry(shape, (7.0, 6.5, spacing))
        result = segment_array(chest_phantom.ct(geometry, shape), geometry, oracle_model)
        assert result.network_slices == ran == len(network_slices(30, spacing, SLICE_STEP_MM))


def test_review_confidence_uses_the_step_and_the_flip_runs_every_slice(thin_case, oracle_model):
    ct, geometry = thin_case
    every = segment_array(ct, geometry, oracle_model, confidence=ConfidenceOptions(), slice_step_mm=0)
    stepped = segment_array(ct, geometry, oracle_model, confidence=ConfidenceOptions())
    assert every.network_slices == 150 and stepped.network_slices == 76
    assert stepped.confidence.n_slices == 150
    # the network's slices are scored exactly as when every slice runs (input order: file slice 149 - k)
    ran = 149 - network_slices(150, 1.2, SLICE_STEP_MM)
    for name in ("area_px", "expected_error_px", "entropy_px", "margin_px"):
        np.testing.assert_allclose(stepped.confidence.stats[name][ran], every.confidence.stats[name][ran],
                                   rtol=1e-5, atol=1e-3)
    # the others between their neighbours: every slice with lung has a score, and the per-lung totals agree
    a, b = every.confidence.stats["area_px"], stepped.confidence.stats["area_px"]
    assert (b.sum(axis=1)[a.sum(axis=1) > 0] > 0).all()
    np.testing.assert_allclose(b.sum(axis=0), a.sum(axis=0), rtol=0.02)
    for name, value in every.confidence.lung_confidence().items():
        assert stepped.confidence.lung_confidence()[name] == pytest.approx(value, rel=0.02)
    flipped = segment_array(ct, geometry, oracle_model, confidence=ConfidenceOptions(flip=True))
    assert flipped.network_slices == 150 and flipped.confidence.flip


def test_progress_reaches_the_total_once_and_cancel_still_stops(thin_case, oracle_model):
    ct, geometry = thin_case
    calls = []
    segment_array(ct, geometry, oracle_model, batch_size=8, progress=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    assert all(t == 150 for _, t in calls) and done == sorted(done) and done.count(150) == 1 and done[-1] == 150
    assert len(calls) == 10  # 76 network slices in batches of 8

    from LungSegLib.errors import Cancelled

    seen = []

    def cancel_after_first(done, total):
        seen.append(done)
        flag.append(True)

    flag = []
    with pytest.raises(Cancelled):
        segment_array(ct, geometry, oracle_model, batch_size=8, progress=cancel_after_first, cancel=lambda: bool(flag))
    assert seen == [15]  # the first 8 network slices (0, 2, ..., 14) and the 7 interpolated between them


@pytest.mark.parametrize("step", [-1.0, float("nan"), float("inf"), 3.5])
def test_a_bad_step_is_refused(thin_case, oracle_model, step):
    ct, geometry = thin_case
    with pytest.raises(UsageError, match="slice step"):
        segment_array(ct, geometry, oracle_model, slice_step_mm=step)
    with pytest.raises(UsageError, match="slice step"):
        LungSegmenter(oracle_model, slice_step_mm=step)


def test_cli_step_is_used_reported_and_checked(thin_case, oracle_model_path, tmp_path, capsys):
    ct, geometry = thin_case
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(tuple(np.asarray(geometry.direction).ravel()))
    src = tmp_path / "thin.nrrd"
    sitk.WriteImage(image, str(src))
    out = tmp_path / "out.nrrd"
    assert main(["segment", str(src), str(out), "--model", str(oracle_model_path)]) == 0
    assert "the network ran on 76 of the 150 slices and interpolated the rest" in capsys.readouterr().out
    full = tmp_path / "full.nrrd"
    assert main(["segment", str(src), str(full), "--model", str(oracle_model_path),
                 "--slice-step-mm", "0"]) == 0
    assert "interpolated" not in capsys.readouterr().out
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (out, full))
    assert (a == b).mean() > 0.999 and (a > 0).sum() > 1000

    bad = tmp_path / "bad.nrrd"
    code = main(["segment", str(src), str(bad), "--model", str(oracle_model_path), "--quiet", "--slice-step-mm", "9"])
    assert code != 0 and not bad.exists()
    assert "slice step" in capsys.readouterr().err


def test_report_says_how_many_slices_the_network_ran_on(thin_case, oracle_model):
    from LungSegLib.core.report import report_dict

    ct, geometry = thin_case
    result = segment_array(ct, geometry, oracle_model)
    report = json.loads(json.dumps(report_dict(result, model_name="oracle")))
    assert report["network_slices"] == 76

"""`lungseg evaluate` and LungSegLib.evaluation (cases, scoring, evaluate, report): matching cases, grids, excluded slices, swap flag, reports."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.evaluation import evaluate as ev
from LungSegLib.evaluation.cases import find_ground_truth, read_lung_labelmap
from LungSegLib.evaluation.report import write_reports
from LungSegLib.cli import main
from LungSegLib.errors import InputError, OutputError
from LungSegLib.core.geometry import Geometry
from LungSegLib.evaluation.metrics import swap_labels
from LungSegLib.core.writers import labelmap_image, write_labelmap

SHAPE = (8, 40, 56)                # k, j, i
SPACING = (6.0, 6.0, 10.0)         # i, j, k mm


def write_case(root: Path, name: str, phantom, shift=(0.0, 0.0, 0.0), info=None):
    """A ground-truth case folder (ct.nrrd, label.nrrd, optional info.json) sampled from the phantom."""
    geometry = phantom.geometry(SHAPE, SPACING, shift_mm=shift)
    folder = root / name
    folder.mkdir(parents=True)
    ct = sitk.GetImageFromArray(phantom.ct(geometry, SHAPE))
    geometry.apply_to_sitk(ct)
    sitk.WriteImage(ct, str(folder / "ct.nrrd"))
    labels = phantom.labels(geometry, SHAPE)
    write_labelmap(labels, geometry, folder / "label.nrrd")
    if info is not None:
        (folder / "info.json").write_text(json.dumps(info))
    return labels, geometry


@pytest.fixture()
def gt_dir(tmp_path, chest_phantom):
    root = tmp_path / "gt"
    truth = {"caseA": write_case(root, "caseA", chest_phantom),
             "caseB": write_case(root, "caseB", chest_phantom, shift=(5.0, -3.0, 7.0))}
    return root, truth


def test_perfect_predictions_score_dice_1_and_hd95_0(tmp_path, gt_dir):
    root, truth = gt_dir
    pred = tmp_path / "pred"
    labels, geometry = truth["caseA"]
    write_labelmap(labels, geometry, pred / "caseA.seg.nrrd")       # Slicer segmentation, by name
    labels, geometry = truth["caseB"]
    write_labelmap(labels, geometry, pred / "caseB" / "label.nrrd")  # plain labelmap in a folder
    report, worst = ev.evaluate_predictions(pred, root)
    assert [c.case for c in report.cases] == ["caseA", "caseB"]
    for case in report.cases:
        assert not case.swapped
        for lung in case.lungs:
            assert lung.dice == 1.0 and lung.iou == 1.0
            assert lung.hd95_mm == 0.0 and lung.assd_mm == 0.0
            assert lung.volume_error_ml == 0.0 and lung.volume_truth_ml > 50
    assert report.summary["right lung"]["dice"]["mean"] == 1.0
    assert report.summary["left lung"]["hd95_mm"]["max"] == 0.0
    assert worst.pred is not None and worst.case.name in ("caseA", "caseB")


def test_swapped_sides_are_flagged_and_scored_low(tmp_path, gt_dir):
    root, truth = gt_dir
    pred = tmp_path / "pred"
    for name, (labels, geometry) in truth.items():
        write_labelmap(swap_labels(labels) if name == "caseB" else labels, geometry, pred / f"{name}.nrrd")
    report, _ = ev.evaluate_predictions(pred, root)
    by_case = {c.case: c for c in report.cases}
    assert by_case["caseB"].swapped and not by_case["caseA"].swapped
    assert by_case["caseB"].dice_exchanged == 1.0 and by_case["caseB"].lungs[0].dice == 0.0
    assert report.worst_case == "caseB"
    assert any("swapped" in note and "caseB" in note for note in report.notes)


def test_suspect_slices_from_info_json_are_left_out(tmp_path, chest_phantom):
    root = tmp_path / "gt"
    labels, geometry = write_case(root, "caseC", chest_phantom, info={"suspect_slices_label_z": [[2, 4]]})
    wrong = labels.copy()
    wrong[4][wrong[4] == 2] = 0  # the prediction disagrees with the left lung only on slice 4
    write_labelmap(wrong, geometry, tmp_path / "pred" / "caseC.nrrd")
    report, _ = ev.evaluate_predictions(tmp_path / "pred", root)
    case = report.cases[0]
    assert case.excluded_slices == ((2, 4),)
    assert case.lungs[1].dice == 1.0 and case.lungs[1].hd95_mm == 0.0
    # the right lung keeps its slice 4: its volume is the full ground-truth volume
    assert case.lungs[0].volume_truth_ml == pytest.approx((labels == 1).sum() * geometry.voxel_volume_ml())
    # without the info entry the same prediction is imperfect
    (root / "caseC" / "info.json").write_text("{}")
    report, _ = ev.evaluate_predictions(tmp_path / "pred", root)
    assert report.cases[0].lungs[1].dice < 1.0


def test_grid_mismatch_names_the_case(tmp_path, gt_dir):
    root, truth = gt_dir
    pred = tmp_path / "pred"
    labels, geometry = truth["caseA"]
    write_labelmap(labels, geometry, pred / "caseA.nrrd")
    labels, geometry = truth["caseB"]
    moved = Geometry(geometry.spacing, tuple(np.add(geometry.origin, (2.0, 0.0, 0.0))), geometry.direction)
    write_labelmap(labels, moved, pred / "caseB.nrrd")
    with pytest.raises(InputError, match="caseB.*voxel grid"):
        ev.evaluate_predictions(pred, root)


def test_cropped_prediction_on_a_sub_box_of_the_grid_is_padded(tmp_path, gt_dir):
    root, truth = gt_dir
    labels, geometry = truth["caseA"]
    lo = np.argwhere(labels).min(axis=0)
    hi = np.argwhere(labels).max(axis=0) + 1
    assert np.all(lo[1:] > 0) and np.all(hi[1:] < SHAPE[1:])  # a real in-plane crop
    sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    origin = geometry.ijk_to_lps()[:3] @ np.append(lo[::-1], 1.0)
    image = labelmap_image(sub, Geometry(geometry.spacing, tuple(origin), geometry.direction))
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(image, str(tmp_path / "pred" / "caseA.nrrd"))
    report, _ = ev.evaluate_predictions(tmp_path / "pred", root, names=["caseA"])
    assert [lung.dice for lung in report.cases[0].lungs] == [1.0, 1.0]


def test_missing_prediction_and_missing_ground_truth_are_input_errors(tmp_path, gt_dir):
    root, truth = gt_dir
    pred = tmp_path / "pred"
    labels, geometry = truth["caseA"]
    write_labelmap(labels, geometry, pred / "caseA.nrrd")
    with pytest.raises(InputError, match="caseB"):
        ev.evaluate_predictions(pred, root)
    report, _ = ev.evaluate_predictions(pred, root, names=["caseA"])
    assert len(report.cases) == 1
    with pytest.raises(InputError, match="nope"):
        find_ground_truth(root, ["nope"])
    with pytest.raises(InputError, match="not found"):
        find_ground_truth(tmp_path / "missing")
    with pytest.raises(InputError, match="no ground-truth case"):
        find_ground_truth(pred)


def test_labelmap_with_other_values_is_refused(tmp_path, gt_dir):
    root, truth = gt_dir
    labels, geometry = truth["caseA"]
    image = labelmap_image(labels * 3, geometry)
    path = tmp_path / "bad.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match="expected 0 background"):
        read_lung_labelmap(path)


def test_segmentation_segments_are_mapped_by_name(tmp_path, gt_dir):
    _, truth = gt_dir
    labels, geometry = truth["caseA"]
    # a Slicer-style file whose label values do not follow LungSeg's 1/2 convention
    image = labelmap_image(np.where(labels == 1, 7, np.where(labels == 2, 3, 0)), geometry)
    for n, (name, value) in enumerate((("Lung_L", 3), ("Heart", 9), ("RT LUNG", 7))):
        image.SetMetaData(f"Segment{n}_Name", name)
        image.SetMetaData(f"Segment{n}_LabelValue", str(value))
        image.SetMetaData(f"Segment{n}_Layer", "0")
    path = tmp_path / "x.seg.nrrd"
    sitk.WriteImage(image, str(path))
    back, _ = read_lung_labelmap(path)
    assert np.array_equal(back, labels)


def test_cli_writes_table_csv_json_png_and_refuses_to_overwrite(tmp_path, gt_dir, capsys):
    root, truth = gt_dir
    pred = tmp_path / "pred"
    for name, (labels, geometry) in truth.items():
        damaged = labels.copy()
        if name == "caseB":
            damaged[3:5][damaged[3:5] == 1] = 0
        write_labelmap(damaged, geometry, pred / f"{name}.seg.nrrd")
    out = tmp_path / "report"
    assert main(["evaluate", str(pred), str(root), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert [(r["case"], r["lung"]) for r in rows] == [("caseA", "right lung"), ("caseA", "left lung"),
                                                        ("caseB", "right lung"), ("caseB", "left lung")]
    assert float(rows[0]["dice"]) == 1.0 and float(rows[2]["dice"]) < 0.95
    assert float(rows[2]["volume_error_ml"]) < 0
    data = json.loads((out / "evaluation.json").read_text())
    assert data["worst_case"] == "caseB"
    assert data["summary"]["right lung"]["dice"]["min"] == pytest.approx(float(rows[2]["dice"]))
    assert data["cases"][1]["lungs"][0]["hd95_mm"] > 0
    png = (out / "evaluation.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert main(["evaluate", str(pred), str(root), "--out", str(out), "--quiet"]) == OutputError.exit_code
    assert "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", str(pred), str(root), "--out", str(out), "--overwrite"]) == 0
    table = capsys.readouterr().out
    assert "caseB" in table and "right lung" in table and "Dice" in table


def test_cli_exit_codes_for_bad_input(tmp_path, gt_dir, capsys):
    root, _ = gt_dir
    assert main(["evaluate", str(tmp_path / "nothing"), str(root), "--quiet"]) == InputError.exit_code
    (tmp_path / "empty_pred").mkdir()
    assert main(["evaluate", str(tmp_path / "empty_pred"), str(root), "--quiet"]) == InputError.exit_code
    assert "No prediction" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "empty_pred"), str(tmp_path / "no_gt"), "--quiet"]) == 3
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(root)])
    assert exc.value.code == 2
    assert main(["evaluate", str(tmp_path / "empty_pred"), str(root), "--save-predictions"]) == 2
    assert "--save-predictions needs a model" in capsys.readouterr().err


def test_infinite_distances_are_null_in_json(tmp_path, gt_dir):
    root, truth = gt_dir
    pred = tmp_path / "pred"
    for name, (labels, geometry) in truth.items():
        write_labelmap(np.where(labels == 2, 0, labels), geometry, pred / f"{name}.nrrd")  # no left lung
    report, worst = ev.evaluate_predictions(pred, root)
    assert math.isinf(report.cases[0].lungs[1].hd95_mm) and report.cases[0].lungs[1].dice == 0.0
    assert report.summary["left lung"]["hd95_mm"]["n_undefined"] == 2
    paths = write_reports(report, worst, tmp_path / "out")
    data = json.loads(paths[1].read_text())
    assert data["cases"][0]["lungs"][1]["hd95_mm"] is None
    assert "inf" in paths[0].read_text()


def test_model_evaluation_runs_the_model_on_each_ct(tmp_path, gt_dir, oracle_model_path):
    root, _ = gt_dir
    out = tmp_path / "out"
    code = main(["evaluate", str(oracle_model_path), str(root), "--cases", "caseA", "--out", str(out),
                 "--save-predictions", "--quiet", "--threads", "1"])
    assert code == 0
    data = json.loads((out / "evaluation.json").read_text())
    assert data["source"] == str(oracle_model_path)
    (case,) = data["cases"]
    assert case["case"] == "caseA" and not case["swapped"]
    # the oracle finds the phantom's lungs on their own sides
    assert all(lung["dice"] > 0.7 for lung in case["lungs"]), case["lungs"]
    saved, _ = read_lung_labelmap(out / "predictions" / "caseA.seg.nrrd")
    assert set(np.unique(saved)) == {0, 1, 2}


def test_model_evaluation_with_a_tiny_unet(tmp_path, gt_dir, tiny_unet_path):
    root, _ = gt_dir
    segmenter_report, _ = ev.evaluate_model(_segmenter(tiny_unet_path), root, ["caseB"])
    (case,) = segmenter_report.cases
    assert case.case == "caseB" and case.prediction == str(tiny_unet_path)
    assert all(0.0 <= lung.dice <= 1.0 for lung in case.lungs)
    assert all(lung.volume_truth_ml > 50 for lung in case.lungs)


def _segmenter(path):
    from LungSegLib.api import LungSegmenter

    return LungSegmenter(path, threads=1, postprocess=False)

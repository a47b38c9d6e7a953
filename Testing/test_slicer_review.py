"""The review aids in a real MRML scene (slicer-core): the measures table node (saved and read back),
the review list as slice jumps (through a parent transform), the Next walk, the confidence table and
plot, and a full worker run with ``review=True``."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed")
import slicer  # noqa: E402
import vtk  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LungSeg"))

from LungSegLib.core.geometry import Geometry  # noqa: E402
from LungSegLib.core.quantify import measure_lungs  # noqa: E402
from LungSegLib.core.review import ReviewItem  # noqa: E402
from LungSegLogicLib import LungSegLogic  # noqa: E402
from LungSegLogicLib.review import (ReviewWalker, confidencePlotChartNode, confidenceTableNode,  # noqa: E402
                                    jumpSlicesToReviewItem, measuresTableNode, reviewItemWorldRAS,
                                    reviewItemsFromEvent, reviewRows)


def _measures():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, :5, :5] = 1
    labels[:, 5:, 5:] = 2
    ct = np.where(labels == 1, -960, -800).astype(np.int16)
    return measure_lungs(ct, labels, Geometry((1.0, 1.0, 10.0)))  # 0.01 mL voxels, 100 voxels per lung


def _cell(table, row, name):
    return table.GetColumnByName(name).GetValue(row)


def test_measures_table_node_is_saved_and_read_back(mrml_app, tmp_path):
    scene = mrml_app.scene
    measures = _measures().to_dict()
    node = measuresTableNode(scene, measures, confidence={"lung_confidence": {"right": 0.9, "left": 0.8}})
    table = node.GetTable()
    assert node.GetNumberOfRows() == 3
    assert [_cell(table, r, "Region") for r in range(3)] == ["Right lung", "Left lung", "Both lungs"]
    assert _cell(table, 0, "Volume") == pytest.approx(1.0) and _cell(table, 2, "Volume") == pytest.approx(2.0)
    assert _cell(table, 0, "%LAA-950") == pytest.approx(100.0) and _cell(table, 1, "%LAA-950") == 0.0
    assert _cell(table, 2, "% inflated") == pytest.approx(50.0)
    assert _cell(table, 1, "Confidence") == pytest.approx(0.8) and np.isnan(_cell(table, 2, "Confidence"))
    assert node.GetColumnUnitLabel("Volume") == "mL" and node.GetColumnUnitLabel("Mean") == "HU"
    # saved with the scene: the table's storage node writes it and reads it back
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(tmp_path / "measures.tsv"))
    assert storage.WriteData(node)
    again = scene.AddNewNodeByClass("vtkMRMLTableNode")
    reader = again.CreateDefaultStorageNode()
    scene.AddNode(reader)
    reader.SetFileName(str(tmp_path / "measures.tsv"))
    assert reader.ReadData(again)
    assert again.GetNumberOfRows() == 3
    assert float(again.GetCellText(0, again.GetColumnIndex("Volume"))) == pytest.approx(1.0)
    # filling an existing node replaces its content
    assert measuresTableNode(scene, measures, tableNode=node) is node and node.GetNumberOfRows() == 3


def test_review_item_jumps_the_slice_views_through_the_ct_transform(mrml_app):
    scene = mrml_app.scene
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    item = ReviewItem(7, 0, "left", "low_confidence", "unsure", 0.3, (10.0, 20.0, -30.0))
    assert item.position_ras == (-10.0, -20.0, -30.0)
    ras = jumpSlicesToReviewItem(scene, item, volume)
    sliceToRAS = red.GetSliceToRAS()
    assert [sliceToRAS.GetElement(r, 3) for r in range(3)] == pytest.approx([-10.0, -20.0, -30.0])
    # the CT under a translation: the worker's RAS is the CT's frame, the views need world RAS
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(2, 3, 100.0)
    transform.SetMatrixTransformToParent(m)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert reviewItemWorldRAS(item, volume) == pytest.approx([-10.0, -20.0, 70.0])
    jumpSlicesToReviewItem(scene, item, volume)
    assert red.GetSliceToRAS().GetElement(2, 3) == pytest.approx(70.0)
    assert ras == pytest.approx([-10.0, -20.0, -30.0])


def test_walker_and_rows():
    items = [ReviewItem(k, 0, lung, "low_confidence", "", s, (0.0, 0.0, float(k)))
             for k, lung, s in ((3, "right", 0.5), (9, None, 0.2))]
    walker = ReviewWalker(items)
    assert walker.next() is items[0] and walker.next() is items[1] and walker.next() is items[0]
    assert walker.select(1) is items[1] and ReviewWalker([]).next() is None
    assert reviewRows(items) == [["1", "3", "Right lung", "low confidence", "0.50"],
                                 ["2", "9", "-", "low confidence", "0.20"]]


def test_confidence_table_and_plot(mrml_app):
    scene = mrml_app.scene
    node = confidenceTableNode(scene, {"slice_confidence": [0.9, 0.5, None, 1.0]})
    assert node.GetNumberOfRows() == 4
    assert node.GetTable().GetColumnByName("Confidence").GetValue(1) == pytest.approx(0.5)
    chart = confidencePlotChartNode(scene, node)
    series = scene.GetNodeByID(chart.GetPlotSeriesNodeID())
    assert series.GetTableNodeID() == node.GetID() and series.GetYColumnName() == "Confidence"


def test_worker_run_with_review_fills_the_outcome(mrml_app, oracle_model_path, sample_ct_crop):
    volume = mrml_app.load_volume(sample_ct_crop, "Chest CT")
    logic = LungSegLogic()
    logic.scene = mrml_app.scene
    logic.modelPath = str(oracle_model_path)
    logic.segment(volume, batchSize=4, review=True)
    outcome = logic.lastOutcome
    assert [r["region"] for r in outcome.measures["regions"]] == ["right", "left", "both"]
    assert outcome.measures["regions"][0]["volume_ml"] == pytest.approx(outcome.volumesMl["right lung"], rel=1e-6)
    assert len(outcome.confidence["slice_confidence"]) == 8
    assert all(isinstance(it, ReviewItem) for it in outcome.review)
    again = reviewItemsFromEvent({"review": [it.to_dict() for it in outcome.review]})
    assert [(it.slice_index, it.lung, it.reason) for it in again] == \
        [(it.slice_index, it.lung, it.reason) for it in outcome.review]
    table = measuresTableNode(mrml_app.scene, outcome.measures, confidence=outcome.confidence)
    assert table.GetNumberOfRows() == 3

"""The review aids in 3D Slicer's scene, without Qt: the measures as a table node, the review list as
world positions, jumping the slice views there, and per-slice confidence as a table for plotting.

Everything here works on the worker's ``done`` event (JSON) so the panel, the Python console and
tests use the same code; :class:`LungSegLib.worker.ReviewItem` (the worker protocol's) is the item type.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from LungSegLib.worker import ReviewItem

#: Table columns: (key in a region of ``LungMeasures.to_dict()``, title, unit)
_FIXED_COLUMNS = (("volume_ml", "Volume", "mL"), ("mean_hu", "Mean", "HU"), ("median_hu", "Median", "HU"),
                  ("sd_hu", "SD", "HU"), ("perc_hu", "Perc15", "HU"), ("laa_low_pct", "%LAA-950", "%"),
                  ("laa_high_pct", "%LAA-910", "%"), ("haa_pct", "%HAA", "%"))


def reviewItemsFromEvent(done: Mapping[str, Any]) -> List[ReviewItem]:
    """The ranked review list of a worker ``done`` event (empty when the run had no review aids)."""
    return [ReviewItem.from_dict(item) for item in done.get("review") or []]


def _column_titles(measures: Mapping[str, Any]) -> List[tuple]:
    t = measures.get("thresholds") or {}
    cols = list(_FIXED_COLUMNS)
    if t:
        cols[4] = ("perc_hu", f"Perc{t.get('percentile', 15):g}", "HU")
        cols[5] = ("laa_low_pct", f"%LAA{t.get('laa_low', -950):g}", "%")
        cols[6] = ("laa_high_pct", f"%LAA{t.get('laa_high', -910):g}", "%")
    for name, lo, hi in t.get("bins", []):
        cols.append((("bins_pct", name), f"% {name}", f"% of lung, {lo:g}..{hi:g} HU"))
    return cols


def measuresTableNode(scene, measures: Mapping[str, Any], name: str = "Lung measures", tableNode=None,
                      confidence: Optional[Mapping[str, Any]] = None):
    """A ``vtkMRMLTableNode`` with one row per region (right lung, left lung, both) and one column per
    measure (units in each column's unit label), plus the network confidence per lung when given.

    ``measures`` is ``LungMeasures.to_dict()`` (the worker's ``done["measures"]``). The node is
    saved with the scene (as a .tsv table). An existing ``tableNode`` is filled anew.
    """
    import vtk

    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    try:
        tableNode.RemoveAllColumns()
        regionColumn = vtk.vtkStringArray()
        regionColumn.SetName("Region")
        table.AddColumn(regionColumn)
        cols = _column_titles(measures)
        lungConfidence = dict((confidence or {}).get("lung_confidence") or {})
        arrays = []
        for _, title, _ in cols + ([(None, "Confidence", "0..1")] if lungConfidence else []):
            array = vtk.vtkDoubleArray()
            array.SetName(title)
            table.AddColumn(array)
            arrays.append(array)
        for region in measures.get("regions", []):
            regionColumn.InsertNextValue(str(region.get("name", region.get("region", ""))))
            for (key, _, _), array in zip(cols, arrays):
                value = region.get(key[0], {}).get(key[1]) if isinstance(key, tuple) else region.get(key)
                array.InsertNextValue(float("nan") if value is None else float(value))
            if lungConfidence:
                value = lungConfidence.get(region.get("region"))
                arrays[-1].InsertNextValue(float("nan") if value is None else float(value))
        for _, title, unit in cols:
            tableNode.SetColumnUnitLabel(title, unit)
        tableNode.SetColumnDescription("Region", "Research measures: reconstruction kernel, dose, slice "
                                                 "thickness and inspiration change them.")
        tableNode.SetUseColumnTitleAsColumnHeader(True)
        tableNode.SetLocked(True)
    finally:
        tableNode.EndModify(wasModifying)
    return tableNode


def _volumeToWorld(volumeNode):
    """4x4 matrix from the volume's local RAS to world RAS (its parent transform; identity without)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    parent = volumeNode.GetParentTransformNode() if volumeNode is not None else None
    if parent is not None and parent.IsTransformToWorldLinear():
        parent.GetMatrixTransformToWorld(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def reviewItemWorldRAS(item: ReviewItem, volumeNode=None) -> np.ndarray:
    """The item's point in world RAS mm: its RAS position (in the CT's frame) moved by the CT's parent
    transform, if any (the worker sees the CT without it)."""
    local = np.append(np.asarray(item.position_ras, float), 1.0)
    return (_volumeToWorld(volumeNode) @ local)[:3]


def jumpSlicesToReviewItem(scene, item: ReviewItem, volumeNode=None, viewGroup: int = -1) -> np.ndarray:
    """Centre every slice view on the item's point (as clicking a markup does) and return that world
    RAS point."""
    import slicer

    ras = reviewItemWorldRAS(item, volumeNode)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, float(ras[0]), float(ras[1]), float(ras[2]),
                                          slicer.vtkMRMLSliceNode.CenteredJumpSlice, viewGroup)
    return ras


def reviewRows(items: Sequence[ReviewItem]) -> List[List[str]]:
    """Rows (#, slice, lung, reason, score) for a list widget."""
    from LungSegLib.labels import LUNG_LABELS

    names = {label.key: label.name for label in LUNG_LABELS}
    return [[str(n), str(it.slice_index), names.get(it.lung, "both") if it.lung else "-",
             it.reason.replace("_", " "), f"{it.score:.2f}"] for n, it in enumerate(items, 1)]


class ReviewWalker:
    """Walks a review list: :meth:`next` returns the following item (wrapping round), :meth:`select`
    sets the position (a clicked row)."""

    def __init__(self, items: Sequence[ReviewItem]):
        self.items = list(items)
        self.index = -1

    def select(self, index: int) -> Optional[ReviewItem]:
        if not self.items:
            return None
        self.index = int(index) % len(self.items)
        return self.items[self.index]

    def next(self) -> Optional[ReviewItem]:
        return self.select(self.index + 1)


def confidenceTableNode(scene, confidence: Mapping[str, Any], name: str = "Lung confidence per slice",
                        tableNode=None):
    """A table node (slice index, confidence 0..1) of ``done["confidence"]["slice_confidence"]``, for
    Slicer's plot views ("per-slice confidence shown on request")."""
    import vtk

    values = list(confidence.get("slice_confidence") or [])
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    wasModifying = tableNode.StartModify()
    try:
        tableNode.RemoveAllColumns()
        index, conf = vtk.vtkDoubleArray(), vtk.vtkDoubleArray()
        index.SetName("Slice")
        conf.SetName("Confidence")
        for k, v in enumerate(values):
            index.InsertNextValue(k)
            conf.InsertNextValue(float("nan") if v is None else float(v))
        tableNode.GetTable().AddColumn(index)
        tableNode.GetTable().AddColumn(conf)
        tableNode.SetColumnUnitLabel("Confidence", "0..1 (1 = sure)")
    finally:
        tableNode.EndModify(wasModifying)
    return tableNode


def confidencePlotChartNode(scene, tableNode, name: str = "Lung confidence"):
    """A plot chart (line: confidence against slice) of :func:`confidenceTableNode`'s table."""
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(name))
    series.SetAndObserveTableNodeID(tableNode.GetID())
    series.SetXColumnName("Slice")
    series.SetYColumnName("Confidence")
    series.SetPlotType(series.PlotTypeScatter)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Network confidence per slice")
    chart.SetXAxisTitle("slice (array axis 0)")
    chart.SetYAxisTitle("confidence")
    return chart


__all__ = ["ReviewWalker", "confidencePlotChartNode", "confidenceTableNode", "jumpSlicesToReviewItem",
           "measuresTableNode", "reviewItemWorldRAS", "reviewItemsFromEvent", "reviewRows"]

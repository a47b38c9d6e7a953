"""Render the README / ExtensionsIndex screenshot: the bundled model on the sample CT.

Left: the overview PNG that ``lungseg segment --overview`` writes (axial + coronal slices, lungs overlaid).
Right: an off-screen VTK render of the two lung surfaces seen from the front, in the segment colours of the
``.seg.nrrd`` (patient right on the viewer's left).

    python scripts/render_screenshot.py [--out Resources/Screenshots/LungSeg.png]

Needs VTK with off-screen rendering (the PyPI wheel renders through EGL or OSMesa without a display).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"


def render_lungs(labels_canonical: np.ndarray, spacing_zyx, size=(520, 520)) -> np.ndarray:
    """RGB image of the lung surfaces, anterior view, superior up."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    from LungSegLib.labels import LUNG_LABELS

    image = vtk.vtkImageData()
    nz, ny, nx = labels_canonical.shape
    image.SetDimensions(nx, ny, nz)
    image.SetSpacing(spacing_zyx[2], spacing_zyx[1], spacing_zyx[0])
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(labels_canonical).ravel(), deep=True))
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.08, 0.08, 0.1)
    for segment in LUNG_LABELS:
        surface = vtk.vtkDiscreteFlyingEdges3D()
        surface.SetInputData(image)
        surface.SetValue(0, segment.value)
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(surface.GetOutputPort())
        smooth.SetNumberOfIterations(20)
        smooth.SetPassBand(0.05)
        smooth.NormalizeCoordinatesOn()
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(smooth.GetOutputPort())
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segment.color)
        actor.GetProperty().SetSpecular(0.2)
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.AddRenderer(renderer)
    window.SetSize(*size)
    camera = renderer.GetActiveCamera()
    centre = np.array([nx * spacing_zyx[2], ny * spacing_zyx[1], nz * spacing_zyx[0]]) / 2
    camera.SetFocalPoint(*centre)
    camera.SetPosition(centre[0], centre[1] - 1000.0, centre[2])  # canonical +y is posterior: look from the front
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.3)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    rgb = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
    return np.ascontiguousarray(rgb[::-1])  # VTK's rows start at the bottom


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "Resources" / "Screenshots" / "LungSeg.png"))
    args = parser.parse_args()

    from PIL import Image, ImageDraw

    from LungSegLib.core.geometry import Geometry, canonical_orientation

    # TensorFlow and VTK's off-screen OpenGL do not share a process well: segment in a child process
    with tempfile.TemporaryDirectory() as tmp:
        labels_path, overview_path = Path(tmp) / "lungs.nrrd", Path(tmp) / "overview.png"
        subprocess.run([sys.executable, "-m", "LungSegLib", "segment", str(SAMPLE), str(labels_path),
                        "--overview", str(overview_path), "--quiet"], check=True)
        labels_image = sitk.ReadImage(str(labels_path))
        overview = np.asarray(Image.open(overview_path).convert("RGB"))
    geometry = Geometry.from_sitk(labels_image)
    labels = sitk.GetArrayFromImage(labels_image)
    orientation = canonical_orientation(geometry)
    render = render_lungs(orientation.to_canonical(labels), orientation.spacing_zyx,
                          size=(overview.shape[0] - 24, overview.shape[0] - 24))
    canvas = np.zeros((overview.shape[0], overview.shape[1] + render.shape[1] + 8, 3), np.uint8)
    canvas[:, :overview.shape[1]] = overview
    canvas[24:24 + render.shape[0], overview.shape[1] + 8:] = render
    picture = Image.fromarray(canvas)
    ImageDraw.Draw(picture).text((overview.shape[1] + 12, 4), "3-D, anterior view", fill=(255, 255, 255))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

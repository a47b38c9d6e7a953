"""Shared pytest fixtures: tiny deterministic models, an analytic chest phantom and a real CT crop.

Only ADD fixtures here (several test files share this module).
"""
from __future__ import annotations

import locale
import os
import random
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: The shared data folder: $LUNGSEG_DATA_DIR, else ``shared/data`` beside the repository checkout.
DATA_DIR = Path(os.environ.get("LUNGSEG_DATA_DIR")
                or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SAMPLE_CASE = "ACRIN-FLT-Breast-001"

# --- the oracle: a Keras model whose answer is known ------------------------------------------------
#: HU band the oracle calls "lung" (air outside the body is darker, soft tissue brighter).
ORACLE_LUNG_HU = (-960.0, -500.0)
ORACLE_SIZE = 128
ORACLE_PIXEL_MM = 3.0


def build_oracle(size: int = ORACLE_SIZE, binary: bool = False, hu_window=(-1024.0, 600.0),
                 band_hu=ORACLE_LUNG_HU, open_px: int = 5):
    """A deterministic stand-in for a trained U-Net, from built-in Keras layers only (safe mode).

    "Lung" = model-grid pixels whose HU lies in ``band_hu``, morphologically opened (``open_px``
    pixels) so thin partial-volume rims at the body's edge vanish. The 3-class model calls lung in
    the grid's columns ``< size / 2`` class 1 and the rest class 2. The model grid is canonical
    (columns run towards the patient's Left) and centred on the body, so this is a *patient-side*
    oracle: whatever the file's orientation, label 1 must come out on the patient's right. The
    binary model outputs the lung probability only (the library then splits the sides itself).
    """
    import keras
    from keras import layers

    lo_w, hi_w = hu_window
    lo, hi = ((h - lo_w) / (hi_w - lo_w) for h in band_hu)
    steep = 50.0
    x = keras.Input((size, size, 1), name="ct")
    above = layers.Conv2D(1, 1, name="above")(x)
    below = layers.Conv2D(1, 1, name="below")(x)
    band = layers.ReLU(max_value=1.0)(layers.Minimum()([above, below]))
    # opening = dilate(erode(band)); erosion is -maxpool(-band)
    neg = layers.Conv2D(1, 1, use_bias=False, name="neg1")(band)
    eroded = layers.Conv2D(1, 1, use_bias=False, name="neg2")(
        layers.MaxPooling2D(open_px, strides=1, padding="same")(neg))
    lung = layers.MaxPooling2D(open_px, strides=1, padding="same")(eroded)
    weights = {"above": (np.full((1, 1, 1, 1), steep), np.array([-steep * lo])),
               "below": (np.full((1, 1, 1, 1), -steep), np.array([steep * hi])),
               "neg1": (np.full((1, 1, 1, 1), -1.0),),
               "neg2": (np.full((1, 1, 1, 1), -1.0),)}
    if binary:
        out = layers.Conv2D(1, 1, activation="sigmoid", name="lungs")(lung)
        weights["lungs"] = (np.full((1, 1, 1, 1), 20.0), np.array([-10.0]))
    else:
        # A Dense layer with a zero kernel on the rows is a constant map: its bias, 1 on the grid's
        # right half (patient Left), 0 on its left half (patient Right).
        side = layers.Dense(size, name="side")(layers.Reshape((size, size))(x))
        side = layers.Reshape((size, size, 1))(side)
        out = layers.Conv2D(3, 1, activation="softmax", name="lungs")(layers.Concatenate()([lung, side]))
        w = np.zeros((1, 1, 2, 3))
        w[0, 0, 0] = [0.0, 20.0, 20.0]
        w[0, 0, 1] = [0.0, -100.0, 100.0]
        weights["side"] = (np.zeros((size, size)), (np.arange(size) >= size // 2).astype(float))
        weights["lungs"] = (w, np.array([0.5, 0.0, -100.0]))
    model = keras.Model(x, out, name="oracle_binary" if binary else "oracle")
    for name, arrays in weights.items():
        model.get_layer(name).set_weights([np.asarray(a, np.float32) for a in arrays])
    return model


def save_with_card(model, path: Path, size: int, pixel_mm: float, binary: bool = False,
                   name: str = "test model") -> Path:
    """Save a Keras model and its model card (with SHA-256) as LungSeg expects."""
    from LungSegLib.core.model import write_card
    from LungSegLib.labels import BINARY_CLASS_NAMES, CLASS_NAMES

    model.save(path)
    write_card(path, {"name": name,
                      "classes": list(BINARY_CLASS_NAMES if binary else CLASS_NAMES),
                      "input": {"size": size, "pixel_mm": pixel_mm, "hu_window": [-1024.0, 600.0]}})
    return path


@pytest.fixture(scope="session")
def oracle_model_path(tmp_path_factory) -> Path:
    """3-class patient-side oracle (128 px of 3 mm) saved as ``.keras`` + card."""
    folder = tmp_path_factory.mktemp("oracle")
    return save_with_card(build_oracle(), folder / "oracle.keras", ORACLE_SIZE, ORACLE_PIXEL_MM,
                          name="oracle")


@pytest.fixture(scope="session")
def oracle_model(oracle_model_path):
    """The 3-class oracle, loaded once per session through ``load_model`` (safe mode, checksum)."""
    from LungSegLib.core.model import load_model

    return load_model(oracle_model_path)


@pytest.fixture(scope="session")
def binary_oracle_model_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("oracle_binary")
    return save_with_card(build_oracle(binary=True), folder / "oracle_binary.keras", ORACLE_SIZE,
                          ORACLE_PIXEL_MM, binary=True, name="oracle binary")


@pytest.fixture(scope="session")
def binary_oracle_model(binary_oracle_model_path):
    from LungSegLib.core.model import load_model

    return load_model(binary_oracle_model_path)


@pytest.fixture(scope="session")
def tiny_unet_path(tmp_path_factory) -> Path:
    """An untrained tiny U-Net (64 px of 6 mm, base_filters=4, depth=2): the real network code path."""
    from LungSegLib.core.unet import build_unet

    folder = tmp_path_factory.mktemp("tiny_unet")
    return save_with_card(build_unet(size=64, n_classes=3, base_filters=4, depth=2),
                          folder / "tiny_unet.keras", 64, 6.0, name="tiny unet")


# --- an analytic chest phantom, sampled on any grid ----------------------------------------------
class ChestPhantom:
    """A chest defined in LPS millimetres, so it can be sampled on any voxel grid.

    Air (−1000 HU) around an elliptic body (40 HU) that holds two ellipsoidal lungs (−850 HU): the
    patient's right lung (label 1) at smaller LPS x, and a smaller left lung (label 2). Sampling the
    same phantom on differently oriented grids gives the same anatomy, which is what orientation
    tests compare.
    """

    center = np.array([12.0, -8.0, 40.0])
    body_semi_axes = (150.0, 105.0)
    lungs = {1: (np.array([-68.0, 8.0, 0.0]), np.array([48.0, 62.0, 95.0])),
             2: (np.array([66.0, 8.0, 0.0]), np.array([40.0, 55.0, 85.0]))}
    air_hu, body_hu, lung_hu = -1000, 40, -850

    def points(self, geometry, shape_kji: Sequence[int]) -> np.ndarray:
        """LPS position (mm) of every voxel, ``[k, j, i, 3]``."""
        k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
        ijk = np.stack([i, j, k], axis=-1).astype(float)
        m = geometry.ijk_to_lps()
        return ijk @ m[:3, :3].T + m[:3, 3]

    def labels(self, geometry, shape_kji: Sequence[int]) -> np.ndarray:
        """Ground-truth labels (0/1/2) at the voxel centres."""
        p = self.points(geometry, shape_kji) - self.center
        out = np.zeros(tuple(shape_kji), np.uint8)
        for label, (c, r) in self.lungs.items():
            out[(((p - c) / r) ** 2).sum(axis=-1) <= 1.0] = label
        return out

    def ct(self, geometry, shape_kji: Sequence[int]) -> np.ndarray:
        """int16 HU volume ``[k, j, i]``."""
        p = self.points(geometry, shape_kji) - self.center
        a, b = self.body_semi_axes
        body = (p[..., 0] / a) ** 2 + (p[..., 1] / b) ** 2 <= 1.0
        vol = np.where(body, self.body_hu, self.air_hu).astype(np.int16)
        vol[self.labels(geometry, shape_kji) > 0] = self.lung_hu
        return vol

    def geometry(self, shape_kji: Sequence[int], spacing_ijk: Sequence[float],
                 direction: Optional[np.ndarray] = None, shift_mm: Tuple[float, float, float] = (0, 0, 0)):
        """A grid of ``shape_kji`` voxels whose centre lies at the phantom's centre (+ ``shift_mm``)."""
        from LungSegLib.core.geometry import Geometry

        d = np.eye(3) if direction is None else np.asarray(direction, float)
        half = (np.array(shape_kji[::-1], float) - 1) / 2 * np.asarray(spacing_ijk, float)
        origin = self.center + np.asarray(shift_mm, float) - d @ half
        return Geometry(tuple(spacing_ijk), tuple(origin), d)


@pytest.fixture(scope="session")
def chest_phantom() -> ChestPhantom:
    return ChestPhantom()


@pytest.fixture(scope="session")
def dice_score():
    """Dice overlap of two masks (1.0 when both are empty): the library's one Dice."""
    from LungSegLib.evaluation.metrics import dice

    return dice


# --- real data --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_ct_path() -> Path:
    """The shared sample case's CT (skips the test when the shared data is not beside the checkout)."""
    path = DATA_DIR / "cases" / SAMPLE_CASE / "ct.nrrd"
    if not path.is_file():
        pytest.skip(f"real CT not available: {path} is missing (set LUNGSEG_DATA_DIR to the shared data "
                    "folder to run this test)")
    return path


@pytest.fixture(scope="session")
def real_ct_crop(real_ct_path, tmp_path_factory) -> Path:
    """12 slices through the lungs of the real sample CT at a quarter of its in-plane resolution
    (real HU and geometry, about 0.4 MB), written as NRRD."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(real_ct_path))
    label_path = real_ct_path.with_name("label.nrrd")
    nz = image.GetSize()[2]
    if label_path.is_file():
        label = sitk.ReadImage(str(label_path))  # keep the image alive while its array view is used
        lung_slices = np.flatnonzero(sitk.GetArrayViewFromImage(label).any(axis=(1, 2)))
        middle = int(np.median(lung_slices)) if lung_slices.size else nz // 2
    else:
        middle = nz // 2
    start = int(np.clip(middle - 6, 0, max(0, nz - 12)))
    crop = image[:, :, start:start + 12]
    small = sitk.BinShrink(crop, [4, 4, 1])  # averages 4x4 pixels: real HU, 4x the pixel size
    path = tmp_path_factory.mktemp("real") / "ct_crop.nrrd"
    sitk.WriteImage(small, str(path), useCompression=True)
    return path


# --- the shipped sample CT and 3D Slicer's MRML scene (slicer-core wheel) ---------------------------
REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO_ROOT / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"


@pytest.fixture(scope="session")
def sample_ct_crop(tmp_path_factory) -> Path:
    """8 slices from the middle of the shipped sample CT (all its slices hold lung), at half its
    in-plane resolution (128 x 128 at 3.9 mm): real HU and patient geometry, about 0.3 MB."""
    import SimpleITK as sitk

    if not SAMPLE_CT.is_file():
        pytest.skip(f"sample CT not shipped: {SAMPLE_CT}")
    image = sitk.ReadImage(str(SAMPLE_CT))
    start = max(0, image.GetSize()[2] // 2 - 4)
    small = sitk.BinShrink(image[:, :, start:start + 8], [2, 2, 1])
    path = tmp_path_factory.mktemp("sample") / "sample_ct_crop.nrrd"
    sitk.WriteImage(small, str(path))
    return path


class MRMLApp:
    """A Slicer application without Qt: scene, application logic and the module logics that
    segmentation, volume and subject-hierarchy code needs (as 3D Slicer registers them at startup)."""

    def __init__(self) -> None:
        import slicer
        from vtkmodules.vtkCommonCore import vtkCollection

        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().AddDefaultColorNodes()
        self.app_logic.SetSliceLogics(vtkCollection())
        self.app_logic.SetViewLogics(vtkCollection())
        # Terminologies is left out: its logic needs the terminology JSON files of a Slicer install,
        # which the wheel does not ship (segments keep their terminology tags without it).
        self.logics = {}
        for name, cls in (("Colors", slicer.vtkMRMLColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                          ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                          ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)):
            logic = cls()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[name] = logic

    def load_volume(self, path: Path, name: str = "CT"):
        """A scalar volume node read by Slicer's own volume reader (as File > Add Data does)."""
        node = self.logics["Volumes"].AddArchetypeVolume(str(path), name)
        assert node is not None, f"Slicer could not read {path}"
        return node

    def node_ids(self) -> set:
        return {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}


@pytest.fixture
def mrml_app():
    """A fresh :class:`MRMLApp`; ``slicer.mrmlScene`` points at its scene during the test, as in Slicer."""
    slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (it has no wheel for Python 3.9)")
    app = MRMLApp()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = app.scene
    yield app
    app.scene.Clear(1)
    if previous is None:
        del slicer.mrmlScene
    else:
        slicer.mrmlScene = previous


# --- DICOM series written with SimpleITK ---------------------------------------------------------------
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom_series(folder: Path, hu: np.ndarray, series_uid: str, *, modality: str = "CT",
                       slope: float = 1.0, intercept: float = -1024.0, spacing=(0.75, 0.75, 2.5),
                       origin=(-100.0, -120.0, -50.0), seed: int = 0,
                       orientation=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))) -> None:
    """Write ``hu`` ([k, j, i]) as a DICOM series with SimpleITK, one file per slice.

    File names and instance numbers are shuffled, so only the Image Position (Patient) tells the slice
    order. GDCM stores (HU - intercept) / slope and writes the rescale tags.
    """
    # GDCM's writer switches the process locale to "C", which would make Python's default text
    # encoding ASCII for every later test in this process: put the locale back afterwards.
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_series(folder, hu, series_uid, modality, slope, intercept, spacing, origin, seed,
                            orientation)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_dicom_series(folder, hu, series_uid, modality, slope, intercept, spacing, origin, seed,
                        orientation) -> None:
    import SimpleITK as sitk

    folder.mkdir(exist_ok=True)
    order = list(range(hu.shape[0]))
    rng = random.Random(seed)
    rng.shuffle(order)
    sop_class = CT_SOP_CLASS if modality == "CT" else MR_SOP_CLASS
    for n, k in enumerate(order):
        image = sitk.GetImageFromArray(hu[k])
        image.SetSpacing(spacing[:2])
        normal = np.cross(orientation[0], orientation[1])
        position = np.asarray(origin) + k * spacing[2] * normal
        tags = {
            "0008|0060": modality, "0008|0016": sop_class, "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9", "0020|000e": series_uid,
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in np.ravel(orientation)),
            "0020|0013": str(n + 1), "0018|0050": f"{spacing[2]:g}",
            "0028|1052": f"{intercept:g}", "0028|1053": f"{slope:g}",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"IMG{rng.randrange(10**6):06d}_{n}.dcm"))
        writer.Execute(image)


@pytest.fixture(scope="session")
def write_series():
    """``write_series(folder, hu[k, j, i], series_uid, modality=, slope=, intercept=, spacing=, origin=,
    seed=, orientation=)`` writes a DICOM series (shuffled file names and instance numbers)."""
    return write_dicom_series


@pytest.fixture(autouse=True)
def _restore_process_locale():
    """GDCM's DICOM writer switches the process locale to "C", after which Python's default text
    encoding is ASCII; put the locale back after every test so no test changes the next one's."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    if locale.setlocale(locale.LC_ALL) != saved:
        locale.setlocale(locale.LC_ALL, saved)

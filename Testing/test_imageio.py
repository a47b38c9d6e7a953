"""Reading CT: every file format SimpleITK reads, DICOM series, and clear refusals of what is not a CT."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.errors import InputError
from LungSegLib.core.imageio import as_3d, check_slice_spacing, read_ct, validate_ct_image


def small_ct(shape=(4, 5, 6)) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1024, 1500, size=shape).astype(np.int16))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-12.5, 30.0, -200.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha", ".mhd"])
def test_reads_every_volume_format_with_its_geometry(tmp_path, suffix):
    image = small_ct()
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    back = read_ct(path)
    assert back.GetDimension() == 3
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)


def test_trailing_singleton_time_axis_is_dropped(tmp_path):
    volume = np.zeros((1, 4, 5, 6), np.int16)  # t, k, j, i
    volume[0, 1, 2, 3] = 77
    image = sitk.GetImageFromArray(volume, isVector=False)
    path = tmp_path / "ct4d.nii.gz"
    sitk.WriteImage(image, str(path))
    back = read_ct(path)
    assert back.GetDimension() == 3 and back.GetSize() == (6, 5, 4)
    assert sitk.GetArrayViewFromImage(back)[1, 2, 3] == 77


# --- DICOM ----------------------------------------------------------------------------------------
def test_dicom_series_sorted_by_position_with_rescale_applied(tmp_path, write_series):
    import pydicom

    hu = (np.arange(7 * 6 * 5).reshape(7, 6, 5) * 4 - 1000).astype(np.int16)  # even: slope 2 is exact
    write_series(tmp_path / "series", hu, "1.2.826.0.1.3680043.2.1125.1.1", slope=2.0, intercept=-1024.0)
    image = read_ct(tmp_path / "series")
    assert image.GetSize() == (5, 6, 7)
    assert np.allclose(image.GetSpacing(), (0.75, 0.75, 2.5))
    assert np.allclose(image.GetOrigin(), (-100.0, -120.0, -50.0))
    assert np.array_equal(sitk.GetArrayFromImage(image), hu)
    # the files really hold stored values, not HU: the reader applied slope and intercept
    stored = pydicom.dcmread(next((tmp_path / "series").iterdir()))
    assert float(stored.RescaleSlope) == 2.0 and float(stored.RescaleIntercept) == -1024.0
    assert stored.pixel_array.min() >= 0


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, write_series):
    hu = np.full((6, 6, 5), -1000, np.int16)
    folder = tmp_path / "series"
    write_series(folder, hu, "1.2.826.0.1.3680043.2.1125.1.7")
    by_z = {}
    for f in folder.iterdir():
        header = sitk.ImageFileReader()
        header.SetFileName(str(f))
        header.ReadImageInformation()
        by_z[float(header.GetMetaData("0020|0032").split("\\")[2])] = f
    by_z[sorted(by_z)[3]].unlink()
    with pytest.raises(InputError, match="not evenly spaced.*gap"):
        read_ct(folder)


def test_slice_spacing_check_accepts_small_jitter_only():
    check_slice_spacing(np.array([0.0, 2.5, 5.02, 7.49, 10.0]))
    with pytest.raises(InputError, match="gap"):
        check_slice_spacing(np.array([0.0, 2.5, 5.0, 10.0, 12.5]))
    with pytest.raises(InputError, match="overlapping or repeated"):
        check_slice_spacing(np.array([0.0, 2.5, 5.0, 5.0, 7.5, 10.0]))


def test_oblique_dicom_series_keeps_its_direction(tmp_path, write_series):
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    row, col = rotation[:, 0], rotation[:, 1]  # rotated about z and tilted about x
    hu = (np.arange(5 * 4 * 3).reshape(5, 4, 3) * 10 - 900).astype(np.int16)
    write_series(tmp_path / "oblique", hu, "1.2.826.0.1.3680043.2.1125.4.1", orientation=(row, col),
                 origin=(10.0, 20.0, 30.0), spacing=(0.5, 0.6, 2.0))
    image = read_ct(tmp_path / "oblique")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction[:, 0], row, atol=1e-5) and np.allclose(direction[:, 1], col, atol=1e-5)
    assert np.allclose(direction[:, 2], np.cross(row, col), atol=1e-5)
    assert np.allclose(image.GetSpacing(), (0.5, 0.6, 2.0), atol=1e-4)
    assert np.allclose(image.GetOrigin(), (10.0, 20.0, 30.0), atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(image), hu)


def test_dicom_folder_picks_the_largest_ct_series(tmp_path, write_series):
    folder = tmp_path / "study"
    big = np.full((6, 4, 4), -500, np.int16)
    small = np.full((3, 4, 4), 100, np.int16)
    mr = np.full((9, 4, 4), 300, np.int16)
    write_series(folder, small, "1.2.826.0.1.3680043.2.1125.2.1", seed=1)
    write_series(folder, big, "1.2.826.0.1.3680043.2.1125.2.2", seed=2)
    write_series(folder, mr, "1.2.826.0.1.3680043.2.1125.2.3", modality="MR", intercept=0, seed=3)
    image = read_ct(folder)
    assert image.GetSize()[2] == 6  # not the 9-slice MR, not the 3-slice CT
    assert np.all(sitk.GetArrayViewFromImage(image) == -500)


def test_dicom_folder_without_ct_is_refused_naming_the_modality(tmp_path, write_series):
    write_series(tmp_path / "mr", np.full((4, 4, 4), 300, np.int16), "1.2.826.0.1.3680043.2.1125.3.1",
                 modality="MR", intercept=0)
    with pytest.raises(InputError, match=r"no CT series.*MR"):
        read_ct(tmp_path / "mr")


def test_single_file_with_non_ct_modality_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    image.SetMetaData("0008|0060", "MR")
    path = tmp_path / "mr.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match="MR image, not CT"):
        read_ct(path)


# --- refusals -------------------------------------------------------------------------------------
def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_ct(tmp_path / "nothing.nrrd")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.nrrd"
    path.touch()
    with pytest.raises(InputError, match="empty file"):
        read_ct(path)


def test_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError, match="Cannot read notes.nrrd"):
        read_ct(path)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="without a DICOM image series"):
        read_ct(tmp_path)


def test_2d_image_is_refused(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(path))
    with pytest.raises(InputError, match="2-D image"):
        read_ct(path)


def test_rgb_image_is_refused(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([6, 5, 4], sitk.sitkVectorUInt8, 3), str(path))
    with pytest.raises(InputError, match="3 components per pixel"):
        read_ct(path)


def test_4d_time_series_is_refused(tmp_path):
    path = tmp_path / "dynamic.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.int16), isVector=False), str(path))
    with pytest.raises(InputError, match="4-D"):
        read_ct(path)


def test_validate_refuses_in_memory_images_too():
    with pytest.raises(InputError, match="2-D"):
        validate_ct_image(sitk.Image(4, 4, sitk.sitkFloat32))
    with pytest.raises(InputError, match="complex"):
        validate_ct_image(sitk.Image(4, 4, 4, sitk.sitkComplexFloat32))
    with pytest.raises(InputError, match="4-D"):
        validate_ct_image(sitk.Image([4, 4, 4, 2], sitk.sitkInt16))
    validate_ct_image(sitk.Image(4, 4, 4, sitk.sitkInt16))
    one_frame = sitk.Image([6, 5, 4, 1], sitk.sitkInt16)
    validate_ct_image(one_frame)
    assert as_3d(one_frame).GetSize() == (6, 5, 4)
    assert as_3d(sitk.Image(4, 4, 4, sitk.sitkInt16)).GetDimension() == 3

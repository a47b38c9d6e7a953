"""Corrupt or truncated compressed CT files are refused (exit 3) instead of read as noise (issue 10, point 3).

ITK reads a gzip-damaged ``.nii.gz``, gzip NRRD data with a flipped byte and damaged zlib MetaImage data
without an error; :mod:`LungSegLib.core.compressed` verifies the stream first. Every file here is made
by the test from a small crop of the shipped sample CT.
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.cli import main
from LungSegLib.core.compressed import verify_compressed_input
from LungSegLib.core.imageio import read_ct
from LungSegLib.errors import InputError

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"


@pytest.fixture(scope="module")
def small_ct() -> sitk.Image:
    """A 96 x 96 x 12 crop of the sample (real CT texture, so the compressed streams are not trivial)."""
    image = sitk.ReadImage(str(SAMPLE))
    return image[80:176, 80:176, 18:30]


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _nrrd_data_offset(path: Path) -> int:
    return path.read_bytes().index(b"\n\n") + 2


def _mha_data_offset(path: Path) -> int:
    data = path.read_bytes()
    return data.index(b"\n", data.index(b"ElementDataFile")) + 1


# (name, writer(image, folder) -> (file given to LungSeg, file holding the compressed stream, stream start))
def _nii_gz(image, folder):
    path = _write(image, folder / "ct.nii.gz")
    return path, path, 0


def _nrrd_attached(image, folder):
    path = _write(image, folder / "ct.nrrd")
    assert b"encoding: gzip" in path.read_bytes()[:1000]
    return path, path, _nrrd_data_offset(path)


def _nrrd_detached(image, folder):
    attached = _write(image, folder / "attached.nrrd")
    raw = attached.read_bytes()
    header, data = raw[:_nrrd_data_offset(attached)], raw[_nrrd_data_offset(attached):]
    attached.unlink()
    (folder / "ct.raw.gz").write_bytes(data)
    nhdr = folder / "ct.nhdr"
    nhdr.write_bytes(header.rstrip(b"\n") + b"\ndata file: ct.raw.gz\n")
    return nhdr, folder / "ct.raw.gz", 0


def _mha_local(image, folder):
    path = _write(image, folder / "ct.mha")
    return path, path, _mha_data_offset(path)


def _mhd_zraw(image, folder):
    path = _write(image, folder / "ct.mhd")
    zraw = folder / "ct.zraw"
    assert zraw.is_file()
    return path, zraw, 0


FORMATS = {"nii.gz": _nii_gz, "nrrd gzip attached": _nrrd_attached, "nhdr + raw.gz": _nrrd_detached,
           "mha zlib": _mha_local, "mhd + zraw": _mhd_zraw}


def _flip_middle(data: bytearray, start: int) -> bytearray:
    data[start + (len(data) - start) // 2] ^= 0x5A
    return data


def _truncate(data: bytearray, start: int) -> bytearray:
    return data[:start + (len(data) - start) * 2 // 3]


def _cut_last_bytes(data: bytearray, start: int) -> bytearray:
    return data[:-4]


# (damage, mutation, a phrase the message must hold)
DAMAGES = [
    ("byte flipped mid-stream", _flip_middle, r"checksum|corrupt"),
    ("truncated to 2/3", _truncate, r"ends early \(truncated"),
    ("last 4 bytes missing", _cut_last_bytes, r"ends early \(truncated|checksum|length"),
]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_intact_compressed_files_pass_and_read(small_ct, tmp_path, fmt):
    given, _, _ = FORMATS[fmt](small_ct, tmp_path)
    verify_compressed_input(given)
    image = read_ct(given)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(small_ct))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("damage, mutate, phrase", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_compressed_stream_is_refused_naming_file_and_damage(small_ct, tmp_path, fmt, damage, mutate,
                                                                   phrase):
    given, stream_file, start = FORMATS[fmt](small_ct, tmp_path)
    stream_file.write_bytes(bytes(mutate(bytearray(stream_file.read_bytes()), start)))
    before = hashlib.sha256(stream_file.read_bytes()).hexdigest()
    with pytest.raises(InputError, match=phrase) as info:
        read_ct(given)
    message = str(info.value)
    assert given.name in message and "damaged" in message
    if stream_file != given:
        assert stream_file.name in message  # the detached data file is named too
    assert hashlib.sha256(stream_file.read_bytes()).hexdigest() == before  # never modified


def test_itk_alone_reads_the_damage_silently(tmp_path):
    """Why the check exists: without it, the damaged sample (the whole 256 x 256 x 48 CT) reads 'fine'
    with wrong voxels in many slices (measured with SimpleITK 2.x: 25 of 48 slices)."""
    clean = sitk.ReadImage(str(SAMPLE))
    path = _write(clean, tmp_path / "ct.nii.gz")
    path.write_bytes(bytes(_flip_middle(bytearray(path.read_bytes()), 0)))
    try:
        damaged = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError:
        pytest.skip("this ITK build detects gzip damage itself (the verification is then a second guard)")
    differing = (damaged != sitk.GetArrayViewFromImage(clean)).any(axis=(1, 2))
    assert differing.sum() >= 5
    with pytest.raises(InputError, match="damaged"):
        read_ct(path)


def test_gzip_crc_and_length_trailer_are_checked(small_ct, tmp_path):
    path = _write(small_ct, tmp_path / "ct.nii.gz")
    good = path.read_bytes()
    bad_crc = bytearray(good)
    bad_crc[-8] ^= 0xFF  # first byte of the CRC-32
    path.write_bytes(bytes(bad_crc))
    with pytest.raises(InputError, match="checksum does not match"):
        verify_compressed_input(path)
    bad_length = bytearray(good)
    bad_length[-1] ^= 0x01  # the uncompressed length (ISIZE)
    path.write_bytes(bytes(bad_length))
    with pytest.raises(InputError, match="length recorded in the gzip trailer"):
        verify_compressed_input(path)


def test_multi_member_gzip_and_zero_padding_pass_but_trailing_garbage_does_not(tmp_path):
    payload = np.arange(200_000, dtype=np.int16).tobytes()
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(payload[:100_000]) + gzip.compress(payload[100_000:]) + b"\0" * 16)
    verify_compressed_input(path)
    path.write_bytes(gzip.compress(payload) + b"not gzip")
    with pytest.raises(InputError, match="unexpected bytes follow"):
        verify_compressed_input(path)


def test_highly_compressible_stream_is_verified_in_bounded_pieces(tmp_path):
    """A 'zip bomb'-like stream (64 MiB of zeros in ~64 KiB) is verified without inflating it at once."""
    path = tmp_path / "zeros.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 1 << 20
    import tracemalloc

    tracemalloc.start()
    verify_compressed_input(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20


def test_uncompressed_files_are_not_touched(small_ct, tmp_path):
    path = tmp_path / "raw.nrrd"
    sitk.WriteImage(small_ct, str(path), useCompression=False)
    verify_compressed_input(path)  # raw encoding: nothing to verify, no error
    verify_compressed_input(tmp_path)  # a folder (DICOM): nothing to verify


def test_zlib_metaimage_damage_names_adler_checksum(small_ct, tmp_path):
    path, _, _ = _mha_local(small_ct, tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # last byte of the Adler-32
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum does not match"):
        verify_compressed_input(path)


def test_cli_refuses_a_truncated_nii_gz_with_exit_3_and_writes_nothing(small_ct, tmp_path, capsys):
    path = _write(small_ct, tmp_path / "ct.nii.gz")
    path.write_bytes(bytes(_truncate(bytearray(path.read_bytes()), 0)))
    out = tmp_path / "lungs.nrrd"
    code = main(["segment", str(path), str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3
    assert "ct.nii.gz is damaged" in err and "truncated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]

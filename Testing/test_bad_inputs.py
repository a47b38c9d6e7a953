"""The bad-input corpus: one table of everything `lungseg segment` must refuse, and how.

HOW TO ADD A CASE: append a ``Case(...)`` to ``CASES`` (keep the sections). ``make(ctx)`` builds the
files in ``ctx.tmp`` (helpers below: ``write_ct``, ``small_ct``, ``ctx.oracle_copy()``...) and returns
the names its ``args`` use as ``{placeholders}`` (``{tmp}`` is always there). Set ``exit_code`` and a
``message`` regex the error must match (say what the *cause* is, not just "error"). A case that must
get as far as loading the model says ``loads_model=True`` (keep those few: each costs seconds); every
other case is asserted to be refused before "Loading the model...". Nothing binary is committed:
every input is generated here.

Every case asserts: the exit code; a message naming the cause; that nothing under the case's folder
changed (input bytes, existing outputs, model files: hashes before/after; no new file, no temporary
file, no new folder); and for paths outside it (``/dev/full``) that they are what they were.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import write_dicom_series
from LungSegLib.cli import main
from LungSegLib.defaults import MAX_BATCH_SIZE

SERIES_UID = "1.2.826.0.1.3680043.2.1125.10.1"


# --- building inputs -----------------------------------------------------------------------------------
def chest_hu(shape=(8, 64, 64)) -> np.ndarray:
    """A small chest in HU ``[k, j, i]``: air around a soft-tissue body holding two lungs."""
    k, j, i = shape
    vol = np.full(shape, -1000, np.int16)
    vol[:, j // 6:j - j // 6, i // 8:i - i // 8] = 40
    vol[:, j // 3:j - j // 3, i // 5:i // 2 - 2] = -850
    vol[:, j // 3:j - j // 3, i // 2 + 2:i - i // 5] = -850
    noise = np.random.default_rng(0).normal(0.0, 12.0, shape)  # scanner noise: no exact plateaus
    return (vol + noise).round().astype(np.int16)


def write_ct(path: Path, array: np.ndarray, spacing=(3.0, 3.0, 3.0), is_vector: bool = False,
             meta: Optional[Dict[str, str]] = None) -> Path:
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    if image.GetDimension() == 3 and not is_vector:
        image.SetSpacing(spacing)
    for key, value in (meta or {}).items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path))
    return path


def small_ct(ctx: "Ctx", name: str = "ct.nrrd") -> Path:
    """A valid small chest CT that the CLI would segment."""
    return write_ct(ctx.tmp / name, chest_hu())


class Ctx:
    """What a case's ``make`` gets: its folder and the test models."""

    def __init__(self, tmp: Path, request):
        self.tmp = tmp
        self._request = request

    def oracle_copy(self, name: str = "model.keras") -> Path:
        """A copy of the oracle test model and its card in this case's folder (to tamper with)."""
        source = self._request.getfixturevalue("oracle_model_path")
        model = self.tmp / name
        shutil.copy(source, model)
        shutil.copy(source.with_suffix(".json"), model.with_suffix(".json"))
        return model


def _with_ct(**extra) -> Callable[[Ctx], Dict[str, object]]:
    """``make`` for cases that need only a valid input CT (plus ``extra`` files made by callables)."""
    def make(ctx: Ctx) -> Dict[str, object]:
        names: Dict[str, object] = {"input": small_ct(ctx), "output": ctx.tmp / "lungs.seg.nrrd"}
        for key, build in extra.items():
            names[key] = build(ctx)
        return names
    return make


def _file(name: str, content: bytes = b"keep me") -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        (ctx.tmp / name).write_bytes(content)
        return ctx.tmp / name
    return build


def _truncated_nrrd(ctx: Ctx) -> Dict[str, object]:
    whole = small_ct(ctx, "whole.nrrd").read_bytes()
    (ctx.tmp / "whole.nrrd").unlink()
    (ctx.tmp / "ct.nrrd").write_bytes(whole[:len(whole) // 2])
    return {"input": ctx.tmp / "ct.nrrd", "output": ctx.tmp / "lungs.nrrd"}


def _dicom(ctx: Ctx, positions_mm: Sequence[float], modality: str = "CT") -> Dict[str, object]:
    """A DICOM series whose slices lie at ``positions_mm`` (written one slice per position)."""
    folder = ctx.tmp / "dicom"
    folder.mkdir()
    hu = chest_hu((1, 32, 32))[0]
    for n, z in enumerate(positions_mm):
        sub = ctx.tmp / f"s{n}"
        write_dicom_series(sub, hu[None], SERIES_UID, modality=modality, spacing=(6.0, 6.0, 3.0),
                           origin=(-96.0, -96.0, z), seed=n)
        for f in sub.iterdir():
            f.rename(folder / f"{n:03d}_{f.name}")
        sub.rmdir()
    return {"input": folder, "output": ctx.tmp / "lungs.nrrd"}


def _mr_series(ctx: Ctx) -> Dict[str, object]:
    write_dicom_series(ctx.tmp / "mr", np.full((3, 8, 8), 200, np.int16), SERIES_UID, modality="MR",
                       intercept=0)
    return {"input": ctx.tmp / "mr", "output": ctx.tmp / "lungs.nrrd"}


def _input(build: Callable[[Ctx], Path]) -> Callable[[Ctx], Dict[str, object]]:
    def make(ctx: Ctx) -> Dict[str, object]:
        return {"input": build(ctx), "output": ctx.tmp / "lungs.seg.nrrd"}
    return make


def _fifo(name: str) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        os.mkfifo(ctx.tmp / name)
        return ctx.tmp / name
    return build


def _socket(name: str) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cwd = os.getcwd()
        os.chdir(ctx.tmp)  # a relative name: socket paths are limited to ~100 characters
        try:
            sock.bind(name)
        finally:
            os.chdir(cwd)
            sock.close()
        return ctx.tmp / name
    return build


def _hard_link_to_input(ctx: Ctx) -> Path:
    os.link(ctx.tmp / "ct.nrrd", ctx.tmp / "alias.nrrd")
    return ctx.tmp / "alias.nrrd"


def _symlink_to_input(ctx: Ctx) -> Path:
    (ctx.tmp / "link.nrrd").symlink_to(ctx.tmp / "ct.nrrd")
    return ctx.tmp / "link.nrrd"


def _symlink(name: str, target: str) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        (ctx.tmp / name).symlink_to(target)
        return ctx.tmp / name
    return build


def _folder(name: str) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        (ctx.tmp / name).mkdir()
        return ctx.tmp / name
    return build


def _model(tamper: Callable[[Path], None]) -> Callable[[Ctx], Dict[str, object]]:
    """A valid input and a tampered copy of the oracle model."""
    def make(ctx: Ctx) -> Dict[str, object]:
        model = ctx.oracle_copy()
        tamper(model)
        return {"input": small_ct(ctx), "output": ctx.tmp / "lungs.nrrd", "model": model}
    return make


def _flip_a_byte(model: Path) -> None:
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def _corrupt_but_consistent(model: Path) -> None:
    """Garbage in the model file with a card whose checksum matches it: only loading can tell."""
    model.write_bytes(b"PK\x03\x04 this is not a Keras archive" * 10)
    card = json.loads(model.with_suffix(".json").read_text())
    card["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    model.with_suffix(".json").write_text(json.dumps(card))


def _compressed(name: str, damage: Callable[[bytes, int], bytes]) -> Callable[[Ctx], Path]:
    """A compressed CT file (gzip .nii.gz / gzip NRRD, zlib .mha) whose stream ``damage(data, start)``
    spoils; ITK alone would read it as noise."""
    def build(ctx: Ctx) -> Path:
        path = ctx.tmp / name
        image = sitk.GetImageFromArray(chest_hu())
        image.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(image, str(path), True)
        data = path.read_bytes()
        start = 0
        if name.endswith(".nrrd"):
            start = data.index(b"\n\n") + 2
        elif name.endswith(".mha"):
            start = data.index(b"\n", data.index(b"ElementDataFile")) + 1
        path.write_bytes(damage(data, start))
        return path
    return build


def _flip_mid_stream(data: bytes, start: int) -> bytes:
    out = bytearray(data)
    out[start + (len(data) - start) // 2] ^= 0x5A
    return bytes(out)


def _cut_to_two_thirds(data: bytes, start: int) -> bytes:
    return data[:start + (len(data) - start) * 2 // 3]


def _detached_gzip_nrrd(ctx: Ctx) -> Path:
    """ct.nhdr + a damaged detached ct.raw.gz."""
    attached = _compressed("attached.nrrd", lambda data, start: data)(ctx)
    data = attached.read_bytes()
    attached.unlink()
    start = data.index(b"\n\n") + 2
    (ctx.tmp / "ct.raw.gz").write_bytes(_flip_mid_stream(data[start:], 0))
    (ctx.tmp / "ct.nhdr").write_bytes(data[:start].rstrip(b"\n") + b"\ndata file: ct.raw.gz\n")
    return ctx.tmp / "ct.nhdr"


def _float_ct(fill: Callable[[np.ndarray], None], name: str = "f.nrrd") -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        array = chest_hu().astype(np.float32)
        fill(array)
        return write_ct(ctx.tmp / name, array)
    return build


def _raw_with_padding(ctx: Ctx) -> Path:
    """Raw stored values (HU + 1024, no rescale intercept) with -2000 padding outside a scan circle:
    the padding used to pass for air."""
    raw = chest_hu().astype(np.int16) + 1024
    rows, cols = np.indices(raw.shape[1:])
    raw[:, np.hypot(rows - 31.5, cols - 31.5) > 30] = -2000
    return write_ct(ctx.tmp / "raw.nrrd", raw)


def _sheared(ctx: Ctx) -> Path:
    image = sitk.GetImageFromArray(chest_hu())
    image.SetSpacing((3.0, 3.0, 3.0))
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    image.SetDirection((1.0, s, 0.0, 0.0, c, 0.0, 0.0, 0.0, 1.0))  # the j axis leans 15 degrees towards i
    sitk.WriteImage(image, str(ctx.tmp / "sheared.nrrd"))
    return ctx.tmp / "sheared.nrrd"


def _thick_slices_with_oracle(ctx: Ctx) -> Dict[str, object]:
    """8 mm slices (a ``thick_slices`` warning) and the oracle model: --strict must refuse to write."""
    return {"input": write_ct(ctx.tmp / "thick.nrrd", chest_hu(), spacing=(3.0, 3.0, 8.0)),
            "output": ctx.tmp / "lungs.nrrd", "model": ctx.oracle_copy()}


# --- the table -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One refused command: how to make its files, its arguments, and how it must fail."""

    name: str
    make: Callable[[Ctx], Dict[str, object]]
    #: after ``segment``; ``{placeholders}`` are the names ``make`` returns, and ``{tmp}``
    args: Sequence[str]
    exit_code: int
    #: regex searched in stderr
    message: str
    #: the run gets as far as loading the model (slow: keep these few)
    loads_model: bool = False
    #: paths outside the case folder that must be left as they were (compared by ``os.stat``)
    outside: Sequence[str] = field(default_factory=tuple)


IN_OUT = ("{input}", "{output}")
CASES: List[Case] = [
    # --- unreadable or not a CT: exit 3 ----------------------------------------------------------------
    Case("missing input", lambda ctx: {"input": ctx.tmp / "nowhere.nrrd", "output": ctx.tmp / "l.nrrd"},
         IN_OUT, 3, r"Input not found: .*nowhere\.nrrd"),
    Case("empty file", _input(_file("ct.nii.gz", b"")), IN_OUT, 3, r"empty file \(0 bytes\)"),
    Case("text file named .nrrd", _input(_file("ct.nrrd", b"hello, not an image\n")), IN_OUT, 3,
         r"Cannot read ct\.nrrd as an image"),
    Case("truncated NRRD", _truncated_nrrd, IN_OUT, 3, r"Cannot read ct\.nrrd: .*(fread|expected)"),
    Case("input is a FIFO", _input(_fifo("ct.nrrd")), IN_OUT, 3, r"not a regular file"),
    Case("input is a device", lambda ctx: {"input": "/dev/null", "output": ctx.tmp / "l.nrrd"}, IN_OUT, 3,
         r"/dev/null is not a regular file"),
    Case("2-D image", _input(lambda ctx: write_ct(ctx.tmp / "slice.nrrd", chest_hu()[0])), IN_OUT, 3,
         r"2-D image"),
    Case("4-D time series", _input(lambda ctx: write_ct(ctx.tmp / "dyn.nii.gz",
                                                        np.stack([chest_hu(), chest_hu()]))),
         IN_OUT, 3, r"4-D .*time series"),
    Case("RGB image", _input(lambda ctx: write_ct(ctx.tmp / "rgb.mha",
                                                  np.zeros((4, 8, 8, 3), np.uint8), is_vector=True)),
         IN_OUT, 3, r"3 components per pixel \(RGB or vector"),
    Case("MR file", _input(lambda ctx: write_ct(ctx.tmp / "mr.nrrd", np.full((4, 8, 8), 300, np.int16),
                                                meta={"0008|0060": "MR"})),
         IN_OUT, 3, r"MR image, not CT"),
    Case("MR DICOM series", _mr_series, IN_OUT, 3, r"no CT series"),
    Case("folder without DICOM", _input(lambda ctx: _file("notes.txt", b"x")(ctx).parent),
         IN_OUT, 3, r"without a DICOM image series"),
    Case("raw stored values (no rescale intercept)",
         _input(lambda ctx: write_ct(ctx.tmp / "raw.nrrd", (chest_hu() + 1024).astype(np.uint16))),
         IN_OUT, 3, r"rescale intercept"),
    Case("constant volume", _input(lambda ctx: write_ct(ctx.tmp / "c.nrrd", np.full((4, 16, 16), -1000,
                                                                                     np.int16))),
         IN_OUT, 3, r"constant"),
    Case("normalised 0..1 image",
         _input(lambda ctx: write_ct(ctx.tmp / "n.nrrd", ((chest_hu() + 1000) / 1100.0).astype(np.float32))),
         IN_OUT, 3, r"not Hounsfield units"),
    Case("DICOM series with a missing slice", lambda ctx: _dicom(ctx, [0, 3, 6, 12, 15]), IN_OUT, 3,
         r"not evenly spaced.*gap"),
    Case("DICOM series with a repeated slice", lambda ctx: _dicom(ctx, [0, 3, 6, 6, 9, 12]), IN_OUT, 3,
         r"not evenly spaced.*(overlapping|repeated)"),
    # --- damaged compressed data, non-finite voxels, padding, spacing, shear (exit 3); --strict (exit 7) -------
    Case(".nii.gz with a byte flipped mid-stream", _input(_compressed("ct.nii.gz", _flip_mid_stream)), IN_OUT, 3,
         r"ct\.nii\.gz is damaged: .*(checksum|corrupt)"),
    Case("truncated .nii.gz", _input(_compressed("ct.nii.gz", _cut_to_two_thirds)), IN_OUT, 3,
         r"ct\.nii\.gz is damaged: the gzip stream ends early \(truncated"),
    Case("gzip NRRD with a byte flipped", _input(_compressed("ct.nrrd", _flip_mid_stream)), IN_OUT, 3,
         r"ct\.nrrd is damaged: .*(checksum|corrupt)"),
    Case("gzip NRRD with a damaged detached data file", _input(_detached_gzip_nrrd), IN_OUT, 3,
         r"ct\.nhdr \(data file ct\.raw\.gz\) is damaged"),
    Case("compressed MetaImage truncated", _input(_compressed("ct.mha", _cut_to_two_thirds)), IN_OUT, 3,
         r"ct\.mha is damaged: the zlib stream ends early"),
    Case("compressed MetaImage with a byte flipped", _input(_compressed("ct.mha", _flip_mid_stream)), IN_OUT, 3,
         r"ct\.mha is damaged: .*(checksum|corrupt)"),
    Case("all voxels NaN", _input(_float_ct(lambda a: a.fill(np.nan))), IN_OUT, 3,
         r"Every voxel of the image is NaN or infinite"),
    Case("all voxels +Inf", _input(_float_ct(lambda a: a.fill(np.inf))), IN_OUT, 3,
         r"Every voxel of the image is NaN or infinite"),
    Case("raw stored values with -2000 padding", _input(_raw_with_padding), IN_OUT, 3,
         r"no air inside its field of view.*ignoring .*padding at -2000"),
    Case("only padding values", _input(lambda ctx: write_ct(ctx.tmp / "pad.nrrd",
                                                            np.where(chest_hu() > 0, -2000, -3024).astype(np.int16))),
         IN_OUT, 3, r"only padding values"),
    Case("pixel spacing 10 mm", _input(lambda ctx: write_ct(ctx.tmp / "ct.nrrd", chest_hu(), spacing=(10.0, 10.0, 3.0))),
         IN_OUT, 3, r"pixel spacing of 10 x 10 mm, outside the 0\.3-6 mm"),
    Case("pixel spacing 0.1 mm", _input(lambda ctx: write_ct(ctx.tmp / "ct.nrrd", chest_hu(), spacing=(0.1, 0.1, 1.0))),
         IN_OUT, 3, r"pixel spacing of 0\.1 x 0\.1 mm, outside the 0\.3-6 mm"),
    Case("slice spacing 15 mm", _input(lambda ctx: write_ct(ctx.tmp / "ct.nrrd", chest_hu(), spacing=(3.0, 3.0, 15.0))),
         IN_OUT, 3, r"slice spacing of 15 mm, outside the 0\.3-10 mm"),
    Case("sheared (non-orthogonal) direction", _input(_sheared), IN_OUT, 3,
         r"non-orthogonal direction matrix.*sheared by 15\.0 degrees"),
    Case("--strict and a warning (8 mm slices)", _thick_slices_with_oracle,
         IN_OUT + ("--model", "{model}", "--strict"), 7, r"--strict.*thick_slices: Slices are 8 mm apart",
         loads_model=True),
    # --- outputs that would lose data or be unreadable: exit 4 (2 for contradictory options) --------------
    Case("output is the input", _with_ct(), ("{input}", "{input}"), 4, r"would replace the input CT"),
    Case("output is the input, --overwrite", _with_ct(), ("{input}", "{input}", "--overwrite"), 4,
         r"would replace the input CT"),
    Case("output is a hard link to the input", _with_ct(alias=_hard_link_to_input),
         ("{input}", "{alias}", "--overwrite"), 4, r"would replace the input CT"),
    Case("output is a symbolic link to the input", _with_ct(alias=_symlink_to_input),
         ("{input}", "{alias}", "--overwrite"), 4, r"would replace the input CT"),
    Case("overview is the output", _with_ct(), IN_OUT + ("--overview", "{output}"), 4,
         r"The overview and the output are the same file"),
    Case("overview is the output, --overwrite", _with_ct(old=_file("lungs.seg.nrrd")),
         IN_OUT + ("--overview", "{output}", "--overwrite"), 4, r"The overview and the output are the same file"),
    Case("overview is the input, --overwrite", _with_ct(), IN_OUT + ("--overview", "{input}", "--overwrite"), 4,
         r"The overview .*ct\.nrrd would replace the input CT"),
    Case("overview is a PNG input, --overwrite",
         lambda ctx: {"input": write_ct(ctx.tmp / "ct.png", chest_hu()[0].astype(np.uint8)),
                      "output": ctx.tmp / "l.nrrd"},
         IN_OUT + ("--overview", "{input}", "--overwrite"), 4, r"overview .*would replace the input CT"),
    Case("overview named .jpg", _with_ct(), IN_OUT + ("--overview", "{tmp}/overview.jpg"), 4,
         r"overview .*must be named \*\.png"),
    Case("overview without extension", _with_ct(), IN_OUT + ("--overview", "{tmp}/overview"), 4,
         r"overview .*must be named \*\.png"),
    Case("existing output without --overwrite", _with_ct(old=_file("lungs.seg.nrrd")), IN_OUT, 4,
         r"already exists.*--overwrite"),
    Case("existing overview without --overwrite", _with_ct(png=_file("o.png", b"old picture")),
         IN_OUT + ("--overview", "{png}"), 4, r"o\.png already exists.*--overwrite"),
    Case("output is /dev/full, --overwrite", _with_ct(), ("{input}", "/dev/full", "--overwrite"), 4,
         r"/dev/full exists and is a character device, not a regular file", outside=("/dev/full",)),
    Case("output is a link to /dev/full, --overwrite", _with_ct(link=_symlink("full.nrrd", "/dev/full")),
         ("{input}", "{link}", "--overwrite"), 4, r"character device, not a regular file",
         outside=("/dev/full",)),
    Case("output is a FIFO, --overwrite", _with_ct(fifo=_fifo("fifo.nrrd")), ("{input}", "{fifo}", "--overwrite"),
         4, r"named pipe \(FIFO\), not a regular file"),
    Case("output is a socket, --overwrite", _with_ct(sock=_socket("s.nrrd")), ("{input}", "{sock}", "--overwrite"),
         4, r"socket, not a regular file"),
    Case("output is a folder", _with_ct(folder=_folder("out.nrrd")), ("{input}", "{folder}", "--overwrite"), 4,
         r"is a folder; give a file name"),
    Case("overview is a folder", _with_ct(folder=_folder("o.png")),
         IN_OUT + ("--overview", "{folder}", "--overwrite"), 4, r"overview .* is a folder"),
    Case("output folder is a file", _with_ct(f=_file("file")), ("{input}", "{f}/lungs.nrrd"), 4,
         r"is a file, not a folder"),
    Case("output in an unwritable place (/proc)", _with_ct(), ("{input}", "/proc/lungseg-test/lungs.nrrd"), 4,
         r"folder /proc is not writable"),
    Case("overview in an unwritable place (/proc)", _with_ct(), IN_OUT + ("--overview", "/proc/o.png"), 4,
         r"overview /proc/o\.png: the folder /proc is not writable"),
    Case("unknown output extension", _with_ct(), ("{input}", "{tmp}/lungs.png"), 4,
         r"Cannot tell the output format"),
    Case("no output extension", _with_ct(), ("{input}", "{tmp}/lungs"), 4, r"Cannot tell the output format"),
    Case("--format nii.gz with a .nrrd name", _with_ct(), ("{input}", "{tmp}/out.nrrd", "--format", "nii.gz"), 2,
         r"--format nii\.gz contradicts the output name 'out\.nrrd'"),
    Case("--format nrrd with a .seg.nrrd name", _with_ct(), IN_OUT + ("--format", "nrrd"), 2,
         r"--format nrrd contradicts .*\.seg\.nrrd"),
    Case("--format nrrd with an unknown extension", _with_ct(), ("{input}", "{tmp}/lungs.lbl", "--format", "nrrd"),
         2, r"--format nrrd contradicts .*lungs\.lbl\.nrrd"),
    # --- command-line usage: exit 2 (argparse) -----------------------------------------------------------
    Case("--batch-size 0", _with_ct(), IN_OUT + ("--batch-size", "0"), 2, r"--batch-size: must be at least 1"),
    Case("--batch-size too large", _with_ct(), IN_OUT + ("--batch-size", "100000"), 2,
         rf"--batch-size: must be 1-{MAX_BATCH_SIZE}"),
    Case("--batch-size not a number", _with_ct(), IN_OUT + ("--batch-size", "many"), 2,
         r"--batch-size: 'many' is not a whole number"),
    Case("--threads 0", _with_ct(), IN_OUT + ("--threads", "0"), 2, r"--threads: must be at least 1"),
    Case("--format png", _with_ct(), IN_OUT + ("--format", "png"), 2, r"--format: invalid choice"),
    Case("--precision int4", _with_ct(), IN_OUT + ("--precision", "int4"), 2, r"--precision: invalid choice"),
    # --- the model: exit 5 ----------------------------------------------------------------------------------
    Case("missing model", _with_ct(), IN_OUT + ("--model", "{tmp}/none.keras"), 5,
         r"Model file not found: .*none\.keras", loads_model=True),
    Case("model card missing", _model(lambda m: m.with_suffix(".json").unlink()),
         IN_OUT + ("--model", "{model}"), 5, r"No model card model\.json", loads_model=True),
    Case("model card not JSON", _model(lambda m: m.with_suffix(".json").write_text("{not json")),
         IN_OUT + ("--model", "{model}"), 5, r"Model card .* is unreadable", loads_model=True),
    Case("model file changed (checksum)", _model(_flip_a_byte), IN_OUT + ("--model", "{model}"), 5,
         r"Checksum mismatch for model\.keras", loads_model=True),
    Case("model file corrupt with a matching card", _model(_corrupt_but_consistent),
         IN_OUT + ("--model", "{model}"), 5, r"(could not load|Keras could not|not a valid|cannot load)",
         loads_model=True),
]


# --- the checks ------------------------------------------------------------------------------------------
def snapshot(root: Path) -> Dict[str, tuple]:
    """Every entry under ``root``: type, and content hash for regular files (FIFOs are never opened)."""
    entries: Dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                entries[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                entries[rel] = (stat.S_IFMT(info.st_mode),)
    return entries


def _outside_state(paths: Sequence[str]) -> Dict[str, tuple]:
    return {p: (os.stat(p).st_mode, os.stat(p).st_rdev, os.stat(p).st_ino) for p in paths}


def run_cli(args: Sequence[str], capsys) -> tuple:
    """``lungseg segment ARGS`` in this process: (exit code, stderr)."""
    try:
        code = main(["segment"] + [str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


def test_the_corpus_is_large_and_its_names_unique():
    names = [case.name for case in CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused(case: Case, tmp_path, capsys, request):
    work = tmp_path / "case"
    work.mkdir()
    names = case.make(Ctx(work, request))
    names["tmp"] = work
    args = [a.format(**names) for a in case.args]
    before, outside = snapshot(work), _outside_state(case.outside)

    code, err = run_cli(args, capsys)

    assert code == case.exit_code, err
    assert re.search(case.message, err, re.S), err
    if code != 2:  # argparse prints its own usage line
        assert err.splitlines()[-1].startswith("lungseg: error: "), err
    if not case.loads_model:  # refused before TensorFlow and the model load
        assert "Loading the model" not in err, err
    assert snapshot(work) == before, "the refused run changed files (input, existing output or left temps)"
    assert _outside_state(case.outside) == outside

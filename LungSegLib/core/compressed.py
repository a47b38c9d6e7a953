"""Integrity of compressed image data, checked before ITK reads it.

ITK reads a gzip-corrupt or truncated ``.nii.gz`` (and gzip NRRD data, and zlib-compressed MetaImage
data) without an error: the damaged slices come back as noise or zeros and a nonsense labelmap would be
written. So the compressed stream is verified first — gzip's CRC-32 and length trailer, zlib's
Adler-32, and an early end of the stream — by decompressing it once in bounded memory (1 MiB of input
and at most 4 MiB of output at a time, nothing kept) and refused with :class:`InputError` naming the
file and the damage.

Covered: gzip files (``.gz``, ``.nii.gz``, detected by their magic bytes whatever the name), NRRD with
``encoding: gzip`` (attached after the header, or in detached data files, including ``LIST`` and
``%d`` patterns), and MetaImage with ``CompressedData = True`` (``LOCAL`` or a separate data file).
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import BinaryIO, List, Optional, Tuple

from ..errors import InputError

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_MAX_OUT = 4 << 20
#: Bytes of a header read to find where its data starts (NRRD / MetaImage headers are small).
_MAX_HEADER = 1 << 20


def verify_compressed_input(path: os.PathLike) -> None:
    """Verify every compressed stream the image file ``path`` holds or points to; raise
    :class:`InputError` naming the file and the damage. Files without compressed data (and folders)
    pass untouched; headers this does not understand are left to ITK."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER)
    if head.startswith(_GZIP_MAGIC):
        _verify_file(path, 0, "gzip")
    elif head.startswith(b"NRRD"):
        _verify_nrrd(path, head)
    elif path.suffix.lower() in (".mha", ".mhd") or head.lstrip().startswith((b"ObjectType", b"NDims")):
        _verify_metaimage(path, head)


def _verify_file(path: Path, offset: int, kind: str, name: Optional[str] = None) -> None:
    """Decompress ``path`` from byte ``offset`` as ``kind`` (``"gzip"`` or ``"zlib"``) and discard the
    result; raises :class:`InputError` on corrupt or truncated data."""
    name = name or path.name
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            if kind == "gzip":
                _verify_gzip(f)
            else:
                _verify_zlib(f)
    except _Damage as damage:
        where = f" (its {kind} data starts at byte {offset} of {path.name})" if offset else ""
        what = str(damage).replace("CRC-32/Adler-32", "CRC-32" if kind == "gzip" else "Adler-32")
        raise InputError(
            f"{name} is damaged: {what}{where}. ITK would read it without noticing and give noise or "
            "zeros in some slices; copy or export the file again.") from None
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}") from exc


class _Damage(Exception):
    """What is wrong with a compressed stream (a phrase for the user)."""


def _describe(error: zlib.error, consumed: int) -> str:
    text = str(error)
    if "incorrect data check" in text:
        what = "the checksum does not match the data (CRC-32/Adler-32 mismatch: corrupt bytes)"
    elif "incorrect length check" in text:
        what = "the length recorded in the gzip trailer does not match the data"
    elif "incorrect header check" in text or "unknown compression method" in text:
        what = "the compressed stream has an invalid header"
    else:
        what = f"the compressed data is corrupt ({text.split(':')[-1].strip()})"
    return f"{what}, about {consumed} bytes into the compressed stream"


def _drain(d, f: BinaryIO, consumed: int) -> Tuple[bool, bytes, int]:
    """Feed ``f`` to the decompressor ``d`` until its stream ends or ``f`` does. Returns (ended,
    bytes after the stream, bytes consumed)."""
    while not d.eof:
        chunk = f.read(_CHUNK)
        if not chunk:
            return False, b"", consumed
        data = chunk
        try:
            while data and not d.eof:
                d.decompress(data, _MAX_OUT)
                data = d.unconsumed_tail
            consumed += len(chunk)
        except zlib.error as exc:
            raise _Damage(_describe(exc, consumed)) from None
    return True, d.unused_data, consumed


def _verify_gzip(f: BinaryIO) -> None:
    """A gzip file: one or more members, each checked (CRC-32 and length); trailing zero bytes (some
    tools pad) are allowed, anything else after the last member is not."""
    consumed = 0
    members = 0
    pending = b""
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if pending:
            try:
                d.decompress(pending, _MAX_OUT)
                while d.unconsumed_tail and not d.eof:
                    d.decompress(d.unconsumed_tail, _MAX_OUT)
            except zlib.error as exc:
                raise _Damage(_describe(exc, consumed)) from None
        ended, rest, consumed = _drain(d, f, consumed)
        if not ended:
            raise _Damage(f"the gzip stream ends early (truncated after {consumed} compressed bytes; "
                          "its end-of-stream marker and CRC-32/length trailer are missing)")
        members += 1
        rest += f.read(len(_GZIP_MAGIC)) if len(rest) < len(_GZIP_MAGIC) else b""
        if not rest:
            return
        if rest.startswith(_GZIP_MAGIC):
            pending = rest
            continue
        tail = rest + f.read()
        if tail.strip(b"\0"):
            raise _Damage(f"{len(tail)} unexpected bytes follow the end of gzip member {members}")
        return


def _verify_zlib(f: BinaryIO) -> None:
    """A zlib stream (MetaImage): Adler-32 checked, early end refused."""
    d = zlib.decompressobj(zlib.MAX_WBITS)
    ended, _, consumed = _drain(d, f, 0)
    if not ended:
        raise _Damage(f"the zlib stream ends early (truncated after {consumed} compressed bytes)")


def _header_lines(head: bytes) -> Tuple[List[str], int]:
    """Lines of an NRRD header up to its blank line, and the byte offset where the data starts
    (len(head) when the header does not end within ``head``)."""
    lines: List[str] = []
    pos = 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            return lines, len(head)
        line = head[pos:end].rstrip(b"\r")
        pos = end + 1
        if not line:
            return lines, pos
        lines.append(line.decode("latin-1"))
    return lines, pos


def _verify_nrrd(path: Path, head: bytes) -> None:
    lines, data_start = _header_lines(head)
    fields = {}
    data_file_lines: List[str] = []
    for i, line in enumerate(lines[1:], start=1):
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        key = key.strip().lower()
        fields[key] = value.strip()
        if key in ("data file", "datafile") and value.strip().upper().startswith("LIST"):
            data_file_lines = lines[i + 1:]
            break
    if fields.get("encoding", "").lower() not in ("gzip", "gz"):
        return
    data_file = fields.get("data file") or fields.get("datafile")
    if not data_file:
        _verify_file(path, data_start, "gzip")
        return
    for file in _nrrd_data_files(path, data_file, data_file_lines):
        _verify_file(file, _skip_lines(file, int(fields.get("line skip", "0") or 0)), "gzip",
                     name=f"{path.name} (data file {file.name})")


def _nrrd_data_files(header: Path, spec: str, list_lines: List[str]) -> List[Path]:
    """The detached data files an NRRD header names: one file, ``LIST`` (the lines after the field) or
    a ``printf``-style pattern ``name%03d.raw.gz min max step [subdim]``."""
    base = header.parent
    parts = spec.split()
    if parts and parts[0].upper() == "LIST":
        return [base / line.strip() for line in list_lines if line.strip()]
    if len(parts) >= 4 and "%" in parts[0]:
        try:
            lo, hi, step = int(parts[1]), int(parts[2]), int(parts[3])
            return [base / (parts[0] % i) for i in range(lo, hi + (1 if step > 0 else -1), step)]
        except (ValueError, TypeError):
            return []
    return [base / spec]


def _skip_lines(path: Path, n: int) -> int:
    """Byte offset after ``n`` lines at the start of ``path`` (NRRD ``line skip``)."""
    if n <= 0 or not path.is_file():
        return 0
    with open(path, "rb") as f:
        for _ in range(n):
            f.readline()
        return f.tell()


def _verify_metaimage(path: Path, head: bytes) -> None:
    fields = {}
    pos = 0
    data_start = None
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            break
        line = head[pos:end].decode("latin-1").strip()
        pos = end + 1
        if "=" not in line:
            continue
        key, value = (p.strip() for p in line.split("=", 1))
        fields[key.lower()] = value
        if key.lower() == "elementdatafile":
            data_start = pos
            break
    if fields.get("compresseddata", "").lower() != "true" or data_start is None:
        return
    data_file = fields["elementdatafile"]
    if data_file.upper() == "LOCAL":
        _verify_file(path, data_start, "zlib")
    elif not data_file.upper().startswith("LIST") and "%" not in data_file:
        file = path.parent / data_file
        if file.is_file():  # a missing data file is ITK's error to report
            _verify_file(file, 0, "zlib", name=f"{path.name} (data file {file.name})")

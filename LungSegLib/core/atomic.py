"""Atomic file writes: a file appears complete under its name, or not at all.

Everything LungSeg writes (labelmaps, model cards, reports, training caches and checkpoints, worker
files) is first written to a hidden temporary file in the *same folder* (so the final rename never
crosses a file system) and then moved into place with :func:`os.replace`. A failure or a cancel on
the way leaves the target as it was and removes the temporary file. Standard library only.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional


def temp_path(path: os.PathLike, suffix: Optional[str] = None) -> Path:
    """A hidden temporary name beside ``path`` that ends in ``suffix`` (default: the name's own
    extensions, e.g. ``.nii.gz``), since image, NumPy and Keras writers choose the format by it."""
    path = Path(path)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    return path.with_name(f".{path.name}.lungseg-{_HOST}-{os.getpid()}.tmp{suffix}")


#: This machine's name as it appears in temporary names (letters, digits, ``_`` and ``-`` only): a
#: shared network folder may hold temporary files of runs on other machines, whose pids mean nothing here.
_HOST = re.sub(r"[^A-Za-z0-9_-]", "", socket.gethostname().split(".")[0])[:32] or "host"
#: The one pattern of LungSeg's temporary files: ``.<target name>.lungseg-<host>-<pid>.tmp<suffix>``.
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.lungseg-(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)\.tmp(?P<suffix>\..*)?$")


def _process_exists(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.windll.kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def stale_temp_files(folder: os.PathLike) -> List[Path]:
    """LungSeg temporary files in ``folder`` left by a process of this machine that no longer runs
    (killed with SIGKILL, a power cut): only names of :data:`TEMP_NAME`, only regular files."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    stale = []
    for name in names:
        match = TEMP_NAME.match(name)
        if match and match["host"] == _HOST and not _process_exists(int(match["pid"])):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                stale.append(path)
    return stale


def remove_stale_temps(folder: os.PathLike) -> List[Path]:
    """Delete :func:`stale_temp_files` of ``folder`` (errors ignored: another run may race us);
    returns those removed. Every :func:`atomic_path` write calls it for its folder."""
    removed = []
    for path in stale_temp_files(folder):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


@contextmanager
def atomic_path(path: os.PathLike, suffix: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without an error, it replaces ``path``.

    On any error (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched;
    the error propagates (callers turn ``OSError`` into their own message).
    """
    tmp = temp_path(path, suffix)
    remove_stale_temps(tmp.parent)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def atomic_write_bytes(path: os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))

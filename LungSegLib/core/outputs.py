"""Every file a run writes, checked before any work and written together at the end.

A run of ``lungseg segment`` (or :meth:`LungSegmenter.segment_file`) writes several files: the labelmap,
and on request an overview PNG, a report... :func:`check_output_paths` refuses, before anything is
read or loaded, every plan that could lose data or write something unreadable:

* an output that is the input (same resolved path, or the same file through a hard or symbolic link),
  or two outputs that are one file — whatever ``overwrite`` says;
* an existing output that is not a regular file (a device such as ``/dev/full``, a FIFO, a folder, a
  socket) — whatever ``overwrite`` says, since renaming over it would replace the node itself;
* an existing regular file without ``overwrite``;
* a name that does not end in the extension of the format written (PNG bytes under ``.jpg``);
* a folder that cannot be written (no permission, read-only or virtual file system such as ``/proc``),
  found by creating and removing a probe file there.

:class:`OutputSet` then writes each file to a temporary name beside its target (:mod:`.atomic`'s
pattern) and renames them all into place in :meth:`OutputSet.commit`; anything else (an error, a cancel,
Ctrl-C / SIGTERM turned into ``KeyboardInterrupt``) removes the temporary files and the folders the run
created, so nothing is left. Standard library only: these checks run before TensorFlow is imported.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from ..defaults import FORMATS
from ..errors import OutputError, UsageError
from .atomic import remove_stale_temps, temp_path

PathLike = Union[str, os.PathLike]
#: ``{role: (path or None, format written)}``; the role names the output in messages ("output",
#: "overview", "report"...), None paths are skipped.
OutputRequest = Mapping[str, Tuple[Optional[PathLike], str]]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))

#: Committing: from the first rename on, a cancel must not claim that nothing was written (see
#: :func:`committing`).
_commit_started = False


def committing() -> bool:
    """True once an :class:`OutputSet` of this process started renaming its files into place. A signal
    handler that turns SIGTERM/SIGINT into ``KeyboardInterrupt`` checks it: from then on the run ends
    normally, with its outputs complete (the renames take microseconds)."""
    return _commit_started


def reset_committing() -> None:
    """Forget an earlier run's commit (a process that runs several commands, e.g. tests calling ``main``)."""
    global _commit_started
    _commit_started = False


def format_from_name(path: PathLike) -> Optional[str]:
    """The labelmap format a file name asks for (``.seg.nrrd`` before ``.nrrd``), or None."""
    name = Path(path).name.lower()
    for candidate in FORMATS:  # longest first
        if name.endswith("." + candidate):
            return candidate
    return None


def labelmap_format(path: PathLike, fmt: Optional[str] = None) -> str:
    """The labelmap format to write to ``path``.

    Without ``fmt`` the name's extension decides (:class:`OutputError`, exit 4, when it names no format).
    With ``fmt`` the name must end in that format's extension: a contradiction (``--format nii.gz`` with
    ``out.nrrd``, which would put NIfTI bytes in a file every reader takes for NRRD) is a
    :class:`UsageError` (exit 2).
    """
    name = Path(path).name
    from_name = format_from_name(path)
    if fmt is None:
        if from_name is None:
            raise OutputError(f"Cannot tell the output format from {name!r}: end it in "
                              + ", ".join("." + f for f in FORMATS[:-1]) + f" or .{FORMATS[-1]}.")
        return from_name
    if fmt not in FORMATS:
        raise UsageError(f"Unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if from_name != fmt:
        stem = name[:-len(from_name) - 1] if from_name else name
        raise UsageError(f"--format {fmt} contradicts the output name {name!r}"
                         + (f" (a .{from_name} name)" if from_name else "")
                         + f": name it {stem}.{fmt}, or leave out --format and let the extension decide.")
    return fmt


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _node_kind(mode: int) -> Optional[str]:
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def _existing_ancestor(folder: Path) -> Path:
    """The nearest folder above (or at) ``folder`` that exists."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable(role: str, path: Path) -> None:
    """Create and remove a probe file where ``path``'s temporary file will be made (or in the nearest
    existing folder above it, which the run will create the rest under)."""
    folder = _existing_ancestor(path.parent)
    if not folder.is_dir():
        raise OutputError(f"Cannot write the {role} {path}: {folder} is a file, not a folder.")
    probe = temp_path(folder / path.name, ".probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise OutputError(f"Cannot write the {role} {path}: the folder {folder} is not writable "
                          f"({exc.strerror or exc}). Choose another place.") from exc
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def refuse_non_regular(role: str, path: PathLike, fmt: str = "seg.nrrd") -> None:
    """Refuse an existing ``path`` that is not a regular file (a folder, device, FIFO, socket), whatever
    ``--overwrite`` says: renaming over it would replace the node itself (``/dev/full``...)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the folder check names a file in the way
        return
    except OSError as exc:
        raise OutputError(f"Cannot use the {role} {path}: {exc.strerror or exc}.") from exc
    kind = _node_kind(mode)
    if kind == "a folder":
        raise OutputError(f"The {role} {path} is a folder; give a file name such as {path / ('lungs.' + fmt)}.")
    if kind is not None:
        raise OutputError(f"The {role} {path} exists and is {kind}, not a regular file; LungSeg never "
                          "replaces such a file (not even with --overwrite). Choose a file name.")


def check_output_paths(input_path: Optional[PathLike], outputs: OutputRequest, *,
                       overwrite: bool = False) -> Dict[str, Path]:
    """Refuse every output plan that could lose data or write a misnamed file; see the module docstring.

    Args:
        input_path: the input CT file or DICOM folder (never written), or None.
        outputs: ``{role: (path, format)}``; ``format`` is the extension the name must end in
            (``"seg.nrrd"``, ``"png"``, ``"json"``...); entries with a None path are skipped.
        overwrite: replace existing regular files (never the input, never a non-regular file).

    Returns:
        ``{role: path}`` of the outputs asked for.

    Raises:
        OutputError: (exit code 4) naming the output and what to do.
    """
    planned: Dict[str, Path] = {}
    source = Path(input_path) if input_path is not None else None
    for role, (raw, fmt) in outputs.items():
        if raw is None:
            continue
        path = Path(raw)
        # the gravest problem first: losing the input or another output, replacing a device
        if source is not None and _same_file(path, source):
            raise OutputError(f"The {role} {path} would replace the input CT {source}; choose another file.")
        for other_role, other in planned.items():
            if _same_file(path, other):
                raise OutputError(f"The {role} and the {other_role} are the same file ({path}); give each "
                                  "its own name.")
        refuse_non_regular(role, path, fmt)
        if not path.name.lower().endswith("." + fmt.lower()) or path.name.startswith("."):
            suggestion = path.with_name(f"{path.stem if path.suffix else path.name}.{fmt}").name
            raise OutputError(f"The {role} {path} must be named *.{fmt} (a {fmt.upper()} file is written); "
                              f"for example {suggestion}.")
        if path.exists() and not overwrite:
            raise OutputError(f"The {role} {path} already exists; LungSeg does not overwrite it unless you "
                              "pass --overwrite (overwrite=True).")
        _check_writable(role, path)
        planned[role] = path
    return planned


class OutputSet:
    """The outputs of one run: checked at creation, written to temporary files, renamed together.

    >>> with OutputSet("ct.nrrd", {"output": ("lungs.nrrd", "nrrd")}) as outputs:
    ...     write_somehow(outputs.temp("output"))
    ...     outputs.commit()

    Leaving the ``with`` block without :meth:`commit` (an error, a cancel, ``KeyboardInterrupt``)
    removes the temporary files and the folders this run created.
    """

    def __init__(self, input_path: Optional[PathLike], outputs: OutputRequest, *, overwrite: bool = False):
        self.overwrite = overwrite
        self.paths = check_output_paths(input_path, outputs, overwrite=overwrite)
        self._temps: Dict[str, Path] = {}
        self._created_dirs: List[Path] = []
        self.committed = False

    def __contains__(self, role: str) -> bool:
        return role in self.paths

    def temp(self, role: str) -> Path:
        """The temporary file to write ``role``'s content to (its folder is created; LungSeg temporary
        files a killed run left there are removed first)."""
        if role in self._temps:
            return self._temps[role]
        target = self.paths[role]
        self._make_folder(target.parent)
        remove_stale_temps(target.parent)
        tmp = temp_path(target)  # ends in the target's extension: writers choose the format by it
        self._temps[role] = tmp
        return tmp

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(f"Cannot create the folder {new}: {exc.strerror or exc}") from exc
            self._created_dirs.append(new)

    def commit(self) -> Dict[str, Path]:
        """Rename every written temporary file into place; returns ``{role: path}`` written.

        Each rename is atomic; once they start, :func:`committing` is True so a cancel signal lets the
        run finish instead of claiming that nothing was written.
        """
        global _commit_started
        for role, tmp in self._temps.items():
            if not tmp.is_file():
                raise OutputError(f"The {role} was not written ({tmp.name} is missing).")
        _commit_started = True
        try:
            for role, tmp in self._temps.items():
                target = self.paths[role]
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    raise OutputError(f"Could not write {target}: {exc.strerror or exc}") from exc
            self.committed = True
        finally:
            if not self.committed:
                _commit_started = False
        return {role: self.paths[role] for role in self._temps}

    def discard(self) -> None:
        """Remove the temporary files and the folders this run created (when empty)."""
        for tmp in self._temps.values():
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass
        for folder in reversed(self._created_dirs):
            try:
                folder.rmdir()
            except OSError:  # not empty: something else was put there meanwhile
                pass
        self._created_dirs.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.discard()

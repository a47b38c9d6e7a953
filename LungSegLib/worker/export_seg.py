"""The DICOM SEG export worker: a lung labelmap + the CT's source DICOM files -> one DICOM SEG file.

3D Slicer's LungSeg module runs it in a separate process, like the segmentation worker, so that the
application needs neither highdicom imported nor its own DICOM code::

    python -m LungSegLib.worker.export_seg --labelmap lungs.nrrd --sources files.txt --output lungs.dcm
                                           [--model-name NAME] [--overwrite]

``--labelmap``: a 0/1/2 labelmap (any format SimpleITK reads) on the CT's grid, in either slice order;
``--sources``: a text file with the CT's DICOM files, one path per line (UTF-8). Every stdout line is one
JSON event, as in :mod:`.protocol`: ``started``, ``status``, ``done`` (``output``, ``frames``), or
``error`` (``type``, ``message``, ``exit_code``) before a failure exit. The SEG is written atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

from .. import __version__
from ..errors import InputError, LungSegError

EXIT_CODES = """exit codes:
  0    the DICOM SEG is complete
  1    unexpected internal error
  2    wrong command-line usage
  3    bad input (unreadable labelmap or source list, source files missing)
  4    output problem (exists without --overwrite, labelmap not on the source grid, highdicom missing)
"""


def export_command(python: str, labelmap: Path, sources: Path, output: Path, *, model_name: str = "",
                   overwrite: bool = False) -> List[str]:
    """The argv that runs this worker with the interpreter ``python``."""
    argv = [python, "-m", "LungSegLib.worker.export_seg", "--labelmap", str(labelmap), "--sources",
            str(sources), "--output", str(output)]
    if model_name:
        argv += ["--model-name", model_name]
    if overwrite:
        argv.append("--overwrite")
    return argv


def write_source_list(files: Sequence[str], path: Path) -> Path:
    """The ``--sources`` file: one path per line."""
    path.write_text("".join(f"{f}\n" for f in files), encoding="utf-8")
    return path


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps(dict(event=event, **fields)) + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m LungSegLib.worker.export_seg",
                                description="Write a lung labelmap as a DICOM SEG that references its CT series.",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelmap", required=True, help="0/1/2 labelmap on the CT's grid (.nrrd, .nii.gz, ...)")
    p.add_argument("--sources", required=True, help="text file: the CT's DICOM files, one per line")
    p.add_argument("--output", required=True, help="the DICOM SEG file to write (.dcm)")
    p.add_argument("--model-name", default="", help="the model that made the labelmap (recorded in the SEG)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    return p


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..core.dicomseg import require_highdicom, write_dicom_seg
    from ..core.geometry import Geometry

    require_highdicom()
    try:
        files = [line.strip() for line in Path(args.sources).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    except OSError as exc:
        raise InputError(f"Cannot read the source list {args.sources}: {exc.strerror or exc}") from exc
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise InputError(f"The CT's DICOM files are {'missing: ' + ', '.join(missing[:3]) if missing else 'not listed'}"
                         " -- was the CT loaded from the DICOM database, and are its files still there?")
    _emit("status", message="Reading the labelmap and the DICOM headers")
    try:
        image = sitk.ReadImage(str(args.labelmap))
    except RuntimeError as exc:
        raise InputError(f"Cannot read the labelmap {args.labelmap}: {exc}") from exc
    labels = sitk.GetArrayFromImage(image)
    _emit("status", message="Writing the DICOM SEG")
    path = write_dicom_seg(labels, Geometry.from_sitk(image), files, args.output, overwrite=args.overwrite,
                           model_name=args.model_name)
    import pydicom

    frames = int(pydicom.dcmread(str(path), stop_before_pixels=True).get("NumberOfFrames", 0))
    _emit("done", output=str(path), frames=frames)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _emit("started", version=__version__)
    try:
        return run(args)
    except LungSegError as exc:
        _emit("error", type=type(exc).__name__, message=str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    except Exception as exc:  # report anything; the traceback goes to stderr for the details
        import traceback

        traceback.print_exc()
        _emit("error", type=type(exc).__name__, message=str(exc) or repr(exc), exit_code=1)
        return 1


if __name__ == "__main__":
    sys.exit(main())

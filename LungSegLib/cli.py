"""The ``lungseg`` command (also ``python -m LungSegLib``)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__
from .errors import LungSegError

EXIT_CODES = """exit codes:
  0    success
  1    unexpected internal error (please report it with the message)
  2    wrong command-line usage
  3    bad input (unreadable, not a 3-D CT, not in HU, ...)
  4    output problem (exists without --overwrite, unknown format, cannot write)
  5    model problem (missing, checksum mismatch, incompatible)
  130  cancelled (Ctrl+C); nothing was written
"""


def _add_segment_parser(sub) -> None:
    p = sub.add_parser(
        "segment", help="segment the lungs in a CT file or DICOM folder",
        description="Segment right (label 1) and left (label 2) lung in a chest CT. INPUT is a CT in "
                    "HU (.nrrd, .nii, .nii.gz, .mha, .mhd) or a folder with a DICOM series. The output "
                    "lies on exactly the input's voxel grid.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="CT image file or DICOM series folder")
    p.add_argument("output", help="output labelmap: .seg.nrrd (3D Slicer segmentation), .nrrd, .nii.gz, "
                                  ".nii or .mha")
    p.add_argument("--model", help="a .keras model with its .json card (default: the bundled model)")
    p.add_argument("--batch-size", type=int, default=8, help="slices per network call (default 8)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="keep the raw network output (no component clean-up, hole filling or side check)")
    p.add_argument("--format", choices=("seg.nrrd", "nrrd", "nii.gz", "nii", "mha"),
                   help="output format (default: from OUTPUT's extension)")
    p.add_argument("--overview", metavar="PNG", help="also write a PNG with axial/coronal overlays")
    p.add_argument("--no-hu-check", action="store_true",
                   help="segment even if the intensities do not look like Hounsfield units")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_run_segment)


def _run_segment(args) -> int:
    from tqdm import tqdm

    from .api import LungSegmenter
    from .writers import check_output_path

    if args.batch_size < 1:
        raise SystemExit("lungseg segment: error: --batch-size must be at least 1")
    check_output_path(args.output, args.overwrite, args.format)  # fail before loading TensorFlow
    segmenter = LungSegmenter(args.model, batch_size=args.batch_size, threads=args.threads,
                              postprocess=not args.no_postprocess, check_hu=not args.no_hu_check)
    if segmenter.model.is_placeholder and not args.quiet:
        print("warning: the bundled model is a placeholder, not a trained model: results are not "
              "meaningful", file=sys.stderr)
    bar = tqdm(total=None, unit="slice", desc="Segmenting", disable=args.quiet, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        result = segmenter.segment_file(args.input, args.output, fmt=args.format, overwrite=args.overwrite,
                                        overview_path=args.overview, progress=progress)
    finally:
        bar.close()
    if not args.quiet:
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        vol = result.volumes_ml()
        total = sum(result.timings_s.values())
        print(f"Wrote {args.output}: right lung {vol['right lung']:.0f} mL, left lung "
              f"{vol['left lung']:.0f} mL ({total:.1f} s)")
        if args.overview:
            print(f"Wrote {args.overview}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungseg", description="Right/left lung segmentation of chest CT (LungSeg).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lungseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_segment_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except LungSegError as exc:
        print(f"lungseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lungseg: cancelled; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

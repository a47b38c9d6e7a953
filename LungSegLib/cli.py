"""The ``lungseg`` command (also ``python -m LungSegLib``)."""
from __future__ import annotations

import argparse
import inspect
import os
import signal
import sys
from typing import List, Optional

from . import __version__
from .defaults import (BATCH_SIZE, DEFAULT_PRECISION, FORMATS, LOSSES, MAX_BATCH_SIZE, PRECISIONS, SLICE_STEP_MM,
                       TRAIN_BATCH_SIZE)
from .errors import Cancelled, LungSegError, exit_codes_help, exit_meanings
from .labels import CLASS_NAMES, MODEL_CHANNELS

EXIT_CODES = exit_codes_help(exit_meanings(notes={LungSegError.exit_code: "please report it with the message",
                                                  Cancelled.exit_code: "Ctrl+C or SIGTERM"}))


def _batch_size(text: str) -> int:
    """argparse type: a batch size in the supported range (a usage error, exit code 2, otherwise)."""
    value = _positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_BATCH_SIZE}, got {value} (memory grows with the "
                                         "batch; larger batches are no faster)")
    return value


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (a usage error, exit code 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _command(sub, name: str, func, help: str, epilog: str = EXIT_CODES):
    """Add subcommand ``name`` run by ``func(args) -> exit code``. Its ``--help`` description is the
    docstring of ``func`` (one home for what the command does) and it lists the exit codes."""
    description = " ".join(inspect.cleandoc(func.__doc__).split())
    p = sub.add_parser(name, help=help, description=description, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def _add_network_options(
        p, model_help: str = "exported weights (.npz) or a .keras model, with its .json card (default: the "
                             "bundled model)",
        batch_type=_batch_size, batch_default: int = BATCH_SIZE,
        batch_help: str = f"slices per network call, 1-{MAX_BATCH_SIZE} (default {BATCH_SIZE}; memory grows "
                          "with it)",
        threads_help: str = "CPU threads (default: all cores)",
        postprocess_help: str = "keep the raw network output (no component clean-up, hole filling or side "
                                "check)") -> None:
    """``--model``, ``--batch-size``, ``--threads`` and ``--no-postprocess``: how a command runs the network
    (the defaults are those of ``segment``)."""
    p.add_argument("--model", help=model_help)
    p.add_argument("--batch-size", type=batch_type, default=batch_default, help=batch_help)
    p.add_argument("--threads", type=_positive_int, default=None, help=threads_help)
    p.add_argument("--no-postprocess", action="store_true", help=postprocess_help)


def _add_segment_parser(sub) -> None:
    p = _command(
        sub, "segment", _run_segment, help="segment the lungs in a CT file or DICOM folder")
    p.add_argument("input", help="CT image file or DICOM series folder")
    p.add_argument("output", help="output labelmap: .seg.nrrd (3D Slicer segmentation), .nrrd, .nii.gz, "
                                  ".nii, .mha, or .dcm (DICOM SEG; needs a DICOM folder as INPUT and "
                                  "pip install 'lungseg[dicom]')")
    _add_network_options(p)
    p.add_argument("--format", choices=FORMATS,
                   help="output format (default: from OUTPUT's extension)")
    p.add_argument("--overview", metavar="PNG", help="also write a PNG with axial/coronal overlays")
    p.add_argument("--report", metavar="FILE", action="append", default=[],
                   help="also write a report for clinician review: .json (everything), .csv (the measures "
                        "table), .png or .pdf (one page: slices with the overlay, measures, flags, the slices "
                        "to review); repeat for several formats. Implies --review")
    p.add_argument("--review", action="store_true",
                   help="compute the network's per-slice confidence, the lung density measures and the "
                        "ranked list of slices to review, and print them")
    p.add_argument("--flip", action="store_true",
                   help="test-time flip: also run the left-right mirrored image and average the two (a second "
                        "network pass, slower); reports the agreement of the passes")
    p.add_argument("--no-hu-check", action="store_true",
                   help="segment even if the intensities do not look like Hounsfield units")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                   help="arithmetic of the network's hidden layers: auto (default: bfloat16 where the CPU has "
                        "AVX512_BF16/AMX, 30-40%% less network time, labels differ from float32's in ~0.002%% "
                        "of voxels; float32 elsewhere), float32 (the same labels on every machine) or bfloat16")
    p.add_argument("--slice-step-mm", type=float, default=SLICE_STEP_MM, metavar="MM",
                   help=f"run the network on axial slices at most MM apart and interpolate the thinner slices "
                        f"between them (default {SLICE_STEP_MM:g}: a 0.6-1.25 mm CT runs a third to a half of "
                        f"its slices; thicker slices are all run); 0 runs every slice. --flip runs "
                        f"every slice")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 7, nothing written) when the result has any warning: no lung, a lung "
                        "missing or too small, volumes or right/left ratio beyond anatomy, a lung cut by the "
                        "image border, thick slices, oblique or unusual spacing, non-HU or NaN voxels")
    p.add_argument("--quiet", action="store_true",
                   help="print errors only (no progress bar, status lines, warnings or summary)")


def _run_segment(args) -> int:
    """Segment right (label 1) and left (label 2) lung in a chest CT. INPUT is a CT in HU (.nrrd, .nii,
    .nii.gz, .mha, .mhd) or a folder with a DICOM series. The output lies on exactly the input's voxel
    grid.
    """
    from tqdm import tqdm

    from .api import LungSegmenter
    from .core.tf_quiet import import_tensorflow

    # lazy: segment_file checks every output path and reads and checks the input before the model
    # (and TensorFlow, seconds) loads, so a refusal comes at once
    segmenter = LungSegmenter(args.model, batch_size=args.batch_size, threads=args.threads,
                              postprocess=not args.no_postprocess, check_hu=not args.no_hu_check,
                              compute_dtype=args.precision, lazy=True,
                              review=bool(args.review or args.report), flip=args.flip,
                              slice_step_mm=args.slice_step_mm)

    def on_stage(stage: str) -> None:
        if stage == "model":
            if not args.quiet:
                print("Loading the model...", file=sys.stderr, flush=True)
            import_tensorflow()  # without its start-up lines

    bars = []  # opened at the first batch, so a refused input shows no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="slice", desc="Segmenting", disable=args.quiet,
                             file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        result = segmenter.segment_file(args.input, args.output, fmt=args.format, overwrite=args.overwrite,
                                        overview_path=args.overview, progress=progress, on_stage=on_stage,
                                        extra_outputs=_report_outputs(args, segmenter), strict=args.strict)
    finally:
        for bar in bars:
            bar.close()
    if not args.quiet:
        for warning in result.warnings:  # named findings (core/checks.py): the message, then the code
            print(f"warning: {warning} [{getattr(warning, 'code', 'warning')}]", file=sys.stderr)
        vol = result.volumes_ml()
        total = sum(result.timings_s.values())
        lungs = ", ".join(f"{name} {ml:.0f} mL" for name, ml in vol.items())  # label table order
        from .core.geometry import canonical_orientation

        n_slices = result.labels.shape[canonical_orientation(result.geometry).axes[0]]  # axial slices
        ran = result.network_slices
        # thin slices: say that most were interpolated (--slice-step-mm), so nobody mistakes it for a skip
        step = (f"; the network ran on {ran} of the {n_slices} slices and interpolated the rest"
                if 0 < ran < n_slices else "")
        print(f"Wrote {args.output}: {lungs} ({total:.1f} s{step})")
        if args.overview:
            print(f"Wrote {args.overview}")
        if result.measures is not None or result.review:
            from .core.review import format_review

            print(format_review(result))
        for path in args.report:
            print(f"Wrote {path}")
    return 0


def _report_outputs(args, segmenter):
    """``extra_outputs`` for segment_file: one role per ``--report`` file (checked with the other outputs
    before any work, written with them all or not at all)."""
    from pathlib import Path

    from .core.report import report_format, write_reports

    out = {}
    for path in args.report:
        fmt = report_format(path)
        role = "report" if len(args.report) == 1 else f"{fmt} report"
        if role in out:
            role = f"report {path}"

        def writer(result, tmp, path=path):
            write_reports([tmp], result, input_path=args.input, output_path=args.output,
                          model_name=segmenter.model_name, title_name=Path(args.input).name)

        out[role] = (path, fmt, writer)
    return out


def _add_train_parser(sub) -> None:
    p = _command(
        sub, "train", _run_train, help="train a lung segmentation U-Net on CT + labelmap cases")
    p.add_argument("cases_dir", help="folder with one subfolder per case")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (created)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val", nargs="+", default=(), metavar="CASE",
                       help="validation case(s) (e.g. one left-out patient); the others train")
    split.add_argument("--split", metavar="JSON", help='split file {"train": [cases], "val": [cases]}')
    p.add_argument("--classes", type=int, choices=MODEL_CHANNELS, default=len(CLASS_NAMES),
                   help=f"{len(CLASS_NAMES)}: background/right/left (default); 1: binary lung model")
    p.add_argument("--loss", choices=LOSSES, default=LOSSES[0],
                   help="cross-entropy + Dice (default), cross-entropy, Dice, or binary CE (1 class)")
    p.add_argument("--base-filters", type=int, default=8, help="filters of the first level (default 8)")
    p.add_argument("--depth", type=int, default=4, help="number of 2x poolings (default 4)")
    p.add_argument("--context-mm", type=float, default=0.0,
                   help="also show the network the CT this many mm below and above each slice (two more "
                        "input channels, interpolated between slices; default 0: the slice alone)")
    p.add_argument("--position-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="give the network each pixel's left-right position on the body-centred grid as an "
                        "extra channel (default), so it need not infer the patient's side from context alone; "
                        "--no-position-channel trains the network of LungSeg 0.x models (it failed to learn the "
                        "sides with one seed in three)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 40; with --resume: new total)")
    p.add_argument("--steps-per-epoch", type=int, default=50, help="batches per epoch (default 50)")
    p.add_argument("--batch-size", type=int, default=TRAIN_BATCH_SIZE,
                   help=f"slices per batch (default {TRAIN_BATCH_SIZE})")
    p.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate (cosine decay)")
    p.add_argument("--patience", type=int, default=10,
                   help="stop after this many epochs without improvement (0: never)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after the epoch that passes this wall-clock time (0: no limit)")
    p.add_argument("--select", choices=("best", "last"), default="best",
                   help="which epoch becomes best.keras: best validation Dice (default; lowest loss "
                        "without validation) or the last (when the validation case is a test case)")
    p.add_argument("--augmentation", choices=("bundled", "extended"), default="bundled",
                   help="augmentation recipe: 'bundled' (default: the shipped model's) or 'extended' (adds "
                        "air bronchograms, patchy and pleural-based consolidation, low-dose noise and gas "
                        "below the lung bases; it scored lower leave-one-patient-out, see the model card)")
    p.add_argument("--no-augment", action="store_true", help="train on the slices as they are")
    p.add_argument("--init", metavar="MODEL", default="",
                   help="start from existing weights: 'bundled' (the model shipped with LungSeg) or a model "
                        "file (.keras/.npz with its card), i.e. fine-tune it on your cases; the input grid "
                        "and architecture come from that model (a lower --lr, e.g. 2e-4, suits fine-tuning)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cache-dir", help="where resampled cases are cached (default RUN_DIR/cache)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last epoch")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")


def _run_train(args) -> int:
    """Train the 2-D U-Net on a folder of cases (one subfolder per case holding ct.nrrd + label.nrrd, or
    image/ct.nii.gz + label.nii.gz; labels 0/1 right/2 left or one lung value). Writes
    RUN_DIR/best.keras with its model card best.json, the same weights exported as best.weights.npz +
    best.weights.json (the form to ship: it loads with any supported Keras), last.keras for --resume,
    and log.csv. Slices go through exactly the inference preprocessing.
    """
    from .core.inference import configure_threads
    from .errors import InputError
    from .training.augment import RECIPES
    from .training.train import TrainConfig, train

    if not 0 <= args.context_mm <= 30:
        raise InputError(f"--context-mm {args.context_mm}: give 0 (the slice alone) or a distance in mm up to 30.")
    configure_threads(args.threads)
    config = TrainConfig(n_classes=args.classes, loss=args.loss, base_filters=args.base_filters,
                         depth=args.depth, epochs=args.epochs or TrainConfig.epochs,
                         steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                         learning_rate=args.lr, patience=args.patience, seed=args.seed,
                         augment=not args.no_augment, max_minutes=args.max_minutes, select=args.select,
                         init=args.init, context_mm=args.context_mm, position_channel=args.position_channel,
                         augment_config=RECIPES[args.augmentation])
    verbose = 2 if args.quiet or not sys.stderr.isatty() else 1
    result = train(args.cases_dir, args.out, config, val=args.val, split_file=args.split,
                   resume=args.resume, epochs=args.epochs, cache_dir=args.cache_dir, verbose=verbose)
    print(f"Best epoch {result.best_epoch} of {result.epochs_run} ({result.monitor} {result.best_score:.4f}"
          f"{', stopped early' if result.stopped_early else ''}): {result.best_model} + {result.card.name}")
    print(f"Exported weights (to ship or pass to --model): {result.best_weights}")
    if result.fit_dice:
        print("Dice on its own training slices: " + ", ".join(f"{k} {v:.3f}" for k, v in result.fit_dice.items())
              + (" (a lung was not learned: see the warning above)" if result.unlearned else ""))
    return 0


def _add_export_parser(sub) -> None:
    p = _command(
        sub, "export-weights", _run_export, help="convert a .keras model + card to exported weights (.npz + card)")
    p.add_argument("model", help="a .keras model with its .json card")
    p.add_argument("out", help="the weights file to write (.npz); its card is written beside it (.json)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT and its card if they exist")


def _run_export(args) -> int:
    """Write the weights of a .keras model from `lungseg train` (with its .json card) as named arrays in
    OUT (.npz, no pickle) with a card OUT.json giving the architecture, so the model loads with any
    supported Keras version (a .keras file needs the Keras that saved it or newer). The export is loaded
    back and checked to be bit-identical.
    """
    from .core.model import card_path
    from .training.export import export_weights

    out = export_weights(args.model, args.out, overwrite=args.overwrite)
    print(f"Wrote {out} + {card_path(out).name}")
    return 0


def _add_evaluate_parser(sub) -> None:
    p = _command(
        sub, "evaluate", _run_evaluate, help="score predicted labelmaps (or a model) against ground-truth cases")
    p.add_argument("prediction", metavar="PRED_OR_MODEL",
                   help="prediction folder, model file (.npz or .keras), or 'bundled'")
    p.add_argument("ground_truth", metavar="GROUND_TRUTH_DIR", help="folder of ground-truth case folders")
    p.add_argument("--out", metavar="DIR", help="write evaluation.csv, evaluation.json and evaluation.png here")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="evaluate only these cases (default: all)")
    p.add_argument("--save-predictions", action="store_true",
                   help="with a model: also write each prediction to DIR/predictions/<case>.seg.nrrd")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="with a model: slices per network call")
    p.add_argument("--threads", type=int, default=None, help="with a model: CPU threads (default: all)")
    p.add_argument("--no-postprocess", action="store_true", help="with a model: keep the raw network output")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="with a model: the network's arithmetic (default float32, so that scores are the same on "
                        "every machine; auto scores what `lungseg segment` gives on this one)")
    p.add_argument("--overwrite", action="store_true", help="replace existing reports in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")


def _run_evaluate(args) -> int:
    """Compare right/left lung labelmaps with ground truth: Dice, IoU, HD95 and ASSD (mm), volumes (mL)
    per case and lung, a right/left swap check, and mean ± SD over cases. PRED_OR_MODEL is a folder of
    predictions named after the cases (<case>.seg.nrrd, <case>.nrrd, <case>.nii.gz or
    <case>/label.nrrd), a model (.npz weights or .keras) with its card, or 'bundled' for the bundled
    model; a model is run on each case's CT. GROUND_TRUTH_DIR holds one folder per case with ct.nrrd and
    label.nrrd (0/1/2) and optionally info.json, whose suspect_slices_label_z are left out.
    """
    from pathlib import Path

    from tqdm import tqdm

    from .evaluation.cases import find_ground_truth
    from .evaluation.report import check_outputs, format_table, write_reports
    from .errors import InputError

    source = args.prediction
    use_model = source == "bundled" or source.lower().endswith((".keras", ".npz"))
    if not use_model and not Path(source).is_dir():
        raise InputError(f"{source} is neither a prediction folder nor a .npz/.keras model (or 'bundled').")
    usage_error = ""
    if args.save_predictions and not (use_model and args.out):
        usage_error = "--save-predictions needs a model and --out"
    elif args.batch_size < 1:
        usage_error = "--batch-size must be at least 1"
    if usage_error:
        print(f"lungseg evaluate: error: {usage_error}", file=sys.stderr)
        return 2
    if args.out:
        check_outputs(args.out, args.overwrite)  # fail before any work
    cases = find_ground_truth(args.ground_truth, args.cases)
    bar = tqdm(total=len(cases) if not use_model else None, unit="case" if not use_model else "slice",
               desc="Evaluating", disable=args.quiet, file=sys.stderr)
    try:
        if use_model:
            report, worst = _evaluate_model(args, source, cases, bar)
        else:
            report, worst = _evaluate_folder(args, source, cases, bar)
    finally:
        bar.close()
    if not args.quiet:
        print(format_table(report))
    if args.out:
        paths = write_reports(report, worst, args.out, overwrite=args.overwrite)
        if not args.quiet:
            print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


def _evaluate_model(args, source: str, cases, bar):
    """``lungseg evaluate MODEL``: run the model on each case's CT (progress in slices on ``bar``)."""
    from pathlib import Path

    from .api import LungSegmenter
    from .errors import OutputError
    from .evaluation import evaluate

    save_dir = Path(args.out) / "predictions" if args.save_predictions else None
    if save_dir is not None and not args.overwrite:
        taken = [c.name for c in cases if (save_dir / f"{c.name}.seg.nrrd").exists()]
        if taken:
            raise OutputError(f"{save_dir} already holds predictions for {', '.join(taken)}; "
                              "pass --overwrite to replace them.")
    segmenter = LungSegmenter(None if source == "bundled" else source, batch_size=args.batch_size,
                              threads=args.threads, postprocess=not args.no_postprocess,
                              compute_dtype=args.precision)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    return evaluate.evaluate_model(segmenter, args.ground_truth, args.cases, on_case=bar.set_description,
                                   progress=progress, save_dir=save_dir, overwrite=args.overwrite)


def _evaluate_folder(args, source: str, cases, bar):
    """``lungseg evaluate PRED_DIR``: score a folder of predictions (progress in cases on ``bar``)."""
    from .evaluation import evaluate

    started: List[str] = []

    def next_case(name: str) -> None:
        if started:
            bar.update(1)
        started.append(name)
        bar.set_description(name)

    result = evaluate.evaluate_predictions(source, args.ground_truth, args.cases, on_case=next_case)
    bar.update(len(cases) - bar.n)
    return result


def _add_import_rt_parser(sub) -> None:
    from .training.rtstruct import DEFAULT_LEFT_NAMES, DEFAULT_LUNG_NAMES, DEFAULT_RIGHT_NAMES

    p = _command(
        sub, "import-rt", _run_import_rt,
        help="convert a DICOM CT series + RTSTRUCT into ct.nrrd + label.nrrd (a training case)")
    p.add_argument("dicom_ct_dir", metavar="DICOM_CT_DIR", help="folder with the CT series")
    p.add_argument("rtstruct", metavar="RTSTRUCT_FILE", help="the RTSTRUCT DICOM file")
    p.add_argument("out_case_dir", metavar="OUT_CASE_DIR", help="case folder to create")
    p.add_argument("--right-names", nargs="+", metavar="NAME", default=list(DEFAULT_RIGHT_NAMES),
                   help="structure names of the right lung (default: " + ", ".join(DEFAULT_RIGHT_NAMES) + ")")
    p.add_argument("--left-names", nargs="+", metavar="NAME", default=list(DEFAULT_LEFT_NAMES),
                   help="structure names of the left lung (default: " + ", ".join(DEFAULT_LEFT_NAMES) + ")")
    p.add_argument("--lung-names", nargs="+", metavar="NAME", default=list(DEFAULT_LUNG_NAMES),
                   help="structure names of both lungs together, used when no side-specific structure "
                        "matches (default: " + ", ".join(DEFAULT_LUNG_NAMES) + ")")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in OUT_CASE_DIR")
    p.add_argument("--quiet", action="store_true", help="no report on the terminal")


def _run_import_rt(args) -> int:
    """Rasterise the lung contours of a radiotherapy structure set onto its CT: writes
    OUT_CASE_DIR/ct.nrrd (HU), label.nrrd (0 background, 1 right lung, 2 left lung) and info.json (which
    structures were used or ignored, volumes, skipped contours). Structure names are matched
    case-insensitively; a single structure for both lungs is split into sides by patient position. Needs
    pydicom (pip install 'lungseg[train]').
    """
    from .training.rtstruct import RoiNames, import_rtstruct

    report = import_rtstruct(args.dicom_ct_dir, args.rtstruct, args.out_case_dir,
                             RoiNames(args.right_names, args.left_names, args.lung_names),
                             overwrite=args.overwrite)
    if not args.quiet:
        print(report.summary())
    return 0


def _add_batch_parser(sub) -> None:
    p = _command(
        sub, "batch", _run_batch, help="segment every CT under a folder (resumable; shards for job arrays)",
        epilog="exit codes: 0 the run went through every CT (failed ones are in the summary with their "
               "reason), 3 with --strict some CTs failed, or with --merge some CTs were not run by any shard, "
               "2 usage, 4 output problem, 5 model problem, 130 cancelled.")
    p.add_argument("input_root", metavar="INPUT_ROOT", help="folder searched for CTs (recursively)")
    p.add_argument("output_root", metavar="OUTPUT_ROOT", help="folder for the outputs and summary.csv")
    p.add_argument("--format", choices=FORMATS, default="seg.nrrd",
                   help="output format (default seg.nrrd; dcm writes DICOM SEG, for DICOM inputs only)")
    p.add_argument("--report", action="store_true", help="also write <output>.report.json per CT")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="worker processes on this machine, each with cores/N threads (default 1)")
    p.add_argument("--pin-cores", action="store_true",
                   help="with --jobs: also bind each worker to its own cores (for a dedicated machine)")
    p.add_argument("--shard", metavar="I/N", help="process only shard I of N (0-based; the sorted inputs dealt "
                   "round-robin), e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; writes summary.shard-I-of-N.csv")
    p.add_argument("--merge", action="store_true",
                   help="join the shards' summaries into summary.csv (no segmentation); CTs that no shard "
                        "reported are listed as 'not run'")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help="only volume files whose name matches (e.g. 'ct.nrrd'; repeatable); DICOM series "
                        "are always included")
    _add_network_options(
        p, model_help="a .keras model with its .json card (default: the bundled model)",
        batch_type=_positive_int, batch_default=8, batch_help="slices per network call (default 8)",
        threads_help="CPU threads with --jobs 1 (default: all cores; with --jobs N each worker gets cores/N)",
        postprocess_help="keep the raw network output")
    p.add_argument("--no-hu-check", action="store_true", help="do not refuse non-HU intensities")
    p.add_argument("--strict", action="store_true", help="exit 3 when any CT failed (default: exit 0, the "
                                                         "failures are in the summary)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")


def _run_batch(args) -> int:
    """Segment every CT under INPUT_ROOT -- DICOM series (grouped by Series Instance UID, also across
    nested folders) and .nrrd/.nhdr/.nii/.nii.gz/.mha/.mhd files -- into the same folder structure under
    OUTPUT_ROOT, and write OUTPUT_ROOT/summary.csv (input, status, volumes in mL, warnings, seconds). A
    CT whose output is complete (its <output>.lungseg.json marker matches it) is skipped, so an
    interrupted run continues where it stopped; a CT that fails is recorded and the batch goes on. The
    model is loaded once per process.
    """
    from .batch import batch_main

    return batch_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungseg", description="Right/left lung segmentation of chest CT (LungSeg).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lungseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_segment_parser(sub)
    _add_evaluate_parser(sub)
    _add_import_rt_parser(sub)
    _add_train_parser(sub)
    _add_export_parser(sub)
    _add_batch_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: errors only
    previous = _cancel_on_signals()
    try:
        return int(args.func(args) or 0)
    except LungSegError as exc:
        print(f"lungseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lungseg: cancelled; nothing was written.", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _cancel_on_signals() -> dict:
    """Make SIGTERM (what ``kill``, schedulers and service managers send) cancel like Ctrl-C: the first
    SIGTERM/SIGINT raises ``KeyboardInterrupt`` in the main thread, which removes every temporary file
    on its way out (exit 130, nothing written). Later signals are ignored while that clean-up runs, and
    from the moment the outputs start being renamed into place (:func:`.core.outputs.committing`) a
    signal no longer interrupts: the run then ends with its files complete. Returns the previous
    handlers (``main`` puts them back)."""
    from .core.outputs import committing, reset_committing

    reset_committing()
    state = {"cancelled": False}

    def on_signal(signum, frame) -> None:
        if state["cancelled"] or committing():
            return
        state["cancelled"] = True
        raise KeyboardInterrupt

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except (ValueError, OSError):  # not the main thread (an embedding application): leave them
            pass
    return previous


if __name__ == "__main__":
    sys.exit(main())

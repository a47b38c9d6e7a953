"""``lungseg batch``: segment every CT under a folder into a mirrored output tree, resumably.

What it finds (:func:`find_inputs`): CT volume files (``.nrrd``, ``.nhdr``, ``.nii``, ``.nii.gz``, ``.mha``,
``.mhd``; not ``.seg.nrrd``) and DICOM CT series, grouped by Series Instance UID across nested folders
(headers only, through SimpleITK's GDCM). The inputs are sorted by a stable key (their path relative to
the input root, plus the series UID), so ``--shard i/n`` gives every process of a job array the same,
disjoint share without any coordination.

Where results go: ``OUTPUT_ROOT/<relative folder>/<name>.<format>`` -- for a file ``a/b/ct.nii.gz`` the
output is ``a/b/ct.seg.nrrd``; for a DICOM series in ``a/b/`` it is ``a/b/<SeriesInstanceUID>.seg.nrrd``.

Why it can be killed at any moment (:func:`is_complete`): each output is written atomically (temporary
file, renamed) and only *then* a small marker ``<output>.lungseg.json`` records its size and SHA-256. An
output counts as done only when its marker matches it, so a run that was killed, lost power or hit
Ctrl-C redoes exactly the CTs without a matching marker and leaves no half-written output. A CT that
fails (unreadable, not CT, ...) is recorded with its reason and the batch goes on.

What it reports: ``OUTPUT_ROOT/summary.csv`` (or ``summary.shard-<i>-of-<n>.csv`` for a shard; ``--merge``
joins them), rewritten atomically after every CT: input, status, volumes (mL), warnings, seconds.

How it uses the machine: every process loads the model once and keeps it for all its CTs; ``--jobs N``
starts N worker processes, each with its share of the cores (TensorFlow, OpenMP and BLAS thread pools
sized to cores/N), so the workers do not oversubscribe the CPU; ``--pin-cores`` also binds each worker to its
own cores (for dedicated machines: on a shared one a pinned worker cannot use another core that is free).
"""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import __version__
from .defaults import BATCH_SIZE
from .errors import InputError, LungSegError, UsageError
from .labels import by_side

#: Volume file extensions read as one CT each (``.seg.nrrd`` files are segmentations, never inputs).
VOLUME_SUFFIXES = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")
#: Files never tried as DICOM (saves GDCM a look at each).
_NOT_DICOM_SUFFIXES = VOLUME_SUFFIXES + (".raw", ".gz", ".zip", ".json", ".csv", ".txt", ".md", ".png", ".jpg",
                                         ".jpeg", ".pdf", ".xml", ".html", ".py", ".keras", ".npz")
#: The completion marker beside each output.
MARKER_SUFFIX = ".lungseg.json"
#: Hidden working folder under OUTPUT_ROOT (links that gather a series spread over several folders).
WORK_DIR = ".lungseg-batch"
SUMMARY_NAME = "summary.csv"
SUMMARY_FIELDS = ("input", "kind", "series_uid", "output", "status", "right_lung_ml", "left_lung_ml",
                  "warnings", "seconds", "error")
#: Environment variables that size the thread pools of TensorFlow, OpenMP and the BLAS libraries.
THREAD_ENV = ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


# --- what to segment ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchItem:
    """One CT to segment.

    Attributes:
        key: stable identifier and sort key: the path relative to the input root (POSIX), plus
            ``#<SeriesInstanceUID>`` for a DICOM series.
        kind: ``"file"`` or ``"dicom"``.
        files: the volume file, or the DICOM series' files (absolute paths).
        output: the output path relative to the output root, without the format's extension.
        series_uid: the DICOM Series Instance UID ("" for a file).
    """

    key: str
    kind: str
    files: Tuple[str, ...]
    output: str
    series_uid: str = ""

    def output_path(self, output_root: Path, fmt: str) -> Path:
        return Path(output_root) / f"{self.output}.{fmt}"


def _volume_stem(name: str) -> Optional[str]:
    lower = name.lower()
    if lower.endswith(".seg.nrrd"):
        return None
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[:-len(suffix)]
    return None


def _dicom_series_in(folder: Path) -> Dict[str, List[str]]:
    """``{SeriesInstanceUID: files}`` of the DICOM CT series in one folder (headers only, GDCM)."""
    import SimpleITK as sitk

    out: Dict[str, List[str]] = {}
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" for every plain folder
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    for uid in ids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if not files:
            continue
        header = sitk.ImageFileReader()
        header.SetImageIO("GDCMImageIO")
        header.SetFileName(files[0])
        header.LoadPrivateTagsOff()
        try:
            header.ReadImageInformation()
            modality = header.GetMetaData("0008|0060").strip().upper() if header.HasMetaDataKey(
                "0008|0060") else ""
        except RuntimeError:
            modality = ""  # unreadable header: let the read report it as a failed CT
        if modality and modality != "CT":
            continue  # SEG, RTSTRUCT, MR...: not LungSeg's input
        out[uid] = files
    return out


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: "DICM" after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _unreadable_ct_files(paths: Sequence[Path]) -> List[str]:
    """Of DICOM files GDCM did not list as an image series: those that are (or may be) CT images it could
    not parse -- truncated or corrupt. Files whose header names another modality (RTSTRUCT, SR, SEG, a
    report) are not LungSeg's inputs and are left out; without pydicom to read headers, every such file
    is reported (better a failed row too many than a CT silently skipped)."""
    try:
        import pydicom
    except ImportError:
        pydicom = None
    broken = []
    for path in paths:
        if not _looks_like_dicom(path):
            continue
        if pydicom is not None:
            try:
                modality = str(pydicom.dcmread(str(path), stop_before_pixels=True).get("Modality", "")).upper()
            except Exception:  # pydicom raises many types for damaged files: all mean "unreadable"
                modality = ""
            if modality and modality != "CT":
                continue
        broken.append(str(path))
    return broken


def find_inputs(input_root: os.PathLike, *, exclude: Sequence[os.PathLike] = (),
                include: Sequence[str] = ()) -> List[BatchItem]:
    """Every CT under ``input_root``, sorted by key (see the module docstring).

    ``exclude``: folders not to look into (the output root when it lies inside the input root).
    ``include``: glob patterns on volume file names (e.g. ``ct.nrrd``); default: every volume file.
    Hidden folders and files (names starting with ".") are skipped.
    """
    root = Path(input_root).resolve()
    if not root.is_dir():
        raise InputError(f"The input root {input_root} is not a folder. Give the folder that holds the CTs.")
    skip = {Path(e).resolve() for e in exclude}
    files: List[BatchItem] = []
    series: Dict[str, List[str]] = {}
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skip)
        visible = sorted(n for n in names if not n.startswith("."))
        for name in visible:
            stem = _volume_stem(name)
            if stem is None or (include and not any(fnmatch.fnmatch(name, p) for p in include)):
                continue
            rel = (here / name).relative_to(root).as_posix()
            files.append(BatchItem(key=rel, kind="file", files=(str(here / name),),
                                   output=((here / stem).relative_to(root)).as_posix()))
        candidates = [n for n in visible if not n.lower().endswith(_NOT_DICOM_SUFFIXES)]
        if candidates:
            listed = set()
            for uid, members in _dicom_series_in(here).items():
                series.setdefault(uid, []).extend(members)
                listed.update(os.path.basename(m) for m in members)
            # DICOM files GDCM cannot parse (truncated, corrupt) must not vanish from the batch silently
            broken = _unreadable_ct_files([here / n for n in candidates if n not in listed])
            if broken:
                rel = here.relative_to(root).as_posix()
                files.append(BatchItem(key=f"{rel}#unreadable", kind="unreadable", files=tuple(broken),
                                       output=f"{rel}/unreadable"))
    dicoms = []
    for uid, members in series.items():
        members = sorted(set(members))
        common = Path(os.path.commonpath([os.path.dirname(m) for m in members]))
        rel = common.relative_to(root).as_posix()
        dicoms.append(BatchItem(key=f"{rel}#{uid}", kind="dicom", files=tuple(members),
                                output=(Path(rel) / uid).as_posix() if rel != "." else uid, series_uid=uid))
    items = _unique_outputs(files + dicoms)
    return sorted(items, key=lambda item: item.key)


def _unique_outputs(items: List[BatchItem]) -> List[BatchItem]:
    """Give inputs that would share an output name (``ct.nrrd`` and ``ct.nii.gz`` in one folder) names
    that keep their extension."""
    seen: Dict[str, int] = {}
    for item in items:
        seen[item.output.lower()] = seen.get(item.output.lower(), 0) + 1
    out = []
    for item in items:
        if seen[item.output.lower()] > 1 and item.kind == "file":
            name = Path(item.files[0]).name.replace(".", "_")
            item = BatchItem(item.key, item.kind, item.files, (Path(item.output).parent / name).as_posix())
        out.append(item)
    return out


def parse_shard(text: str) -> Tuple[int, int]:
    """``"i/n"`` -> (i, n), 0 <= i < n (i is 0-based, as Slurm's ``--array=0-N`` and Kubernetes'
    ``JOB_COMPLETION_INDEX``)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shard 0 of 4)") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text!r}: i must be 0..n-1 and n at least 1 (e.g. 0/4 ... 3/4)")
    return i, n


def shard(items: Sequence[BatchItem], index: int, count: int) -> List[BatchItem]:
    """Shard ``index`` of ``count``: every ``count``-th item of the sorted list from ``index`` on
    (round-robin, so large and small CTs spread evenly)."""
    ordered = sorted(items, key=lambda item: item.key)
    return ordered[index::count]


# --- completion markers --------------------------------------------------------------------------------
def marker_path(output: Path) -> Path:
    return output.with_name(output.name + MARKER_SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_marker(output: Path) -> Optional[dict]:
    """The marker of ``output`` if the output is complete (exists with the size and SHA-256 the marker
    recorded after the output's atomic rename), else None."""
    try:
        marker = json.loads(marker_path(output).read_text(encoding="utf-8"))
        if output.stat().st_size != marker["size"] or _sha256(output) != marker["sha256"]:
            return None
        return marker
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_complete(output: Path) -> bool:
    return read_marker(output) is not None


def write_marker(output: Path, item: BatchItem, row: "Row", model_name: str) -> Path:
    from .core.atomic import atomic_write_text

    data = {"lungseg": __version__, "model": model_name, "input": item.key, "output": output.name,
            "size": output.stat().st_size, "sha256": _sha256(output), "right_lung_ml": row.right_lung_ml,
            "left_lung_ml": row.left_lung_ml, "warnings": row.warnings, "seconds": row.seconds}
    return atomic_write_text(marker_path(output), json.dumps(data, indent=1) + "\n")


# --- one CT --------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the summary (volumes in mL, time in seconds)."""

    input: str
    kind: str
    series_uid: str
    output: str
    status: str  # "done", "already done", "failed" ("not run" in a merged summary)
    right_lung_ml: str = ""
    left_lung_ml: str = ""
    warnings: str = ""
    seconds: str = ""
    error: str = ""


def _series_folder(item: BatchItem, work: Path) -> Tuple[Path, Optional[Path]]:
    """A folder that holds exactly ``item``'s series: its own folder when nothing else is there, else a
    folder of links to its files under ``work`` (returned second, to be removed afterwards)."""
    folders = {os.path.dirname(f) for f in item.files}
    if len(folders) == 1:
        folder = Path(folders.pop())
        others = _dicom_series_in(folder)
        if list(others) == [item.series_uid] and sorted(others[item.series_uid]) == sorted(item.files):
            return folder, None
    links = work / "series" / item.series_uid
    shutil.rmtree(links, ignore_errors=True)
    links.mkdir(parents=True)
    for n, f in enumerate(item.files):
        target = links / f"{n:06d}_{Path(f).name}"
        try:
            os.symlink(f, target)
        except OSError:  # no symlinks (Windows without the privilege): a hard link, else a copy
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
    return links, links


def segment_item(segmenter, item: BatchItem, output_root: Path, fmt: str, *, report: bool = False) -> Row:
    """Segment one CT into its mirrored output and mark it complete; a failure becomes a "failed" row."""
    output = item.output_path(output_root, fmt)
    row = Row(item.key, item.kind, item.series_uid, output.relative_to(output_root).as_posix(), "failed")
    t0 = time.perf_counter()
    cleanup = None
    if item.kind == "unreadable":
        row.output = ""
        row.error = (f"{len(item.files)} DICOM file(s) here cannot be read as images (truncated or corrupt?), "
                     f"e.g. {Path(item.files[0]).name}. Copy the series again from its source.")
        row.seconds = "0.00"
        return row
    try:
        if item.kind == "dicom":
            source, cleanup = _series_folder(item, output_root / WORK_DIR)
        else:
            source = Path(item.files[0])
        extra = _report_output(segmenter, source, output) if report else None
        # overwrite: an output without a matching marker is a leftover of an interrupted run
        result = segmenter.segment_file(source, output, fmt=fmt, overwrite=True, extra_outputs=extra)
        volumes = result.volumes_ml()
        row.right_lung_ml = f"{volumes[by_side('right').name.lower()]:.1f}"
        row.left_lung_ml = f"{volumes[by_side('left').name.lower()]:.1f}"
        # named findings (core/checks.py): "code: message" so the CSV can be filtered by code
        row.warnings = " | ".join(f"{getattr(w, 'code', 'warning')}: {w}" for w in result.warnings)
        row.status = "done"
        row.seconds = f"{time.perf_counter() - t0:.2f}"
        write_marker(output, item, row, segmenter.model_name)
    except LungSegError as exc:
        row.error = str(exc)
    except (RuntimeError, OSError, ValueError, MemoryError) as exc:  # one bad CT must not stop the batch
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        _end_of_commit()
    if row.status == "failed":
        row.seconds = f"{time.perf_counter() - t0:.2f}"
    return row


def _end_of_commit() -> None:
    """This CT's outputs are renamed into place: let SIGTERM/Ctrl-C interrupt the batch again (the CLI
    holds signals back while a run's outputs are being committed, :func:`.core.outputs.committing`)."""
    try:
        from .core.outputs import reset_committing
    except ImportError:
        return
    reset_committing()


def _report_output(segmenter, source: Path, output: Path):
    """``extra_outputs`` that add a JSON report ``<output>.report.json`` (written with the output)."""
    from .core.report import write_reports

    path = output.with_name(output.name + ".report.json")

    def writer(result, tmp):
        write_reports([tmp], result, input_path=source, output_path=output,
                      model_name=segmenter.model_name, title_name=source.name)

    return {"report": (path, "json", writer)}


def already_done(item: BatchItem, output_root: Path, fmt: str) -> Optional[Row]:
    output = item.output_path(output_root, fmt)
    marker = read_marker(output)
    if marker is None:
        return None
    from .core.atomic import remove_stale_temps

    # a run killed while it checked or wrote an output here may have left its temporary file, and nothing
    # else writes to this folder in this run to clear it
    remove_stale_temps(output.parent)
    return Row(item.key, item.kind, item.series_uid, output.relative_to(output_root).as_posix(), "already done",
               str(marker.get("right_lung_ml", "")), str(marker.get("left_lung_ml", "")),
               str(marker.get("warnings", "")), str(marker.get("seconds", "")))


# --- summaries -------------------------------------------------------------------------------------------
def summary_name(shard_spec: Optional[Tuple[int, int]]) -> str:
    if shard_spec is None or shard_spec[1] == 1:
        return SUMMARY_NAME
    return f"summary.shard-{shard_spec[0]}-of-{shard_spec[1]}.csv"


def write_summary(path: Path, rows: Iterable[Row]) -> Path:
    from .core.atomic import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, buffer.getvalue())


def read_summary(path: Path) -> List[Row]:
    with open(path, newline="", encoding="utf-8") as f:
        return [Row(**{k: (r.get(k) or "") for k in SUMMARY_FIELDS}) for r in csv.DictReader(f)]


def merge_summaries(input_root: os.PathLike, output_root: os.PathLike, *, include: Sequence[str] = ()) -> \
        Tuple[Path, List[Row]]:
    """Join the shards' summaries in ``output_root`` into ``summary.csv``: one row per CT found under
    ``input_root`` in key order; a CT no shard reported is listed as "not run"."""
    output_root = Path(output_root)
    shards = sorted(output_root.glob("summary.shard-*-of-*.csv"))
    if not shards:
        raise InputError(f"No shard summaries (summary.shard-I-of-N.csv) in {output_root}: run the shards "
                         "first (lungseg batch ... --shard I/N).")
    by_key: Dict[str, Row] = {}
    for path in shards:
        for row in read_summary(path):
            by_key[row.input] = row
    items = find_inputs(input_root, exclude=[output_root], include=include)
    rows = [by_key.get(item.key) or Row(item.key, item.kind, item.series_uid, "", "not run") for item in items]
    return write_summary(output_root / SUMMARY_NAME, rows), rows


# --- running -------------------------------------------------------------------------------------------
@dataclass
class BatchConfig:
    """What every worker needs to build its segmenter and write its outputs (picklable)."""

    output_root: str
    fmt: str = "seg.nrrd"
    model: Optional[str] = None
    batch_size: int = BATCH_SIZE
    threads: Optional[int] = None
    postprocess: bool = True
    check_hu: bool = True
    report: bool = False
    pin: bool = False
    cores: List[int] = field(default_factory=list)


def threads_per_job(jobs: int, cores: Optional[int] = None) -> int:
    """Each of ``jobs`` workers' share of the cores (at least 1)."""
    from .core.inference import available_cores

    return max(1, int(cores or available_cores()) // max(1, jobs))


def limit_threads(threads: int) -> None:
    """Size every thread pool of this process to ``threads`` (before TensorFlow or NumPy's BLAS start)."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(min(2, threads)))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


_worker_state: Dict[str, object] = {}


def _init_worker(config: BatchConfig, counter) -> None:
    """Pool initializer: size this worker's thread pools (and with ``pin`` bind it to its cores), load the
    model once."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    threads = config.threads or 1
    if config.cores and hasattr(os, "sched_setaffinity"):
        share = config.cores[index * threads:(index + 1) * threads] or config.cores
        try:
            os.sched_setaffinity(0, share)
        except OSError:
            pass
    limit_threads(threads)
    _worker_state["segmenter"] = _make_segmenter(config)
    _worker_state["config"] = config


def _make_segmenter(config: BatchConfig):
    from .api import LungSegmenter

    # review: the report's density measures, confidence and slices to review need the review pass
    return LungSegmenter(config.model, batch_size=config.batch_size, threads=config.threads,
                         postprocess=config.postprocess, check_hu=config.check_hu, review=config.report)


def _work(item: BatchItem) -> Row:
    config: BatchConfig = _worker_state["config"]  # type: ignore[assignment]
    return segment_item(_worker_state["segmenter"], item, Path(config.output_root), config.fmt,
                        report=config.report)


@dataclass
class BatchOutcome:
    """What a batch run did: the rows of this run's (shard's) CTs, and where the summary is."""

    rows: List[Row]
    summary: Path

    def count(self, status: str) -> int:
        return sum(row.status == status for row in self.rows)


def check_roots(input_root: Path, output_root: Path) -> None:
    """Refuse an output root that is the input root or lies above it (outputs would become inputs)."""
    i, o = input_root.resolve(), output_root.resolve()
    if i == o or o in i.parents:
        raise UsageError(f"The output root {output_root} is (or contains) the input root {input_root}; give "
                         "an output folder beside or inside the input root.")


def run_batch(input_root: os.PathLike, output_root: os.PathLike, config: Optional[BatchConfig] = None, *,
              jobs: int = 1, shard_spec: Optional[Tuple[int, int]] = None, include: Sequence[str] = (),
              segmenter=None, on_row: Optional[Callable[[Row, int], None]] = None,
              on_start: Optional[Callable[[int], None]] = None) -> BatchOutcome:
    """Segment every CT of this shard under ``input_root`` that is not complete yet; see the module doc.

    ``segmenter``: an existing :class:`LungSegmenter` for ``jobs == 1`` (else one is built from
    ``config``). ``on_start(n)`` is called with the number of CTs of this shard, ``on_row(row, done)``
    after each one (progress). The summary is rewritten after every CT.
    """
    input_root, output_root = Path(input_root), Path(output_root)
    config = config or BatchConfig(str(output_root))
    config.output_root = str(output_root)
    items = _shard_inputs(input_root, output_root, config, jobs, shard_spec, include)
    output_root.mkdir(parents=True, exist_ok=True)
    summary = output_root / summary_name(shard_spec)
    if on_start:
        on_start(len(items))
    rows, todo = _rows_without_work(items, output_root, config.fmt, on_row)
    order = {item.key: n for n, item in enumerate(items)}

    def record(row: Row) -> None:
        rows[row.input] = row
        write_summary(summary, sorted(rows.values(), key=lambda r: order[r.input]))
        if on_row:
            on_row(row, len(rows))

    write_summary(summary, sorted(rows.values(), key=lambda r: order[r.input]))
    if todo and jobs == 1:
        if segmenter is None:
            if config.threads:
                limit_threads(config.threads)
            segmenter = _make_segmenter(config)
        for item in todo:
            record(segment_item(segmenter, item, output_root, config.fmt, report=config.report))
    elif todo:
        _segment_in_pool(todo, jobs, config, record)
    for folder in (output_root / WORK_DIR / "series", output_root / WORK_DIR):
        try:
            folder.rmdir()  # only when empty: another shard may still be using it
        except OSError:
            pass
    return BatchOutcome(sorted(rows.values(), key=lambda r: order[r.input]), summary)


def _shard_inputs(input_root: Path, output_root: Path, config: BatchConfig, jobs: int,
                  shard_spec: Optional[Tuple[int, int]], include: Sequence[str]) -> List[BatchItem]:
    """The CTs of this shard, after refusing a bad format, job count or output root (UsageError) and a
    DICOM SEG output without highdicom installed."""
    from .defaults import FORMATS

    if config.fmt not in FORMATS:
        raise UsageError(f"Unknown output format {config.fmt!r}; choose one of {', '.join(FORMATS)}.")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    check_roots(input_root, output_root)
    items = find_inputs(input_root, exclude=[output_root], include=include)
    if shard_spec is not None:
        items = shard(items, *shard_spec)
    if config.fmt == "dcm":
        from .core.dicomseg import require_highdicom

        require_highdicom()
    return items


def _rows_without_work(items: Sequence[BatchItem], output_root: Path, fmt: str,
                       on_row: Optional[Callable[[Row, int], None]]) -> Tuple[Dict[str, Row], List[BatchItem]]:
    """The summary rows known without segmenting (complete outputs; volume files when writing DICOM SEG,
    which fail) and the CTs still to segment, in input order; ``on_row`` is called for each row."""
    rows: Dict[str, Row] = {}
    todo: List[BatchItem] = []
    for item in items:
        if fmt == "dcm" and item.kind == "file":
            rows[item.key] = Row(item.key, item.kind, "", "", "failed",
                                 error="DICOM SEG output needs a DICOM series; this input is a volume file.")
        else:
            done = already_done(item, output_root, fmt)
            if done is None:
                todo.append(item)
                continue
            rows[item.key] = done
        if on_row:
            on_row(rows[item.key], len(rows))
    return rows, todo


def _segment_in_pool(todo: Sequence[BatchItem], jobs: int, config: BatchConfig,
                     record: Callable[[Row], None]) -> None:
    """Segment ``todo`` in ``jobs`` spawned processes (cores/N threads each, pinned with ``config.pin``),
    calling ``record`` with each row as it finishes."""
    import multiprocessing

    from .core.inference import available_cores

    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cores = list(range(os.cpu_count() or 1))
    jobs = min(jobs, len(todo))
    config.threads = threads_per_job(jobs, available_cores())
    config.cores = cores if config.pin else []
    context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
    counter = context.Value("i", 0)
    pool = context.Pool(jobs, initializer=_init_worker, initargs=(config, counter))
    try:
        for row in pool.imap_unordered(_work, todo):
            record(row)
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C: workers die; their outputs are atomic, markers absent
        raise
    finally:
        pool.join()


def batch_main(args) -> int:
    """``lungseg batch`` (arguments from :func:`LungSegLib.cli`). Exit 0 when the run went through every CT
    -- a CT that failed is a result too, recorded with its reason, so a job array does not retry a shard
    for a corrupt scan -- and 3 with ``--strict`` when any failed. ``--merge`` exits 3 when a CT was not run
    by any shard (or, with ``--strict``, failed)."""
    from tqdm import tqdm

    include = args.include or ()
    if args.merge:
        path, rows = merge_summaries(args.input_root, args.output_root, include=include)
        counts = {s: sum(r.status == s for r in rows) for s in ("done", "already done", "failed", "not run")}
        if not args.quiet:
            print(f"Wrote {path}: {len(rows)} CTs, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        incomplete = counts["not run"] or (args.strict and counts["failed"])
        return InputError.exit_code if incomplete else 0
    shard_spec = parse_shard(args.shard) if args.shard else None
    config = BatchConfig(args.output_root, fmt=args.format, model=args.model, batch_size=args.batch_size,
                         threads=args.threads, postprocess=not args.no_postprocess,
                         check_hu=not args.no_hu_check, report=args.report,
                         pin=bool(getattr(args, "pin_cores", False)))
    bar = tqdm(total=0, unit="CT", desc="Batch", disable=args.quiet, file=sys.stderr, dynamic_ncols=True)
    failed: List[Row] = []

    def on_start(n: int) -> None:
        bar.reset(total=n)

    def on_row(row: Row, done: int) -> None:
        if row.status == "failed":
            failed.append(row)
            bar.write(f"failed: {row.input}: {row.error}", file=sys.stderr)
        bar.set_postfix(failed=len(failed), refresh=False)
        bar.update(done - bar.n)

    try:
        outcome = run_batch(args.input_root, args.output_root, config, jobs=args.jobs, shard_spec=shard_spec,
                            include=include, on_row=on_row, on_start=on_start)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI turns it into this)
        bar.close()
        print(f"lungseg batch: interrupted; the CTs finished so far are kept (see "
              f"{Path(args.output_root) / summary_name(shard_spec)}), no partial output was left. Run the same "
              "command again to continue.", file=sys.stderr)
        return 130
    finally:
        bar.close()
    if not args.quiet:
        print(f"Wrote {outcome.summary}: {len(outcome.rows)} CTs, {outcome.count('done')} segmented, "
              f"{outcome.count('already done')} already done, {outcome.count('failed')} failed")
    return InputError.exit_code if args.strict and outcome.count("failed") else 0


__all__ = ["BatchItem", "BatchConfig", "BatchOutcome", "Row", "find_inputs", "shard", "parse_shard",
           "run_batch", "merge_summaries", "read_summary", "is_complete", "read_marker", "marker_path",
           "threads_per_job", "batch_main"]

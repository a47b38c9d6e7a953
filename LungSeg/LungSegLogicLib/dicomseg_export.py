"""Export the lung segments of a CT loaded from DICOM as a DICOM SEG (Qt-free, runs with plain MRML).

The CT volume node that Slicer's DICOM module loaded carries the SOP Instance UIDs of its files in the
attribute ``DICOM.instanceUIDs``; the DICOM database (``slicer.dicomDatabase``) maps each UID to its file.
The lung segments are exported to a labelmap on the CT's grid and handed, with that file list, to the
export worker (``python -m LungSegLib.worker.export_seg``) -- a separate process, like the segmentation,
so Slicer needs no DICOM writer of its own. The written SEG can then be imported into the DICOM database.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from LungSegLib.errors import InputError, OutputError
from LungSegLib.worker import WorkerError, error_from_event, parse_event, write_volume
from LungSegLib.worker.export_seg import export_command, write_source_list
from LungSegLib.worker.process import python_executable

#: Where Slicer's DICOM plugins store a loaded volume's instance UIDs (space separated).
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
#: The package the export worker needs, installed into Slicer's Python on the first export (it is not in
#: Resources/requirements.txt: segmenting does not need it). 0.22 is the release for Python 3.9.
HIGHDICOM_REQUIREMENT = "highdicom>=0.22"
#: How long an export may take (seconds); it is a few seconds even for a large CT.
EXPORT_TIMEOUT_S = 600.0


def highdicomInstalled() -> bool:
    """Whether the export worker (this Python) can import highdicom."""
    import importlib.util

    return importlib.util.find_spec("highdicom") is not None


def isFromDicom(volumeNode) -> bool:
    """Whether the volume was loaded from DICOM (it knows its source instances)."""
    return bool(volumeNode is not None and (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split())


def dicomSourceFiles(volumeNode, dicomDatabase=None) -> List[str]:
    """The DICOM files ``volumeNode`` was loaded from, via the DICOM database (default
    ``slicer.dicomDatabase``). Raises :class:`InputError` for a volume not loaded from DICOM or files the
    database does not have."""
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split() if volumeNode is not None else []
    if not uids:
        raise InputError(f"{volumeNode.GetName() if volumeNode else 'The volume'} was not loaded from DICOM "
                         "(it has no DICOM instance UIDs): a DICOM SEG must reference the DICOM images of "
                         "the CT. Load the CT with the DICOM module, or save the segmentation as .seg.nrrd.")
    if dicomDatabase is None:
        import slicer

        dicomDatabase = getattr(slicer, "dicomDatabase", None)
        if dicomDatabase is None:
            raise InputError("Slicer's DICOM database is not open: open the DICOM module once and retry.")
    files, missing = [], []
    for uid in uids:
        path = dicomDatabase.fileForInstance(uid)
        if path and os.path.isfile(path):
            files.append(path)
        else:
            missing.append(uid)
    if missing:
        raise InputError(f"The DICOM database has no file for {len(missing)} of the CT's {len(uids)} images "
                         f"(e.g. {missing[0]}): were they deleted or moved? Re-import the study and retry.")
    return files


def exportDicomSeg(logic, segmentationNode, volumeNode, outputPath: Optional[str] = None, *, dicomDatabase=None,
                   addToDatabase: bool = False, overwrite: bool = False, modelName: str = "LungSeg",
                   timeout: float = EXPORT_TIMEOUT_S) -> Path:
    """Write the "Right lung" / "Left lung" segments of ``segmentationNode`` as a DICOM SEG referencing the
    DICOM CT ``volumeNode`` was loaded from, in the export worker; returns the SEG's path.

    ``outputPath``: the ``.dcm`` to write; default a new file in a new folder beside the CT's files
    (``LungSeg SEG/<volume name> lungs.dcm`` in the folder of its first file). ``addToDatabase``: import
    the SEG into the DICOM database afterwards (DICOMLib, 3D Slicer only). ``logic``: the
    :class:`LungSegLogic` (scene, worker Python and environment).
    """
    files = dicomSourceFiles(volumeNode, dicomDatabase)
    if outputPath is None:
        folder = Path(files[0]).parent / "LungSeg SEG"
        outputPath = str(folder / f"{_safeName(volumeNode.GetName())} lungs.dcm")
    output = Path(outputPath)
    if output.exists() and not overwrite:
        raise OutputError(f"{output} already exists; choose another file or allow overwriting.")
    scene = logic.scene
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmapNode = logic.exportLabelmap(segmentationNode, volumeNode)
    tempDir = Path(tempfile.mkdtemp(prefix="LungSeg-SEG-"))
    try:
        from .logic import volume_array, volume_ijk_to_ras

        labelmap = write_volume(volume_array(labelmapNode), volume_ijk_to_ras(labelmapNode),
                                tempDir / "lungs.nrrd")
        sources = write_source_list(files, tempDir / "sources.txt")
        argv = export_command(logic.pythonExecutable or python_executable(), labelmap, sources, output,
                              model_name=modelName, overwrite=overwrite)
        done = _runWorker(argv, logic.workerEnvironment(), str(tempDir), timeout)
    finally:
        # the helper labelmap and what its export added (display, colour table) leave the scene again
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in [n for n in added if n.GetID() not in before]:
            if scene.GetNodeByID(node.GetID()) is not None:
                scene.RemoveNode(node)
        shutil.rmtree(tempDir, ignore_errors=True)
    path = Path(done["output"])
    if addToDatabase:
        from DICOMLib import DICOMUtils  # 3D Slicer only

        DICOMUtils.importDicom(str(path.parent), dicomDatabase)
    return path


def _runWorker(argv: List[str], env: Dict[str, str], cwd: str, timeout: float) -> Dict[str, Any]:
    """Run the export worker to its end (a few seconds) and return its ``done`` event; its ``error``
    event becomes the library's exception."""
    try:
        run = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             encoding="utf-8", errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise WorkerError(f"The DICOM SEG export did not finish in {timeout:.0f} s.", 1,
                          str(exc.stderr or "")) from exc
    events = [e for e in (parse_event(line) for line in run.stdout.splitlines()) if e is not None]
    done = next((e for e in events if e["event"] == "done"), None)
    error = next((e for e in events if e["event"] == "error"), None)
    if run.returncode != 0 or done is None:
        if error is not None:
            raise error_from_event(error, run.stderr)
        raise WorkerError(f"The DICOM SEG export worker exited with code {run.returncode}.", 1, run.stderr)
    return done


def _safeName(name: str) -> str:
    return "".join(c if c.isalnum() or c in " -_." else "_" for c in name).strip() or "CT"


__all__ = ["INSTANCE_UIDS_ATTRIBUTE", "HIGHDICOM_REQUIREMENT", "highdicomInstalled", "isFromDicom", "dicomSourceFiles", "exportDicomSeg"]

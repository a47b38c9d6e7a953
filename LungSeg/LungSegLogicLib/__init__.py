"""Qt-free parts of LungSeg's Slicer module: the logic (MRML in and out) and the worker process.

Importable wherever MRML is (3D Slicer, or plain Python with the ``slicer-core`` wheel); the module's
``LungSeg.py`` adds the panel on top.
"""
from .logic import (SEGMENT_NAMES, LungSegLogic, SegmentationOutcome, SegmentationTask, missing_requirements,
                    volume_array, volume_ijk_to_ras)
from LungSegLib.worker.process import WorkerProcess, python_executable

__all__ = ["LungSegLogic", "SegmentationTask", "SegmentationOutcome", "SEGMENT_NAMES", "WorkerProcess",
           "missing_requirements", "python_executable", "volume_array", "volume_ijk_to_ras"]

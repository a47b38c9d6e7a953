"""The segmentation worker: the process 3D Slicer (or any program) runs to segment one CT without
blocking, its line protocol (:mod:`.protocol`) and the caller's side of it (:mod:`.process`).

``python -m LungSegLib.worker --input ct.nrrd --output lungs.nrrd`` runs it (:mod:`.run`).
"""
from .protocol import (DEVICES, ERROR_TYPES, EXIT_CODES, DependencyError, Finding, ReviewItem, WorkerError,
                       error_from_event, parse_event, read_labelmap, worker_command, write_volume)

__all__ = ["DEVICES", "ERROR_TYPES", "EXIT_CODES", "DependencyError", "Finding", "ReviewItem", "WorkerError",
           "error_from_event", "parse_event", "read_labelmap", "worker_command", "write_volume"]

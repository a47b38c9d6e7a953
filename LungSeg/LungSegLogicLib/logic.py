"""LungSeg's Slicer logic: MRML nodes in and out, the network in a worker process (no Qt).

It runs wherever MRML does: in 3D Slicer (its Python console and the module panel) and in plain
Python with the ``slicer-core`` wheel, which is how the tests drive it.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from LungSegLib.defaults import WORKER_BATCH_SIZE
from LungSegLib.errors import Cancelled, InputError, LungSegError
from LungSegLib.labels import LUNG_LABELS, SEGMENT_NAMES
from LungSegLib.worker import (Finding, WorkerError, error_from_event, read_labelmap, worker_command,
                               write_volume)

from LungSegLib.worker.process import WorkerProcess, python_executable

# LIBRARY_ROOT, REQUIREMENTS_FILE and missing_requirements are imported here for the package's callers
from .environment import LIBRARY_ROOT, REQUIREMENTS_FILE, missing_requirements  # noqa: F401

#: ``progressCallback(done_slices, total_slices, status_text)``
ProgressCallback = Callable[[int, int, str], None]

# SEGMENT_NAMES (from the label table, label 1 then 2) are the segments LungSeg owns; other segments of
# an output segmentation are never touched.


def _slicer():
    import slicer

    return slicer


def _removeWithDisplayNodes(scene, node) -> None:
    """Remove a node and its display nodes (plain MRML leaves them behind; Slicer's GUI would not)."""
    for i in reversed(range(node.GetNumberOfDisplayNodes())):
        scene.RemoveNode(node.GetNthDisplayNode(i))
    scene.RemoveNode(node)


def _matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_ijk_to_ras(volumeNode) -> np.ndarray:
    """The volume's 4x4 IJK-to-RAS matrix (its own frame, before any parent transform)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return _matrix_to_numpy(m)


def volume_array(volumeNode) -> np.ndarray:
    """A read-only ``[k, j, i]`` view of a scalar volume's voxels (no copy)."""
    from vtk.util.numpy_support import vtk_to_numpy

    image = volumeNode.GetImageData()
    dims = image.GetDimensions()
    view = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    view.flags.writeable = False
    return view


@dataclass
class SegmentationOutcome:
    """What a finished run produced and reported (``timingsS``: the worker's stages; ``elapsedS``: wall
    time from start to the nodes being in the scene, including starting Python and TensorFlow)."""

    segmentationNode: Any
    segmentIds: Dict[str, str]
    labelmapNode: Any = None
    volumesMl: Dict[str, float] = field(default_factory=dict)
    timingsS: Dict[str, float] = field(default_factory=dict)
    #: named warnings (:class:`LungSegLib.core.checks.Finding`: ``code``, ``message``, ``lung``;
    #: ``str(w)`` is the message)
    warnings: List[Finding] = field(default_factory=list)
    modelName: str = ""
    elapsedS: float = 0.0
    #: review aids from the worker (``review=True``): the ``done`` event's ``measures`` dict
    #: (:meth:`LungMeasures.to_dict`), ``confidence`` dict and the ranked review list
    #: (:class:`LungSegLib.core.review.ReviewItem`); see :mod:`LungSegLogicLib.review`
    measures: Optional[Dict[str, Any]] = None
    confidence: Optional[Dict[str, Any]] = None
    review: List[Any] = field(default_factory=list)


class SegmentationTask:
    """One run: a worker process segmenting a copy of the volume; the scene changes only when it
    succeeded, in :meth:`poll` (call it from the thread that owns the scene)."""

    def __init__(self, logic: "LungSegLogic", volumeNode, segmentationNode, exportLabelmap: bool, show3D: bool,
                 progressCallback: Optional[ProgressCallback], workerOptions: Dict[str, Any]):
        self.logic = logic
        self.volumeNode = volumeNode
        self.segmentationNode = segmentationNode
        self.exportLabelmap = exportLabelmap
        self.show3D = show3D
        self.progressCallback = progressCallback
        self.outcome: Optional[SegmentationOutcome] = None
        self.error: Optional[Exception] = None
        self.cancelled = False
        self.done = 0
        self.total = 0
        self.status = "Starting"
        self.startTime = time.perf_counter()
        self.doneEvent: Optional[Dict[str, Any]] = None
        self._errorEvent: Optional[Dict[str, Any]] = None
        self.modelEvent: Dict[str, Any] = {}
        self.tempDir = Path(tempfile.mkdtemp(prefix="LungSeg-"))
        #: the worker, once the background starter has written the input and started it (None before)
        self.process: Optional[WorkerProcess] = None
        self._startError: Optional[BaseException] = None
        self._startLock = threading.Lock()
        self._prepareThread: Optional[threading.Thread] = None
        self._prepared = None
        self._prepareError: Optional[BaseException] = None
        try:
            self.inputIJKToRAS = volume_ijk_to_ras(volumeNode)
            # One copy on the main thread (memory speed), so that edits of the volume while the file is
            # written cannot reach the worker; the 200 MB NRRD write runs on the starter thread.
            voxels = np.array(volume_array(volumeNode))
            self.inputShape = voxels.shape
            inputPath = self.tempDir / "input.nrrd"
            self._outputPath = self.tempDir / "lungs.nrrd"
            # --watch-stdin: the worker stops when the pipe this process holds closes (Cancel, or this
            # application ending in any way); --cleanup-dir: it then removes this folder itself.
            argv = worker_command(logic.pythonExecutable or python_executable(), inputPath, self._outputPath,
                                  watch_stdin=True, cleanup_dir=self.tempDir, **workerOptions)
        except BaseException:
            self._cleanup()
            raise
        env = logic.workerEnvironment()
        self._starter = threading.Thread(target=self._start, args=(voxels, inputPath, argv, env),
                                         name="lungseg-start", daemon=True)
        self._starter.start()

    def _start(self, voxels: np.ndarray, inputPath: Path, argv: List[str], env: Dict[str, str]) -> None:
        """Starter thread: write the input copy, then start the worker unless cancelled meanwhile."""
        try:
            write_volume(voxels, self.inputIJKToRAS, inputPath)
            del voxels
            with self._startLock:
                if self.cancelled:
                    self._cleanup()
                    return
                self.process = WorkerProcess(argv, env=env, cwd=str(self.tempDir))
        except BaseException as exc:  # reported by poll() on the main thread
            self._startError = exc
            self._cleanup()

    @property
    def running(self) -> bool:
        return self.outcome is None and self.error is None and not self.cancelled

    def _report(self) -> None:
        if self.progressCallback is not None:
            self.progressCallback(self.done, self.total, self.status)

    def poll(self) -> bool:
        """Handle what the worker reported so far; True once the run is over. On success the nodes are
        in the scene and :attr:`outcome` is set; a failure raises its error (also kept in :attr:`error`)."""
        if not self.running:
            return True
        if self.process is None:
            if self._starter.is_alive():
                return False
            self.error = self._startError or WorkerError("The segmentation worker could not be started.", 1)
            raise self.error
        for event in self.process.events():
            kind = event["event"]
            if kind == "progress":
                self.done, self.total = int(event["done"]), int(event["total"])
                self.status = f"Segmenting: {self.done} of {self.total} slices"
                self._report()
            elif kind == "status":
                self.status = str(event.get("message", ""))
                self._report()
            elif kind == "model":
                self.modelEvent = event
            elif kind == "done":
                self.doneEvent = event
            elif kind == "error":
                self._errorEvent = event
        if not self.process.finished:
            return False
        if self._prepareThread is not None and self._prepareThread.is_alive():
            return False  # the result is being read and turned into segments off the main thread
        try:
            if self._prepareThread is None:
                if self.process.returncode != 0 or self.doneEvent is None:
                    raise self._failure()
                self.status = "Loading the result"
                self._report()
                self._startPreparing()
                return False
            if self._prepareError is not None:
                raise self._prepareError
            self.outcome = self.logic.insertResult(self, self._prepared)
            self.status = "Done"
            self._report()
        except Exception as exc:
            self.error = exc
            self._cleanup()
            raise
        if self.outcome is None:  # preparing started: keep the files until it is read
            return False
        self._cleanup()
        return True

    def _startPreparing(self) -> None:
        """Read the result and build the segments (and surfaces) on a background thread."""
        from .result import prepareResult

        buildSurfaces, self.show3DNote = self.logic.surfacePlan(self)
        target = self.segmentationNode
        parameters = target.GetSegmentation().SerializeAllConversionParameters() if target is not None else ""

        def prepare() -> None:
            try:
                self._prepared = prepareResult(self._outputPath, self.inputShape, self.inputIJKToRAS,
                                               buildSurfaces=buildSurfaces, conversionParameters=parameters)
            except BaseException as exc:
                self._prepareError = exc

        self._prepareThread = threading.Thread(target=prepare, name="lungseg-prepare", daemon=True)
        self._prepareThread.start()

    def _failure(self) -> LungSegError:
        details = self.process.stderr_text()
        if self._errorEvent is not None:
            return error_from_event(self._errorEvent, details)
        code = self.process.returncode
        reason = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return WorkerError(f"The segmentation worker {reason} without reporting an error "
                           "(out of memory, or a crash in TensorFlow?). See the details.", 1, details)

    def cancel(self) -> None:
        """Stop the worker and return at once (a GUI thread is never blocked): the worker tree is told
        to stop now and killed after a short grace period, and the temporary folder is removed, on a
        background thread. The scene is left as it was."""
        if not self.running:
            return
        with self._startLock:  # the starter thread either sees this and starts nothing, or has started
            self.cancelled = True
            process = self.process
        self.status = "Cancelled"
        if process is not None:
            process.cancel(then=self._cleanup)

    def waitStopped(self, timeout: Optional[float] = None) -> bool:
        """After :meth:`cancel`: wait until the worker tree has ended and the temporary folder is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._starter.join(timeout)
        if self._starter.is_alive():
            return False
        if self.process is None:
            return not self.tempDir.exists()
        return self.process.wait_stopped(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def wait(self, cancelEvent=None, pollInterval: float = 0.1) -> SegmentationOutcome:
        """Poll until the run is over; ``cancelEvent`` (a ``threading.Event`` or a callable) cancels it
        and raises :class:`Cancelled` once the worker is gone and its files are removed."""
        while not self.poll():
            if cancelEvent is not None and (cancelEvent.is_set() if hasattr(cancelEvent, "is_set")
                                            else cancelEvent()):
                self.cancel()
                self.waitStopped(30.0)
                raise Cancelled("Segmentation cancelled; the scene was not changed.")
            time.sleep(pollInterval)
        if self.outcome is None:
            if self.cancelled:
                self.waitStopped(30.0)
            raise Cancelled("Segmentation cancelled; the scene was not changed.")
        return self.outcome

    def _cleanup(self) -> None:
        shutil.rmtree(self.tempDir, ignore_errors=True)


class LungSegLogic:
    """Segments right and left lung of a CT volume node into a segmentation node.

    The network runs in a separate Python process (Slicer's own Python, ``LungSegLib.worker``); this
    class writes the volume to a temporary file for it, follows its progress and turns its labelmap
    into segments. Without a widget::

        logic = LungSegLogic()
        segmentationNode = logic.segment(volumeNode)          # blocks until done

    Attributes:
        scene: the MRML scene to work in (default: ``slicer.mrmlScene``).
        pythonExecutable: the Python that runs the worker (default: PythonSlicer / this interpreter).
        modelPath: a model (exported ``.npz`` weights or ``.keras``) with its card (default: the bundled
            model).
        threads: CPU threads for the worker (default: all cores).
    """

    def __init__(self) -> None:
        super().__init__()  # cooperative: LungSeg.LungSegLogic adds ScriptedLoadableModuleLogic
        self._scene = None
        self.pythonExecutable: Optional[str] = None
        self.modelPath: Optional[str] = None
        self.threads: Optional[int] = None
        self.lastOutcome: Optional[SegmentationOutcome] = None

    @property
    def scene(self):
        return self._scene if self._scene is not None else _slicer().mrmlScene

    @scene.setter
    def scene(self, scene) -> None:
        self._scene = scene

    # --- running ----------------------------------------------------------------------------------
    def workerEnvironment(self) -> Dict[str, str]:
        """The worker's environment: this one, with LungSegLib importable and TensorFlow quiet."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LIBRARY_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def startSegmentation(self, volumeNode, segmentationNode=None, postprocess: bool = True, device: str = "auto",
                          progressCallback: Optional[ProgressCallback] = None, batchSize: int = WORKER_BATCH_SIZE,
                          exportLabelmap: bool = False, show3D: bool = False, checkHU: bool = True,
                          acceptModelLicense: bool = False, review: bool = False,
                          flip: bool = False) -> SegmentationTask:
        """Start segmenting ``volumeNode`` and return at once; call ``task.poll()`` (e.g. from a timer)
        until it returns True, or ``task.wait()``. Arguments as for :meth:`segment`."""
        from .license import requireAccepted

        self.validateInput(volumeNode)
        if segmentationNode is not None and not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"{segmentationNode.GetName()} is not a segmentation node.")
        if segmentationNode is not None:
            self.checkSameFrame(volumeNode, segmentationNode)
        requireAccepted(self.modelPath, LIBRARY_ROOT, acceptModelLicense)
        options = dict(model=self.modelPath, batch_size=batchSize, threads=self.threads, device=device,
                       postprocess=postprocess, check_hu=checkHU, review=review, flip=flip)
        return SegmentationTask(self, volumeNode, segmentationNode, exportLabelmap, show3D, progressCallback,
                                options)

    def segment(self, volumeNode, segmentationNode=None, postprocess: bool = True, device: str = "auto",
                progressCallback: Optional[ProgressCallback] = None, cancelEvent=None,
                batchSize: int = WORKER_BATCH_SIZE, exportLabelmap: bool = False, show3D: bool = False,
                checkHU: bool = True, acceptModelLicense: bool = False, review: bool = False,
                flip: bool = False):
        """Segment the lungs of a CT volume node and wait for the result.

        Args:
            volumeNode: a ``vtkMRMLScalarVolumeNode`` in Hounsfield units; it is never modified.
            segmentationNode: where to put the segments "Right lung" and "Left lung"; segments of these
                names are replaced, all others kept. None creates a new segmentation node.
            postprocess: clean up the network output (largest components, filled holes, sides).
            device: "auto", "cpu" or "gpu".
            progressCallback: called as ``(done_slices, total_slices, status_text)``.
            cancelEvent: ``threading.Event`` or callable; when set the worker is stopped and
                :class:`LungSegLib.Cancelled` raised, with the scene unchanged.
            batchSize: slices per network call.
            exportLabelmap: also create a labelmap volume node (0 background, 1 right, 2 left lung).
            show3D: also create the closed-surface representation (3-D display).
            checkHU: refuse a volume that does not look like CT in Hounsfield units (False: segment it
                anyway, e.g. a CT whose values are known to be HU but unusual).
            acceptModelLicense: accept the model's licence restriction (the bundled weights are for
                non-commercial use: see :data:`LungSegLogicLib.license.MODEL_LICENSE_SUMMARY`); a
                model whose card states one is refused without it.
            review: also get the network confidence, density measures and the "review these slices"
                list (in :attr:`lastOutcome`; :mod:`LungSegLogicLib.review` turns them into a table node
                and slice jumps).
            flip: test-time flip (a second, mirrored network pass).

        Returns:
            The segmentation node; details of the run are in :attr:`lastOutcome`.

        Raises:
            LungSegLib.InputError / ModelError / OutputError, LungSegLib.worker.DependencyError or
            WorkerError (with ``details`` from the worker's stderr), Cancelled.
        """
        task = self.startSegmentation(volumeNode, segmentationNode, postprocess=postprocess, device=device,
                                      progressCallback=progressCallback, batchSize=batchSize,
                                      exportLabelmap=exportLabelmap, show3D=show3D, checkHU=checkHU,
                                      acceptModelLicense=acceptModelLicense, review=review, flip=flip)
        self.lastOutcome = task.wait(cancelEvent)
        return self.lastOutcome.segmentationNode

    @staticmethod
    def checkSameFrame(volumeNode, segmentationNode) -> None:
        """Refuse an existing output segmentation under another parent transform than the CT: the lungs
        would land in the wrong place, and moving the node would move the user's other segments."""
        volumeTransform = volumeNode.GetTransformNodeID() or None
        segmentationTransform = segmentationNode.GetTransformNodeID() or None
        if volumeTransform != segmentationTransform:
            def name(nodeId):
                node = volumeNode.GetScene().GetNodeByID(nodeId) if nodeId and volumeNode.GetScene() else None
                return f'the transform "{node.GetName()}"' if node is not None else "no transform"

            raise InputError(
                f'The output segmentation "{segmentationNode.GetName()}" is under {name(segmentationTransform)} '
                f'but the CT "{volumeNode.GetName()}" is under {name(volumeTransform)}. LungSeg does not move '
                "an existing segmentation. Choose \"Create new segmentation\" as output, or put both under the "
                "same transform (Transforms or Data module) and try again.")

    @staticmethod
    def validateInput(volumeNode) -> None:
        """Refuse what cannot be a CT volume before any work starts."""
        if volumeNode is None:
            raise InputError("Select an input CT volume.")
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(f"{volumeNode.GetName()} is not a scalar (CT) volume.")
        image = volumeNode.GetImageData()
        if image is None or image.GetPointData().GetScalars() is None:
            raise InputError(f"{volumeNode.GetName()} has no voxels.")
        if image.GetNumberOfScalarComponents() != 1:
            raise InputError(f"{volumeNode.GetName()} has {image.GetNumberOfScalarComponents()} components per "
                             "voxel (RGB or vector image); a CT has one value per voxel in HU.")
        if min(image.GetDimensions()) < 1:
            raise InputError(f"{volumeNode.GetName()} is empty.")

    # --- results into the scene ---------------------------------------------------------------------
    def lungSegmentIds(self, segmentationNode) -> Dict[str, str]:
        """IDs of the segments named "Right lung" / "Left lung" that ``segmentationNode`` already has."""
        segmentation = segmentationNode.GetSegmentation()
        found = {}
        for name in SEGMENT_NAMES:
            segmentId = segmentation.GetSegmentIdBySegmentName(name)
            if segmentId:
                found[name] = segmentId
        return found

    def surfacePlan(self, task) -> "tuple":
        """(build the lungs' surfaces off the main thread?, note for the user or None).

        Slicer keeps one set of representations for all segments of a node: surfaces are built for the
        lungs when the node holds nothing else or already has surfaces (then they must come with the
        lungs anyway); a node with other segments and no surfaces gets none, and the note says why."""
        target = task.segmentationNode
        if target is None:
            return bool(task.show3D), None
        segmentation = target.GetSegmentation()
        hasSurfaces = segmentation.ContainsRepresentation("Closed surface")
        lungIds = set(self.lungSegmentIds(target).values())
        others = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                  if segmentation.GetNthSegmentID(i) not in lungIds]
        if hasSurfaces or not others:
            return bool(task.show3D) or hasSurfaces, None
        if task.show3D:
            return False, (f'Show 3D: "{target.GetName()}" also holds {len(others)} other segment(s); LungSeg '
                           "builds no surfaces for them. Use Show 3D in the Segment Editor to build surfaces "
                           "for all segments.")
        return False, None

    def importResult(self, task: SegmentationTask, labelmapPath: Path) -> SegmentationOutcome:
        """Turn the worker's labelmap into lung segments (and the optional labelmap node) in the scene, in
        one go (the task's poll() splits this into :func:`result.prepareResult` on a background thread
        and :meth:`insertResult` on the main thread)."""
        from .result import prepareResult

        buildSurfaces, task.show3DNote = self.surfacePlan(task)
        target = task.segmentationNode
        parameters = target.GetSegmentation().SerializeAllConversionParameters() if target is not None else ""
        prepared = prepareResult(labelmapPath, task.inputShape, task.inputIJKToRAS, buildSurfaces=buildSurfaces,
                                 conversionParameters=parameters)
        return self.insertResult(task, prepared)

    def insertResult(self, task, prepared) -> SegmentationOutcome:
        """Main-thread part of the import: put the prepared lung segments (replacing those of the same
        names, other segments untouched) and the optional labelmap node into the scene."""
        volumeNode, scene = task.volumeNode, self.scene
        if task.segmentationNode is not None and scene.GetNodeByID(task.segmentationNode.GetID()) is None:
            raise InputError("The output segmentation was removed from the scene while segmenting.")
        if scene.GetNodeByID(volumeNode.GetID()) is None:
            raise InputError("The input volume was removed from the scene while segmenting.")

        segmentationNode = task.segmentationNode
        created = segmentationNode is None
        if created:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                       scene.GenerateUniqueName(f"{volumeNode.GetName()} lungs"))
            segmentationNode.CreateDefaultDisplayNodes()
        labelmapNode = None
        try:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            if created:  # a new node follows the CT; an existing one is never moved (checkSameFrame)
                segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            else:
                self.checkSameFrame(volumeNode, segmentationNode)  # the user may have changed it meanwhile
            segmentIds = self._insertLungSegments(segmentationNode, prepared.segments)
            self.placeInStudyOf(segmentationNode, volumeNode)
            show3DNote = getattr(task, "show3DNote", None)
            if task.show3D and show3DNote is None:
                self.setShow3D(segmentationNode, True)  # the surfaces came prepared: no conversion here
            if task.exportLabelmap:
                labelmapNode = self._labelmapNode(segmentationNode, volumeNode, prepared)
        except Exception:
            # leave no half-made node behind (an existing segmentation keeps what was imported)
            for node in (labelmapNode, segmentationNode if created else None):
                if node is not None:
                    _removeWithDisplayNodes(scene, node)
            raise
        done = task.doneEvent or {}
        outcome = SegmentationOutcome(segmentationNode, segmentIds, labelmapNode,
                                      dict(done.get("volumes_ml", {})), dict(done.get("timings_s", {})),
                                      [Finding.from_dict(w) for w in done.get("warnings", [])],
                                      str(task.modelEvent.get("name", "")),
                                      time.perf_counter() - task.startTime)
        if "measures" in done or "review" in done:
            from .review import reviewItemsFromEvent

            outcome.measures = done.get("measures")
            outcome.confidence = done.get("confidence")
            outcome.review = reviewItemsFromEvent(done)
        if show3DNote:
            outcome.warnings.append(Finding("show3d_skipped", show3DNote))
        for warning in outcome.warnings:
            logging.warning("LungSeg: %s", warning)
        return outcome

    @staticmethod
    def _labelmapCarrier(labels: np.ndarray, ijkToRas: np.ndarray):
        """A labelmap volume node (not in any scene) holding ``labels`` on the given grid."""
        import vtk
        from vtk.util.numpy_support import numpy_to_vtk

        image = vtk.vtkImageData()
        image.SetDimensions(labels.shape[::-1])
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.GetPointData().GetScalars().DeepCopy(numpy_to_vtk(labels.ravel(), deep=True))
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(ijkToRas[r, c]))
        labelmap = _slicer().vtkMRMLLabelMapVolumeNode()
        labelmap.SetIJKToRASMatrix(matrix)
        labelmap.SetAndObserveImageData(image)
        return labelmap

    def _insertLungSegments(self, segmentationNode, segments: Dict[str, Any]) -> Dict[str, str]:
        """Put the prepared lung segments into the node: a segment of the same name is replaced in place
        (its ID and position kept), others are untouched; returns {name: segment ID}."""
        segmentation = segmentationNode.GetSegmentation()
        existing = self.lungSegmentIds(segmentationNode)
        segmentIds = {}
        wasModifying = segmentationNode.StartModify()
        try:
            for spec in LUNG_LABELS:
                segmentId = existing.get(spec.name)
                before = ""
                if segmentId:
                    order = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
                    position = order.index(segmentId)
                    before = order[position + 1] if position + 1 < len(order) else ""
                    segmentation.RemoveSegment(segmentId)
                else:
                    segmentId = segmentation.GenerateUniqueSegmentID(spec.name.replace(" ", "_"))
                if not segmentation.AddSegment(segments[spec.name], segmentId, before):
                    raise WorkerError(f"Slicer could not add the segment {spec.name}.", 1)
                segmentIds[spec.name] = segmentId
        finally:
            segmentationNode.EndModify(wasModifying)
        return segmentIds

    def _labelmapNode(self, segmentationNode, volumeNode, prepared):
        """A labelmap volume node (0/1/2) from the prepared image, on the CT's grid, in the CT's study."""
        from .result import _vtk_matrix

        scene = self.scene
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode",
                                       scene.GenerateUniqueName(f"{segmentationNode.GetName()} label"))
        node.SetIJKToRASMatrix(_vtk_matrix(prepared.ijkToRas))
        node.SetAndObserveImageData(prepared.labelImage)
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        node.CreateDefaultDisplayNodes()
        self.placeInStudyOf(node, volumeNode)
        return node

    def _replaceLungSegments(self, segmentationNode, labelmap) -> Dict[str, str]:
        """Fill the segments named Right/Left lung (created if missing, others untouched) from a 0/1/2
        labelmap and set their names, colours and terminology; returns {name: segment ID}."""
        import vtk

        segmentation = segmentationNode.GetSegmentation()
        existing = self.lungSegmentIds(segmentationNode)
        segments = LUNG_LABELS
        segmentIds = {seg.name: existing.get(seg.name) or segmentation.GenerateUniqueSegmentID(
            seg.name.replace(" ", "_")) for seg in segments}
        ids = vtk.vtkStringArray()
        for seg in segments:  # label order: 1 = right, 2 = left
            ids.InsertNextValue(segmentIds[seg.name])
        others = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                  if segmentation.GetNthSegmentID(i) not in segmentIds.values()]
        # ImportLabelmapToSegmentationNode drops every derived representation of the node (the user's
        # segments' surfaces too); where other segments have surfaces, fill the lung segments one by one
        # instead, so that Slicer re-converts only them.
        perSegment = bool(others) and segmentation.ContainsRepresentation("Closed surface")
        wasModifying = segmentationNode.StartModify()
        try:
            if perSegment:
                self._setLungSegmentsOneByOne(segmentationNode, labelmap, segmentIds)
            elif not _slicer().vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                    labelmap, segmentationNode, ids):
                raise WorkerError("Slicer could not import the lung labelmap into the segmentation.", 1)
            for seg in segments:
                segment = segmentation.GetSegment(segmentIds[seg.name])
                segment.SetName(seg.name)
                segment.SetNameAutoGenerated(False)
                segment.SetColor(*seg.color)
                segment.SetColorAutoGenerated(False)
                segment.SetTag(segment.GetTerminologyEntryTagName(), seg.slicer_terminology())
        finally:
            segmentationNode.EndModify(wasModifying)
        return segmentIds

    @staticmethod
    def _setLungSegmentsOneByOne(segmentationNode, labelmap, segmentIds: Dict[str, str]) -> None:
        """Replace each lung segment's binary labelmap from the 0/1/2 carrier (segments created if missing)."""
        import vtk
        from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

        slicer = _slicer()
        segmentation = segmentationNode.GetSegmentation()
        image = labelmap.GetImageData()
        labels = vtk_to_numpy(image.GetPointData().GetScalars())
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetIJKToRASMatrix(matrix)
        for seg in LUNG_LABELS:
            segmentId = segmentIds[seg.name]
            if segmentation.GetSegment(segmentId) is None:
                segmentation.AddEmptySegment(segmentId, seg.name, list(seg.color))
            mask = slicer.vtkOrientedImageData()
            mask.SetDimensions(image.GetDimensions())
            mask.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            mask.GetPointData().GetScalars().DeepCopy(numpy_to_vtk((labels == seg.value).view(np.uint8), deep=True))
            mask.SetImageToWorldMatrix(matrix)
            if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    mask, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
                raise WorkerError(f"Slicer could not fill the segment {seg.name}.", 1)

    def exportLabelmap(self, segmentationNode, referenceVolumeNode, labelmapNode=None):
        """Write the lung segments into a labelmap volume node on the reference volume's grid:
        0 background, 1 right lung, 2 left lung (a new node unless ``labelmapNode`` is given)."""
        import vtk

        slicer = _slicer()
        segmentIds = self.lungSegmentIds(segmentationNode)
        if set(segmentIds) != set(SEGMENT_NAMES):
            raise InputError(f"{segmentationNode.GetName()} has no segments named "
                             f"{' and '.join(SEGMENT_NAMES)}.")
        created = labelmapNode is None
        if created:
            labelmapNode = self.scene.AddNewNodeByClass(
                "vtkMRMLLabelMapVolumeNode", self.scene.GenerateUniqueName(f"{segmentationNode.GetName()} label"))
        ids = vtk.vtkStringArray()
        for name in SEGMENT_NAMES:
            ids.InsertNextValue(segmentIds[name])
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmapNode, referenceVolumeNode):
            if created:
                _removeWithDisplayNodes(self.scene, labelmapNode)
            raise WorkerError("Slicer could not export the lung segments to a labelmap.", 1)
        self.placeInStudyOf(labelmapNode, referenceVolumeNode)
        return labelmapNode

    def placeInStudyOf(self, node, volumeNode) -> None:
        """Put ``node`` under the same subject-hierarchy parent (study) as ``volumeNode``."""
        shNode = self.scene.GetSubjectHierarchyNode()
        if shNode is None:
            return
        volumeItem = shNode.GetItemByDataNode(volumeNode)
        parent = shNode.GetItemParent(volumeItem) if volumeItem else shNode.GetSceneItemID()
        nodeItem = shNode.GetItemByDataNode(node)
        if nodeItem:
            shNode.SetItemParent(nodeItem, parent)
        else:  # Slicer's GUI adds items for new nodes itself; plain MRML (slicer-core) does not
            shNode.CreateItem(parent, node)

    def setShow3D(self, segmentationNode, show: bool) -> Optional[str]:
        """Show or hide the lung segments in 3-D views, building surfaces for the lung segments only.

        Slicer keeps one set of representations for all segments of a node, so a surface can only be
        created for the whole node. The lungs' surfaces are therefore built when the node holds nothing
        else (LungSeg's own output) or already has surfaces (then Slicer re-converted only the replaced
        lung segments); a node with other segments and no surfaces is left alone, and the returned note
        says so (None otherwise). Hiding only hides the lung segments: the user's segments keep their
        representations and visibility.
        """
        segmentation = segmentationNode.GetSegmentation()
        lungIds = set(self.lungSegmentIds(segmentationNode).values())
        others = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                  if segmentation.GetNthSegmentID(i) not in lungIds]
        note = None
        if show and not segmentation.ContainsRepresentation("Closed surface"):
            if others:
                note = (f'Show 3D: "{segmentationNode.GetName()}" also holds {len(others)} other segment(s); '
                        "LungSeg builds no surfaces for them. Use Show 3D in the Segment Editor to build "
                        "surfaces for all segments.")
            else:
                segmentationNode.CreateClosedSurfaceRepresentation()
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            if show and note is None:
                displayNode.SetVisibility3D(True)
            for segmentId in lungIds:
                displayNode.SetSegmentVisibility3D(segmentId, show)
        return note

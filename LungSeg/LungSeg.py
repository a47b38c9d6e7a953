"""LungSeg: right and left lung segmentation of chest CT in 3D Slicer.

The panel (``LungSegWidget``) is thin: it keeps the user's choices in a parameter node, asks before
installing packages or replacing segments, and polls a ``SegmentationTask`` from a QTimer. All the work
is in ``LungSegLogicLib`` (MRML, no Qt) and the ``LungSegLib`` worker process (the network).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Optional

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _moduleRoots():
    """Where Resources/ and LungSegLib/ are: beside this file in an installed extension, one folder
    up in a source checkout (the module path added by hand for development)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return here, os.path.dirname(here)


def resourcePath(relativePath: str) -> str:
    """Path of ``Resources/<relativePath>``."""
    for root in _moduleRoots():
        path = os.path.join(root, "Resources", relativePath)
        if os.path.exists(path):
            return path
    return os.path.join(_moduleRoots()[0], "Resources", relativePath)


for _root in _moduleRoots():
    if os.path.isfile(os.path.join(_root, "LungSegLib", "__init__.py")):
        if _root not in sys.path:
            sys.path.insert(0, _root)
        break

import LungSegLogicLib  # noqa: E402  (needs the path above)
import LungSegLogicLib.license  # noqa: E402
import LungSegLogicLib.logic  # noqa: E402
import LungSegLogicLib.messages  # noqa: E402
import LungSegLogicLib.review  # noqa: E402
from LungSegLogicLib.dicomseg_export import (HIGHDICOM_REQUIREMENT, exportDicomSeg, highdicomInstalled,  # noqa: E402
                                             isFromDicom)
from LungSegLib import defaults  # noqa: E402
from LungSegLib.errors import LungSegError  # noqa: E402
from LungSegLib.labels import by_side  # noqa: E402

#: Device choices shown in the panel (the worker's --device values).
DEVICES = list(defaults.DEVICES)


#
# LungSeg
#


class LungSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        import qt

        self.parent.title = _("Lung Segmentation (LungSeg)")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LungSeg contributors"]
        self.parent.helpText = _("""
Segments the right and the left lung in a chest CT with a 2-D U-Net run slice by slice on the CPU
(or a GPU). Select a CT volume in Hounsfield units and click <b>Apply</b>; the result is a segmentation
with the segments "Right lung" and "Left lung". The network runs in a separate process: the
application stays responsive and <b>Cancel</b> stops it at once.
The first Apply offers to install TensorFlow (once, about 600 MB).
<p><b>Licence of the model weights: non-commercial use only.</b> The bundled network was trained on three
patients, two of them from NSCLC-Radiomics (CC BY-NC 3.0); the first Apply asks you to accept this once.
The LungSeg code is Apache-2.0. See the <a href="{url}">model card</a>. Not a medical device.</p>
<p>Try it without your own data: <b>Sample Data</b> module, category <b>LungSeg</b>.</p>
""").format(url=LungSegLogicLib.license.MODEL_CARD_URL)
        self.parent.acknowledgementText = _("""
The sample CT comes from The Cancer Imaging Archive's ACRIN-FLT-Breast collection (CC BY 3.0).
The bundled model weights were trained on NSCLC-Radiomics (Aerts et al. 2014, CC BY-NC 3.0) and
ACRIN-FLT-Breast CTs: they are for non-commercial use only (<a href="{url}">model card</a>).
""").format(url=LungSegLogicLib.license.MODEL_CARD_URL)
        self.parent.icon = qt.QIcon(resourcePath("Icons/LungSeg.png"))
        # The Sample Data module exists only once the application has started.
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data
#

#: Name under which the bundled CT appears in the Sample Data module (category "LungSeg").
SAMPLE_NAME = "LungSegChestCT"
SAMPLE_FILE = "SampleData/ACRIN-FLT-Breast-001_chest.nrrd"


def registerSampleData() -> None:
    """Offer the bundled chest CT in the Sample Data module (a local file: no download)."""
    import qt
    import SampleData

    path = resourcePath(SAMPLE_FILE)
    if not os.path.isfile(path):
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="LungSeg",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=resourcePath("Icons/LungSeg.png"),
        uris=qt.QUrl.fromLocalFile(path).toString(),
        fileNames=os.path.basename(path),
        nodeNames=SAMPLE_NAME,
        loadFileType="VolumeFile",
    )


#
# LungSegParameterNode
#


@parameterNodeWrapper
class LungSegParameterNode:
    """The panel's choices, saved with the scene.

    inputVolume - the CT to segment (HU).
    outputSegmentation - where the lung segments go; None creates a new segmentation.
    postprocess - clean up the network output (largest components, holes, sides).
    device - "auto", "cpu" or "gpu".
    batchSize - slices per network call.
    exportLabelmap - also create a labelmap volume (0 background, 1 right, 2 left lung).
    show3D - show the segments in 3-D views.
    allowNonHU - segment even a volume that does not look like CT in Hounsfield units.
    review - also compute the network confidence, density measures and the slices to review.
    flip - test-time flip (a second, mirrored network pass).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    postprocess: bool = True
    device: Annotated[str, Choice(DEVICES)] = "auto"
    batchSize: Annotated[int, WithinRange(1, defaults.MAX_BATCH_SIZE)] = defaults.WORKER_BATCH_SIZE
    exportLabelmap: bool = False
    show3D: bool = True
    allowNonHU: bool = False
    review: bool = True
    flip: bool = False


#
# LungSegWidget
#


class LungSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: choices, Apply/Cancel, progress. The work is in :class:`LungSegLogic`."""

    POLL_INTERVAL_MS = 100

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[LungSegLogic] = None
        self.task: Optional[LungSegLogicLib.SegmentationTask] = None
        self._parameterNode: Optional[LungSegParameterNode] = None
        self._parameterNodeGuiTag = None
        self._timer = None

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/LungSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LungSegLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.reinstallButton.connect("clicked(bool)", self.onReinstallDependencies)
        self._setupReview()
        self._showVersions()
        self._setStatus(_("Select a CT volume and click Apply."))
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancelTask()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelTask()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if not node.IsA("vtkMRMLLabelMapVolumeNode"):
                    self._parameterNode.inputVolume = node
                    break

    def setParameterNode(self, inputParameterNode: Optional[LungSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui follow the parameter node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    # --- state shown in the panel ------------------------------------------------------------------
    def _updateButtons(self, caller=None, event=None) -> None:
        running = self.task is not None
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the segmentation; the scene is left as it was.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            ready = bool(self._parameterNode and self._parameterNode.inputVolume)
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = (_("Segment the lungs of the selected CT.") if ready
                                           else _("Select an input CT volume."))
        for widget in (self.ui.inputSelector, self.ui.outputSelector, self.ui.advancedCollapsibleButton):
            widget.enabled = not running
        fromDicom = bool(self._parameterNode and isFromDicom(self._parameterNode.inputVolume))
        self.ui.exportDicomSegButton.enabled = fromDicom and not running and self._segmentationToExport() is not None

    def _setStatus(self, text: str, done: int = 0, total: int = 0) -> None:
        self.ui.statusLabel.text = text
        self.ui.progressBar.visible = total > 0
        if total > 0:
            self.ui.progressBar.maximum = total
            self.ui.progressBar.value = done

    # --- Apply / Cancel ------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.task is not None:
            self._cancelTask()
            self._setStatus(_("Cancelled; nothing was changed."))
            return
        p = self._parameterNode
        if not self.ensureModelLicenseAccepted():  # first: no 600 MB download for a declined licence
            return
        if not self.ensureDependencies():
            return
        segmentation = p.outputSegmentation
        if segmentation is not None:
            existing = self.logic.lungSegmentIds(segmentation)
            if existing and not slicer.util.confirmOkCancelDisplay(
                    _("{name} already has the segments {segments}. Replace them? Other segments are kept.").format(
                        name=segmentation.GetName(), segments=", ".join(existing)),
                    windowTitle=_("Replace lung segments?")):
                return
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            self.task = self.logic.startSegmentation(
                p.inputVolume, segmentation, postprocess=p.postprocess, device=p.device,
                progressCallback=self.onProgress, batchSize=p.batchSize, exportLabelmap=p.exportLabelmap,
                show3D=p.show3D, checkHU=not p.allowNonHU, acceptModelLicense=True,
                review=p.review, flip=p.flip)
            self.ui.logTextEdit.clear()
            self._setStatus(_("Starting…"))
            self._timer.start()
        self._updateButtons()

    def _segmentationToExport(self):
        """The segmentation with the lung segments: the selected output, else the last run's result."""
        node = self._parameterNode.outputSegmentation if self._parameterNode else None
        if node is None and self.logic.lastOutcome is not None:
            node = self.logic.lastOutcome.segmentationNode
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
            return None
        return node if self.logic.lungSegmentIds(node) else None

    def onExportDicomSeg(self) -> None:
        """Write the lung segments as a DICOM SEG beside the study's files (export worker process) and
        add it to the DICOM database."""
        volume, segmentation = self._parameterNode.inputVolume, self._segmentationToExport()
        if not highdicomInstalled():
            if not slicer.util.confirmOkCancelDisplay(
                    _("Writing DICOM SEG needs the Python package highdicom. Install it now?"),
                    windowTitle=_("Install highdicom?")):
                return
            with slicer.util.tryWithErrorDisplay(_("Could not install highdicom."), waitCursor=True):
                slicer.util.pip_install(HIGHDICOM_REQUIREMENT)
        with slicer.util.tryWithErrorDisplay(_("Could not export the DICOM SEG."), waitCursor=True):
            path = exportDicomSeg(self.logic, segmentation, volume, addToDatabase=True,
                                  modelName=(self.logic.lastOutcome.modelName if self.logic.lastOutcome
                                             else "") or "LungSeg")
            self._setStatus(_("DICOM SEG written and added to the DICOM database: {path}").format(path=path))

    def onProgress(self, done: int, total: int, status: str) -> None:
        if status != self.ui.statusLabel.text:
            self._log(status)
        self._setStatus(status, done, total)

    def _log(self, text: str) -> None:
        if text:
            self.ui.logTextEdit.appendPlainText(text)

    def onTimer(self) -> None:
        task = self.task
        if task is None:
            self._timer.stop()
            return
        try:
            finished = task.poll()
        except LungSegError as exc:
            self._drainLog(task)
            self._finish()
            message = LungSegLogicLib.messages.panelMessage(exc)
            self._log(message)
            self._setStatus(_("Failed: {message}").format(message=message))
            details = getattr(exc, "details", "")
            slicer.util.errorDisplay(_("Lung segmentation failed:\n{message}").format(message=message),
                                     **({"detailedText": details} if details else {}))
            return
        except Exception as exc:  # a bug: still tell the user, with the traceback
            import traceback

            self._finish()
            self._setStatus(_("Failed: {message}").format(message=exc))
            slicer.util.errorDisplay(_("Lung segmentation failed unexpectedly:\n{message}").format(message=exc),
                                     detailedText=traceback.format_exc())
            return
        self._drainLog(task)
        if finished:
            self._finish()
            self.showOutcome(task.outcome)

    def showOutcome(self, outcome: LungSegLogicLib.SegmentationOutcome) -> None:
        self._parameterNode.outputSegmentation = outcome.segmentationNode
        volumes = outcome.volumesMl
        text = _("Right lung {right:.0f} mL, left lung {left:.0f} mL ({seconds:.1f} s).").format(
            right=volumes.get(by_side("right").name.lower(), 0.0), left=volumes.get(by_side("left").name.lower(), 0.0),
            seconds=outcome.elapsedS)
        if outcome.warnings:
            text += "\n" + "\n".join(_("Warning: {w}").format(w=w) for w in outcome.warnings)
        self._setStatus(text)
        self.showReview(outcome)

    # --- review aids (the logic is in LungSegLogicLib.review) -----------------------------------------
    def _setupReview(self) -> None:
        self._reviewWalker = LungSegLogicLib.review.ReviewWalker([])
        self._reviewOutcome = None
        self._measuresTable = None
        table = self.ui.reviewTableWidget
        table.setColumnCount(5)
        table.setHorizontalHeaderLabels([_("#"), _("Slice"), _("Lung"), _("Reason"), _("Score")])
        table.horizontalHeader().setStretchLastSection(True)
        table.verticalHeader().setVisible(False)
        table.connect("cellClicked(int,int)", self.onReviewRowClicked)
        self.ui.nextReviewButton.connect("clicked(bool)", self.onNextReview)
        self.ui.showConfidenceButton.connect("clicked(bool)", self.onShowConfidence)
        self.ui.openSegmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)

    def showReview(self, outcome) -> None:
        """Fill the Review section from a finished run: measures table node, review list, buttons."""
        import qt

        review = LungSegLogicLib.review
        self._reviewOutcome = outcome
        self._reviewWalker = review.ReviewWalker(outcome.review)
        scene = slicer.mrmlScene
        if outcome.measures:
            if self._measuresTable is None or scene.GetNodeByID(self._measuresTable.GetID()) is None:
                self._measuresTable = None
            self._measuresTable = review.measuresTableNode(
                scene, outcome.measures, name=f"{outcome.segmentationNode.GetName()} measures",
                tableNode=self._measuresTable, confidence=outcome.confidence)
            self.logic.placeInStudyOf(self._measuresTable, self._parameterNode.inputVolume)
            self.ui.measuresTableView.setMRMLTableNode(self._measuresTable)
        rows = review.reviewRows(outcome.review)
        table = self.ui.reviewTableWidget
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(text))
            table.item(r, 3).setToolTip(outcome.review[r].message)
        self.ui.nextReviewButton.enabled = bool(rows)
        self.ui.showConfidenceButton.enabled = bool(outcome.confidence)
        self.ui.openSegmentEditorButton.enabled = True

    def _jumpTo(self, item) -> None:
        if item is None:
            return
        self.ui.reviewTableWidget.selectRow(self._reviewWalker.index)
        LungSegLogicLib.review.jumpSlicesToReviewItem(slicer.mrmlScene, item, self._parameterNode.inputVolume)

    def onReviewRowClicked(self, row: int, column: int) -> None:
        self._jumpTo(self._reviewWalker.select(row))

    def onNextReview(self) -> None:
        self._jumpTo(self._reviewWalker.next())

    def onShowConfidence(self) -> None:
        outcome = self._reviewOutcome
        if outcome is None or not outcome.confidence:
            return
        review = LungSegLogicLib.review
        table = review.confidenceTableNode(slicer.mrmlScene, outcome.confidence,
                                           name=f"{outcome.segmentationNode.GetName()} confidence")
        chart = review.confidencePlotChartNode(slicer.mrmlScene, table)
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onOpenSegmentEditor(self) -> None:
        """Switch to the Segment Editor with this segmentation and its CT selected."""
        segmentation = self._segmentationToExport()
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        if segmentation is None:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        if volume is not None:
            # setSourceVolumeNode since Slicer 5.4 (setMasterVolumeNode before)
            (getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode)(volume)

    def _drainLog(self, task) -> None:
        if task.process is None:  # still writing the input copy
            return
        for line in task.process.new_log_lines():
            self._log(line)

    def _finish(self) -> None:
        self._timer.stop()
        self.task = None
        self._updateButtons()

    def _cancelTask(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self._finish()

    def onShow3DToggled(self, show: bool) -> None:
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is not None and self.task is None:
            note = self.logic.setShow3D(segmentation, show)
            if note:
                self._setStatus(note)

    # --- model licence ---------------------------------------------------------------------------------
    def ensureModelLicenseAccepted(self) -> bool:
        """Ask once (per licence text) before the first run of a model with a restricted licence; the
        answer is kept in the application settings. True when accepted."""
        import qt

        from LungSegLogicLib.license import (MODEL_CARD_URL, SETTINGS_KEY, licenseFingerprint,
                                             licenseNote)

        note = licenseNote(self.logic.modelPath, LungSegLogicLib.logic.LIBRARY_ROOT)
        if note is None:
            return True
        settings = qt.QSettings()
        fingerprint = licenseFingerprint(note)
        if settings.value(SETTINGS_KEY) == fingerprint:
            return True
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle(_("LungSeg model licence"))
        box.setIcon(qt.QMessageBox.Question)
        box.setTextFormat(qt.Qt.RichText)
        box.setText(_("<p>{note}</p><p>Use the bundled weights for research and other <b>non-commercial</b> "
                      "purposes only. Details: <a href=\"{url}\">model card</a>.</p>"
                      "<p>Do you accept these terms?</p>").format(note=note, url=MODEL_CARD_URL))
        box.setStandardButtons(qt.QMessageBox.Yes | qt.QMessageBox.No)
        box.setDefaultButton(qt.QMessageBox.No)
        if box.exec_() != qt.QMessageBox.Yes:
            self._setStatus(_("The model licence was not accepted; nothing was done."))
            return False
        settings.setValue(SETTINGS_KEY, fingerprint)
        return True

    # --- dependencies ----------------------------------------------------------------------------------
    def _showVersions(self) -> None:
        from LungSegLogicLib.environment import versionsText

        self.ui.versionsLabel.text = versionsText()

    def onReinstallDependencies(self) -> None:
        """Force-reinstall the packages of Resources/requirements.txt (e.g. after another extension
        installed an incompatible TensorFlow or Keras)."""
        from LungSegLogicLib.environment import platformRequirements

        requirements = platformRequirements()
        if not slicer.util.confirmOkCancelDisplay(
                _("Reinstall these Python packages?\n\n{packages}\n\nThis downloads about 600 MB and takes a "
                  "few minutes.").format(packages="\n".join(requirements)),
                windowTitle=_("Reinstall LungSeg's dependencies?")):
            return
        with slicer.util.tryWithErrorDisplay(_("Reinstalling the packages failed."), waitCursor=True):
            slicer.util.pip_install(["--upgrade", "--force-reinstall"] + requirements)
        self._showVersions()

    def ensureDependencies(self) -> bool:
        """Offer to install what Resources/requirements.txt lists and is missing; True when all is there."""
        missing = LungSegLogicLib.missing_requirements()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("LungSeg needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
                  "Install them now? This downloads about 600 MB once and takes a few minutes; no restart "
                  "is needed (the network runs in a separate process).").format(packages="\n".join(missing)),
                windowTitle=_("Install LungSeg's dependencies?")):
            self._setStatus(_("TensorFlow is required; nothing was done."))
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the packages failed."), waitCursor=True):
            try:
                import slicer.packaging

                ensure = slicer.packaging.pip_ensure
            except (ImportError, AttributeError):  # Slicer before 5.11
                ensure = None
            if ensure is not None:
                ensure(missing, prompt_install=False, requester="LungSeg")
            else:
                slicer.util.pip_install(missing)
        self._showVersions()
        still = LungSegLogicLib.missing_requirements()
        if still:
            slicer.util.errorDisplay(_("These packages are still missing: {packages}. Restart Slicer and try "
                                       "again, or install them from the Python console with "
                                       "slicer.util.pip_install.").format(packages=", ".join(still)))
            return False
        return True


#
# LungSegLogic
#


class LungSegLogic(ScriptedLoadableModuleLogic, LungSegLogicLib.LungSegLogic):
    """The module's logic: :class:`LungSegLogicLib.LungSegLogic` (usable from the Python console) plus
    the parameter node."""

    def getParameterNode(self):
        return LungSegParameterNode(super().getParameterNode())


#
# LungSegTest
#


class LungSegTest(ScriptedLoadableModuleTest):
    """Runs in real 3D Slicer: the logic on the bundled sample CT, then the panel's Apply."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_data_is_registered()
        self.setUp()
        self.test_logic_segments_sample_ct()
        self.setUp()
        self.test_panel_apply()
        self.setUp()
        self.test_panel_cancel_stops_the_worker_at_once()
        self.setUp()
        self.test_non_hu_input_is_refused_in_panel_words()

    def acceptLicenseInSettings(self):
        """What the dialog stores on "Yes" (the dialog itself would block an unattended test)."""
        import qt

        from LungSegLogicLib.license import SETTINGS_KEY, licenseFingerprint, licenseNote

        note = licenseNote(None, LungSegLogicLib.logic.LIBRARY_ROOT)
        self.assertIsNotNone(note)
        qt.QSettings().setValue(SETTINGS_KEY, licenseFingerprint(note))

    def test_sample_data_is_registered(self):
        import SampleData

        self.delayDisplay("The bundled CT in the Sample Data module")
        registerSampleData()  # what startupCompleted() did; registering twice is harmless
        volume = SampleData.downloadSample(SAMPLE_NAME)
        self.assertIsNotNone(volume)
        self.assertEqual(volume.GetImageData().GetDimensions()[2], 48)
        self.assertIn("LungSeg", slicer.modules.sampleDataSources)

    def test_panel_cancel_stops_the_worker_at_once(self):
        import time

        self.delayDisplay("Cancel from the panel")
        self.acceptLicenseInSettings()
        volume = self.loadSampleCT()
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        slicer.util.selectModule("LungSeg")
        widget = slicer.util.getModuleWidget("LungSeg")
        widget._parameterNode.inputVolume = volume
        widget._parameterNode.outputSegmentation = None
        widget._parameterNode.batchSize = 1
        widget.onApplyButton()
        task = widget.task
        deadline = time.time() + 300
        while task.done == 0 and widget.task is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertGreater(task.done, 0)
        start = time.perf_counter()
        widget.onApplyButton()  # the button reads Cancel now
        cancelSeconds = time.perf_counter() - start
        logging.info("LungSeg: Cancel returned after %.1f ms", 1000 * cancelSeconds)
        self.assertIsNone(widget.task)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        self.assertTrue(task.waitStopped(10))
        self.assertFalse(task.tempDir.exists())
        self.assertIsNotNone(task.process.returncode)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        widget._parameterNode.batchSize = 4

    def test_non_hu_input_is_refused_in_panel_words(self):
        self.delayDisplay("A volume that is not in HU")
        volume = self.loadSampleCT()
        array = slicer.util.arrayFromVolume(volume)
        array += 1024  # raw stored values without the rescale intercept
        slicer.util.arrayFromVolumeModified(volume)
        logic = LungSegLogic()
        with self.assertRaises(LungSegError) as info:
            logic.segment(volume, acceptModelLicense=True)
        message = LungSegLogicLib.messages.panelMessage(info.exception)
        self.assertIn("Allow non-HU input", message)
        self.assertNotIn("--", message)
        segmentation = logic.segment(volume, acceptModelLicense=True, checkHU=False)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 2)

    def loadSampleCT(self):
        path = resourcePath("SampleData/ACRIN-FLT-Breast-001_chest.nrrd")
        if os.path.isfile(path):
            return slicer.util.loadVolume(path)
        import SampleData

        return SampleData.downloadSample("CTChest")

    def test_logic_segments_sample_ct(self):
        import numpy as np

        self.delayDisplay("Segmenting the sample CT through the logic")
        volume = self.loadSampleCT()
        before = slicer.util.arrayFromVolume(volume).copy()
        progress = []
        logic = LungSegLogic()
        with self.assertRaises(LungSegLogicLib.license.ModelLicenseNotAccepted):
            logic.segment(volume)  # scripts must accept the licence explicitly
        segmentation = logic.segment(volume, exportLabelmap=True, acceptModelLicense=True,
                                     progressCallback=lambda done, total, status: progress.append((done, total)))
        segments = segmentation.GetSegmentation()
        names = [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]
        self.assertEqual(names, list(LungSegLogicLib.SEGMENT_NAMES))
        for i in range(2):
            segment = segments.GetNthSegment(i)
            terminology = vtk.reference("")
            self.assertTrue(segment.GetTag(segment.GetTerminologyEntryTagName(), terminology))
            self.assertIn("SCT^39607008^Lung", str(terminology))
        self.assertNotEqual(segments.GetNthSegment(0).GetColor(), segments.GetNthSegment(1).GetColor())
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(volume), before))
        labels = slicer.util.arrayFromVolume(logic.lastOutcome.labelmapNode)
        self.assertEqual(labels.shape, before.shape)
        self.assertTrue(set(np.unique(labels)) <= {0, 1, 2})
        self.assertEqual(progress[-1][0], volume.GetImageData().GetDimensions()[2])
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(segmentation)),
                         sh.GetItemParent(sh.GetItemByDataNode(volume)))
        self.delayDisplay("Logic test passed")

    def test_panel_apply(self):
        import time

        self.delayDisplay("Segmenting the sample CT through the panel")
        self.acceptLicenseInSettings()
        volume = self.loadSampleCT()
        slicer.util.selectModule("LungSeg")
        widget = slicer.util.getModuleWidget("LungSeg")
        widget._parameterNode.inputVolume = volume
        widget._parameterNode.outputSegmentation = None
        widget.onApplyButton()
        self.assertIsNotNone(widget.task)
        self.assertEqual(widget.ui.applyButton.text, "Cancel")
        deadline = time.time() + 600
        while widget.task is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertIsNone(widget.task)
        segmentation = widget._parameterNode.outputSegmentation
        self.assertIsNotNone(segmentation)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 2)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        self.assertIn("Segmenting", widget.ui.logTextEdit.toPlainText())  # the log section was filled
        self.assertIn("TensorFlow", widget.ui.versionsLabel.text)
        self.assertNotIn("not installed", widget.ui.versionsLabel.text)
        self.delayDisplay("Panel test passed")


"""The Slicer logic with a launcher as its Python (as PythonSlicer is in 3D Slicer), on a real MRML scene:
Cancel mid-network and mid-write leaves no process, no file and the scene as it was; a normal run works."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (no wheel for Python 3.9)")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LungSeg"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from LungSegLogicLib import LungSegLogic, volume_array  # noqa: E402
from test_worker_cancel import GONE_WITHIN_S, SAMPLE_CT, launcher_executable, live_processes, wait_until  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc (Linux)")


@pytest.fixture
def launcher_logic(mrml_app, oracle_model_path, tmp_path):
    logic = LungSegLogic()
    logic.scene = mrml_app.scene
    logic.modelPath = str(oracle_model_path)
    logic.pythonExecutable = launcher_executable(tmp_path)
    return logic


def _scene_state(mrml_app, volume):
    return mrml_app.node_ids(), volume_array(volume).copy()


@pytest.mark.parametrize("when", ["network", "writing"])
def test_cancel_through_the_launcher_leaves_nothing(when, mrml_app, launcher_logic):
    if not SAMPLE_CT.is_file():
        pytest.skip("sample CT not shipped")
    volume = mrml_app.load_volume(SAMPLE_CT, "Chest CT")
    nodes_before, voxels_before = _scene_state(mrml_app, volume)
    statuses = []
    task = launcher_logic.startSegmentation(volume, batchSize=1 if when == "network" else 16,
                                            progressCallback=lambda d, t, s: statuses.append((d, t, s)))
    marker = str(task.tempDir)
    trigger = (lambda: any(t and d < t for d, t, _ in statuses)) if when == "network" else \
        (lambda: any(s == "Writing the result" for _, _, s in statuses))
    deadline = time.monotonic() + 180
    while not trigger() and time.monotonic() < deadline:
        assert not task.poll(), task.process.stderr_text()
        time.sleep(0.002)
    assert trigger() and live_processes(marker)  # launcher + worker running
    task.cancel()
    assert not task.running and task.poll()  # over for the panel at once; nothing imported
    assert wait_until(lambda: not live_processes(marker), GONE_WITHIN_S), live_processes(marker)
    assert wait_until(lambda: not task.tempDir.exists(), GONE_WITHIN_S)
    assert task.waitStopped(10)
    assert task.outcome is None and mrml_app.node_ids() == nodes_before
    np.testing.assert_array_equal(volume_array(volume), voxels_before)


def test_a_run_through_the_launcher_succeeds(mrml_app, launcher_logic, sample_ct_crop):
    volume = mrml_app.load_volume(sample_ct_crop, "Chest CT")
    task = launcher_logic.startSegmentation(volume, batchSize=4)
    outcome = task.wait(pollInterval=0.02)
    assert outcome.segmentationNode.GetSegmentation().GetNumberOfSegments() == 2
    assert outcome.volumesMl["right lung"] > 0 and outcome.volumesMl["left lung"] > 0
    assert task.process.returncode == 0 and not task.tempDir.exists()
    assert not live_processes(str(task.tempDir))

"""Real signals to real `python -m LungSegLib segment` processes: SIGTERM and SIGINT cancel at every stage
(exit 130, "nothing was written", nothing left), and the temporary file a SIGKILL leaves behind is
removed by the next run that writes to that folder (only LungSeg's own pattern, only of a dead process).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.core.atomic import TEMP_NAME, temp_path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(scope="module")
def large_ct(tmp_path_factory) -> Path:
    """A 160 x 512 x 512 chest-like CT (HU, uncompressed NRRD): long enough to signal mid-stage, and its
    labelmap takes a moment to compress and write."""
    shape = (160, 512, 512)
    j, i = np.mgrid[0:512, 0:512]
    body = ((i - 256) / 200.0) ** 2 + ((j - 256) / 150.0) ** 2 <= 1
    lungs = (((i - 170) / 70.0) ** 2 + ((j - 240) / 90.0) ** 2 <= 1) | (((i - 342) / 65.0) ** 2
                                                                       + ((j - 240) / 85.0) ** 2 <= 1)
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lungs] = -850
    noise = np.random.default_rng(1).normal(0, 10, (8, 512, 512)).astype(np.int16)
    volume = np.empty(shape, np.int16)
    for k in range(shape[0]):
        volume[k] = plane + noise[k % 8]
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.7, 2.0))
    path = tmp_path_factory.mktemp("signals") / "large_ct.nrrd"
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


class Run:
    """A `lungseg segment` child process whose stderr is collected as it comes."""

    def __init__(self, args: List[str], cwd: Path):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "LungSegLib", "segment"] + [str(a) for a in args],
                                     cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            chunk = self.proc.stderr.read1(4096)
            if not chunk:
                return
            self.err += chunk

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the run ended before {what}: {self.text()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s: {self.text()}"
            time.sleep(0.002)

    def finish(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def text(self) -> str:
        return self.err.decode("utf-8", "replace")


def _temps(folder: Path) -> List[Path]:
    try:
        return [folder / name for name in os.listdir(folder) if TEMP_NAME.match(name)]
    except FileNotFoundError:  # the run creates the folder when it starts writing
        return []


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _stage_condition(stage: str, run: Run, out_dir: Path) -> Callable[[], bool]:
    if stage == "model":
        return lambda: b"Loading the model" in run.err
    if stage == "network":
        return lambda: b"Segmenting" in run.err
    if stage == "write":
        return lambda: bool(_temps(out_dir))
    raise ValueError(stage)


@pytest.mark.parametrize("stage, signum", [("model", signal.SIGTERM), ("network", signal.SIGTERM),
                                           ("write", signal.SIGTERM), ("network", signal.SIGINT)])
def test_a_signal_cancels_and_leaves_nothing(large_ct, oracle_model_path, tmp_path, stage, signum):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("someone else's file")
    before = _snapshot(out_dir)
    source = large_ct.read_bytes()
    run = Run([large_ct, out_dir / "new" / "lungs.seg.nrrd", "--overview", out_dir / "overview.png",
               "--model", oracle_model_path, "--batch-size", "2"], tmp_path)
    run.wait_for(_stage_condition(stage, run, out_dir / "new"), f"stage {stage!r}")
    run.proc.send_signal(signum)
    code = run.finish()

    assert code == 130, run.text()
    assert "lungseg: cancelled; nothing was written." in run.text()
    assert "Traceback" not in run.text()
    assert _snapshot(out_dir) == before  # no output, no temporary file, no new folder, others' files kept
    assert large_ct.read_bytes() == source


def test_sigkill_leftovers_are_removed_by_the_next_run(large_ct, oracle_model_path, sample_ct_crop, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = Run([large_ct, out_dir / "lungs.seg.nrrd", "--model", oracle_model_path, "--batch-size", "2"], tmp_path)
    run.wait_for(lambda: bool(_temps(out_dir)), "a temporary file")
    killed_pid = run.proc.pid
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    left = _temps(out_dir)
    assert left and all(TEMP_NAME.match(p.name)["pid"] == str(killed_pid) for p in left)
    assert not (out_dir / "lungs.seg.nrrd").exists()

    # not removed: a temporary file of a live process (this one), one of another machine, and look-alikes
    alive = temp_path(out_dir / "mine.nrrd")
    alive.write_bytes(b"in progress")
    other_host = out_dir / f".x.nrrd.lungseg-otherhost-{killed_pid}.tmp.nrrd"
    other_host.write_bytes(b"another machine's")
    lookalikes = [out_dir / f".x.nrrd.{killed_pid}.tmp.nrrd", out_dir / "lungseg-notes.tmp.txt"]
    for path in lookalikes:
        path.write_bytes(b"not ours")

    second = Run([sample_ct_crop, out_dir / "second.nrrd", "--model", oracle_model_path, "--quiet"], tmp_path)
    assert second.finish(timeout=240) == 0, second.text()
    names = {p.name for p in out_dir.iterdir()}
    assert not any(p.name in names for p in left)
    assert {"second.nrrd", alive.name, other_host.name} | {p.name for p in lookalikes} == names

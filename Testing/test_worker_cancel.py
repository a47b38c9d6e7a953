"""Cancel reaches the worker through a launcher that forwards no signal (as 3D Slicer's PythonSlicer),
at every stage, and leaves no process and no file; the worker also ends when its caller is killed.

Real processes throughout: the stand-in launcher (``Testing/stand_in_launcher.py``) starts the
interpreter as its own child and ignores SIGTERM/SIGINT; leftovers are found by scanning ``/proc``
for command lines that hold the run's unique temporary path (zombies, already dead, do not count).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, List

import pytest

from LungSegLib.worker import worker_command
from LungSegLib.worker.process import WorkerProcess

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"
LAUNCHER = Path(__file__).with_name("stand_in_launcher.py")
#: How long a stopped worker tree may take to disappear (the issue's bound).
GONE_WITHIN_S = 2.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists() or os.name == "nt",
                                reason="process-tree checks read /proc (Linux)")


# --- helpers ------------------------------------------------------------------------------------------
def launcher_executable(folder: Path) -> str:
    """An executable that behaves like PythonSlicer: runs the stand-in launcher with this Python."""
    path = folder / "PythonSlicer"
    path.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{LAUNCHER}' \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def live_processes(marker: str) -> List[int]:
    """Pids of running (not zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # ended while we looked
            continue
        if marker in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def env() -> dict:
    out = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
    return out


def start_worker(tmp_path: Path, model: Path, *, through_launcher: bool = True, batch_size: int = 1,
                 cleanup: bool = True, output_dir: Path = None) -> tuple:
    """A worker on the full sample CT (48 slices, batch 1: many progress events) in its own folder."""
    work = tmp_path / "run"
    work.mkdir()
    ct = work / "input.nrrd"
    shutil.copyfile(SAMPLE_CT, ct)
    out = (output_dir or work) / "lungs.nrrd"
    python = launcher_executable(tmp_path) if through_launcher else sys.executable
    argv = worker_command(python, ct, out, model=model, batch_size=batch_size, watch_stdin=True,
                          cleanup_dir=work if cleanup else None)
    return WorkerProcess(argv, env=env(), cwd=str(tmp_path)), work, out


def read_until(process: WorkerProcess, predicate: Callable[[dict], bool], timeout: float = 120) -> List[dict]:
    events: List[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = process.events()
        events += new
        if any(predicate(e) for e in new):
            return events
        if process.finished:
            break
        time.sleep(0.005)
    raise AssertionError(f"the expected event never came: {events}\n{process.stderr_text()}")


@pytest.fixture
def sample_ct():
    if not SAMPLE_CT.is_file():
        pytest.skip("sample CT not shipped")
    return SAMPLE_CT


# --- the worker process (WorkerProcess + launcher, no MRML) -----------------------------------------------
def test_closing_stdin_alone_stops_the_worker_behind_the_launcher(sample_ct, oracle_model_path, tmp_path):
    """No signal at all: only the pipe closes. The launcher ignores SIGTERM and forwards nothing."""
    process, work, out = start_worker(tmp_path, oracle_model_path)
    events = read_until(process, lambda e: e["event"] == "progress")
    assert live_processes(str(work))  # launcher and worker both run
    process._close_stdin()
    assert wait_until(lambda: not live_processes(str(work)), GONE_WITHIN_S), live_processes(str(work))
    assert process.wait(5) == 130  # the launcher passes the worker's exit code on
    assert not work.exists()  # --cleanup-dir: the worker removed its caller's folder, input included
    events += read_until(process, lambda e: e["event"] == "error")
    assert events[-1]["type"] == "Cancelled" and events[-1]["exit_code"] == 130
    assert not any(e["event"] == "done" for e in events)


def test_cancel_returns_before_the_tree_ends_and_kills_a_frozen_tree(sample_ct, oracle_model_path, tmp_path):
    """A tree that cannot react (SIGSTOP) shows that cancel() does not wait for it, and the background
    clean-up still ends it (SIGKILL to the group) and runs the caller's clean-up."""
    process, work, out = start_worker(tmp_path, oracle_model_path, cleanup=False)
    read_until(process, lambda e: e["event"] == "progress")
    os.killpg(process.pid, signal.SIGSTOP)
    cleaned = []
    process.cancel(then=lambda: cleaned.append(shutil.rmtree(work)))
    assert live_processes(str(work)) and not process.wait_stopped(0)  # returned while the tree lives
    assert wait_until(lambda: not live_processes(str(work)), GONE_WITHIN_S)
    assert process.wait_stopped(10) and cleaned == [None] and not work.exists()


def test_killing_the_caller_stops_the_worker_and_removes_its_files(sample_ct, oracle_model_path, tmp_path):
    """The caller (a Python process driving a WorkerProcess, as Slicer does) dies by SIGKILL mid-network:
    the worker sees its stdin close, removes the caller's folder and exits."""
    work = tmp_path / "run"
    work.mkdir()
    shutil.copyfile(SAMPLE_CT, work / "input.nrrd")
    driver = textwrap.dedent(f"""
        import json, sys, time
        from LungSegLib.worker import worker_command
        from LungSegLib.worker.process import WorkerProcess
        argv = worker_command({launcher_executable(tmp_path)!r}, {str(work / 'input.nrrd')!r},
                              {str(work / 'lungs.nrrd')!r}, model={str(oracle_model_path)!r}, batch_size=1,
                              watch_stdin=True, cleanup_dir={str(work)!r})
        worker = WorkerProcess(argv)
        while True:
            for event in worker.events():
                print(json.dumps(event), flush=True)
            time.sleep(0.01)
    """)
    caller = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True, env=env())
    try:
        for line in caller.stdout:
            if json.loads(line)["event"] == "progress":
                break
        assert live_processes(str(work))
        caller.send_signal(signal.SIGKILL)
        caller.wait(5)
        assert wait_until(lambda: not live_processes(str(work)), GONE_WITHIN_S), live_processes(str(work))
        assert wait_until(lambda: not work.exists(), GONE_WITHIN_S)
    finally:
        caller.kill()
        for pid in live_processes(str(work)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("stage", ["loading", "network", "writing"])
def test_sigterm_cancels_the_worker_at_every_stage(stage, sample_ct, oracle_model_path, tmp_path):
    """SIGTERM to the worker itself (no launcher): exit 130, a Cancelled event, nothing left.

    The write takes a fraction of a second: on a starved CPU the worker can finish it before the signal
    lands (exit 0, a complete result). That attempt proves nothing about cancelling, so it is repeated
    (up to three times) until the signal arrives mid-write."""
    trigger = {"loading": lambda e: e["event"] == "started",
               "network": lambda e: e["event"] == "progress",
               "writing": lambda e: e.get("message") == "Writing the result"}[stage]
    for attempt in range(3):
        out_dir, folder = tmp_path / f"out{attempt}", tmp_path / f"try{attempt}"
        out_dir.mkdir()
        folder.mkdir()
        process, work, out = start_worker(folder, oracle_model_path, through_launcher=False,
                                          cleanup=False, output_dir=out_dir,
                                          batch_size=1 if stage != "writing" else 16)
        events = read_until(process, trigger)
        os.kill(process.pid, signal.SIGTERM)
        code = process.wait(30)
        events += read_until(process, lambda e: e["event"] in ("error", "done"))
        if not (stage == "writing" and events[-1]["event"] == "done"):
            break
        assert [p.name for p in out_dir.iterdir()] == [out.name]  # finished first: the whole result
    assert code == 130, process.stderr_text()
    assert events[-1]["event"] == "error" and events[-1]["type"] == "Cancelled"
    assert list(out_dir.iterdir()) == []  # no output, no staging folder, no temporary file
    assert work.exists()  # not asked to remove it: the worker touches nothing else


def test_worker_never_recreates_a_removed_output_folder(sample_ct, oracle_model_path, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process, work, out = start_worker(tmp_path, oracle_model_path, through_launcher=False, cleanup=False,
                                      output_dir=out_dir)
    read_until(process, lambda e: e["event"] == "progress")
    out_dir.rmdir()  # the caller gave up on this folder while the network runs
    assert process.wait(120) == 4
    events = process.events()
    assert events[-1]["type"] == "OutputError" and "does not exist" in events[-1]["message"]
    assert not out_dir.exists()


def test_sigkilled_worker_tree_leaves_the_group_empty(sample_ct, oracle_model_path, tmp_path):
    """stop() (cancel and wait) through the launcher: the whole group is gone when it returns."""
    process, work, out = start_worker(tmp_path, oracle_model_path)
    read_until(process, lambda e: e["event"] == "progress")
    process.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
    assert not live_processes(str(work)) and not work.exists()

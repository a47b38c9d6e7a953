"""The worker as a child process that never blocks its caller (no Qt, no MRML).

Two daemon threads read the worker's stdout (JSON events) and stderr (log, traceback) into a queue
and a bounded buffer; :meth:`WorkerProcess.events` hands over what has arrived so far, so a Qt timer
or a plain polling loop can drive it from the main thread.
"""
from __future__ import annotations

import collections
import os
import queue
import subprocess
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .protocol import parse_event

#: Seconds a worker gets to stop on SIGTERM before it is killed.
TERMINATE_GRACE_S = 0.5
#: Lines of stderr kept for error details.
STDERR_LINES = 200


class WorkerProcess:
    """A started worker: ``events()`` to poll, ``finished`` / ``returncode`` once it ended,
    ``stop()`` to end it at once."""

    def __init__(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None):
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":  # no console window pops up for the child
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW
        self.argv = list(argv)
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=dict(env) if env is not None else None,
                                      cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                      **kwargs)
        self._queue: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
        self._stderr: "collections.deque[str]" = collections.deque(maxlen=STDERR_LINES)
        self._stdout_done = threading.Event()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            event = parse_event(line)
            if event is None:  # not expected (the worker guards stdout) but keep it for the details
                self._stderr.append(line.rstrip())
            else:
                self._queue.put(event)
        self._stdout_done.set()

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip())

    @property
    def pid(self) -> int:
        return self._proc.pid

    def events(self) -> List[Dict[str, Any]]:
        """The events that arrived since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    @property
    def finished(self) -> bool:
        """True once the process has exited and all its stdout was read."""
        return self._proc.poll() is not None and self._stdout_done.is_set() and self._queue.empty()

    @property
    def returncode(self) -> Optional[int]:
        return self._proc.poll()

    def stderr_text(self) -> str:
        """The last lines the worker wrote to stderr (for error details)."""
        for thread in self._threads[1:]:
            if self._proc.poll() is not None:
                thread.join(timeout=1.0)
        return "\n".join(self._stderr)

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self._proc.wait(timeout)
        self._threads[0].join(timeout=timeout)
        return code

    def stop(self, grace_s: float = TERMINATE_GRACE_S) -> None:
        """Ask the worker to stop (SIGTERM, or TerminateProcess on Windows), kill it if it is still
        running after ``grace_s``, and wait for it to end: at most about ``grace_s`` + a few ms."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for thread in self._threads:
            thread.join(timeout=1.0)


def python_executable() -> str:
    """The Python that runs the worker: ``sys.executable``, which 3D Slicer sets to its ``PythonSlicer``
    (the application binary itself is not a Python), else ``PythonSlicer`` found on PATH."""
    import shutil

    if sys.executable and "python" in os.path.basename(sys.executable).lower():
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found:
        return found
    raise FileNotFoundError(f"Cannot find a Python to run the segmentation worker (sys.executable is "
                            f"{sys.executable!r} and PythonSlicer is not on PATH).")

"""The worker as a child process that never blocks its caller (no Qt, no MRML).

Two daemon threads read the worker's stdout (JSON events) and stderr (log, traceback) into a queue
and a bounded buffer; :meth:`WorkerProcess.events` hands over what has arrived so far, so a Qt timer
or a plain polling loop can drive it from the main thread.

Stopping reaches the real worker even through a launcher that forwards nothing (3D Slicer's
``PythonSlicer`` starts the interpreter as its own child):

* the worker is started in a **new process group** (POSIX: a new session; Windows: a new process
  group), and stopping signals the whole group, or runs ``taskkill /T /F`` over the tree on Windows
  (3D Slicer ships no psutil, and a job object would need ctypes plumbing for no gain here);
* the worker's **stdin is a pipe only this object holds** (``--watch-stdin``): closing it cancels the
  worker, and the operating system closes it for us if this process dies.

:meth:`WorkerProcess.cancel` only sends (microseconds); waiting for the tree to end and any clean-up
run on a background thread, so a GUI thread is never blocked.
"""
from __future__ import annotations

import atexit
import collections
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .protocol import parse_event

#: Seconds the worker tree gets to stop on its own (stdin closed, SIGTERM) before it is killed.
TERMINATE_GRACE_S = 0.5
#: Lines of stderr kept for error details.
STDERR_LINES = 200
#: How long the background clean-up waits for the killed tree before giving up on it (seconds).
KILL_WAIT_S = 5.0

_IS_WINDOWS = os.name == "nt"
#: Workers that may still run, stopped (not waited for) when this interpreter exits.
_LIVE: "weakref.WeakSet[WorkerProcess]" = weakref.WeakSet()


def _drain(source: "queue.Queue") -> list:
    """Everything queued in ``source`` now, oldest first (never blocks)."""
    out = []
    while True:
        try:
            out.append(source.get_nowait())
        except queue.Empty:
            return out


class WorkerProcess:
    """A started worker: ``events()`` to poll, ``finished`` / ``returncode`` once it ended,
    ``cancel()`` to stop it without waiting, ``stop()`` to stop it and wait.

    Args:
        argv: the command (for a worker with ``--watch-stdin``: it then stops when stdin closes).
        env, cwd: as for :class:`subprocess.Popen`.
    """

    def __init__(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None):
        kwargs: Dict[str, Any] = {}
        if _IS_WINDOWS:  # no console window; its own group, so a Ctrl+C in ours does not reach it
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        else:  # its own session and process group: the launcher, the interpreter and their children
            kwargs["start_new_session"] = True
        self.argv = list(argv)
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=dict(env) if env is not None else None,
                                      cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                      **kwargs)
        self._queue: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
        self._stderr: "collections.deque[str]" = collections.deque(maxlen=STDERR_LINES)
        self._log: "queue.Queue[str]" = queue.Queue()
        self._stdout_done = threading.Event()
        self._stderr_done = threading.Event()
        self._stopped = threading.Event()
        self._cancelled = False
        self._stop_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()
        _LIVE.add(self)

    def _read_stdout(self) -> None:
        try:
            for line in self._proc.stdout:
                event = parse_event(line)
                if event is None:  # not expected (the worker guards stdout) but keep it for the details
                    self._stderr.append(line.rstrip())
                else:
                    self._queue.put(event)
        finally:
            self._stdout_done.set()

    def _read_stderr(self) -> None:
        try:
            for line in self._proc.stderr:
                self._stderr.append(line.rstrip())
                self._log.put(line.rstrip())
        finally:
            self._stderr_done.set()

    @property
    def pid(self) -> int:
        """The pid of the process started (the launcher, where there is one); also its group id."""
        return self._proc.pid

    def events(self) -> List[Dict[str, Any]]:
        """The events that arrived since the last call (never blocks)."""
        return _drain(self._queue)

    def new_log_lines(self) -> List[str]:
        """stderr lines (the worker's log) that arrived since the last call (never blocks)."""
        return _drain(self._log)

    @property
    def finished(self) -> bool:
        """True once the process has exited and all its stdout and stderr were read."""
        return (self._proc.poll() is not None and self._stdout_done.is_set() and self._stderr_done.is_set()
                and self._queue.empty())

    @property
    def returncode(self) -> Optional[int]:
        return self._proc.poll()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def stderr_text(self) -> str:
        """The last lines the worker wrote to stderr (for error details; never blocks)."""
        return "\n".join(self._stderr)

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self._proc.wait(timeout)
        self._threads[0].join(timeout=timeout)
        return code

    # --- stopping ------------------------------------------------------------------------------------
    def _close_stdin(self) -> None:
        try:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                self._proc.stdin.close()
        except OSError:  # already broken: the worker is gone
            pass

    def _signal_tree(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (POSIX); on Windows end the whole tree."""
        if _IS_WINDOWS:
            if self._proc.poll() is None or sig == getattr(signal, "SIGKILL", 9):
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               creationflags=subprocess.CREATE_NO_WINDOW)
            return
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):  # the group is gone (or its id was reused: never ours)
            pass

    def _group_alive(self) -> bool:
        if _IS_WINDOWS:
            return self._proc.poll() is None
        try:
            os.killpg(self._proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def cancel(self, then: Optional[Callable[[], None]] = None, grace_s: float = TERMINATE_GRACE_S) -> None:
        """Stop the worker tree without waiting: close its stdin and send SIGTERM to its group now
        (microseconds), then on a background thread wait up to ``grace_s``, kill what is left of the
        group, reap it and call ``then`` (e.g. remove the caller's temporary folder)."""
        with self._stop_lock:
            first = not self._cancelled
            self._cancelled = True
        if not first:
            return
        self._close_stdin()
        if not _IS_WINDOWS:
            self._signal_tree(signal.SIGTERM)
        threading.Thread(target=self._finish_stop, args=(grace_s, then), name="lungseg-worker-stop",
                         daemon=True).start()

    def _finish_stop(self, grace_s: float, then: Optional[Callable[[], None]]) -> None:
        try:
            deadline = time.monotonic() + grace_s
            while self._group_alive() and time.monotonic() < deadline:
                self._proc.poll()  # reap the launcher as soon as it ends, so the group can empty
                time.sleep(0.01)
            if self._group_alive():
                self._signal_tree(getattr(signal, "SIGKILL", 9))
            try:
                self._proc.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + KILL_WAIT_S  # grandchildren are reaped by init, not by us
            while self._group_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            for thread in self._threads:
                thread.join(timeout=1.0)
        finally:
            _LIVE.discard(self)
            try:
                if then is not None:
                    then()
            finally:
                self._stopped.set()

    def wait_stopped(self, timeout: Optional[float] = None) -> bool:
        """After :meth:`cancel`: wait until the tree is gone and ``then`` ran; True if it did."""
        return self._stopped.wait(timeout)

    def stop(self, grace_s: float = TERMINATE_GRACE_S) -> None:
        """Cancel and wait until the whole tree has ended (for scripts and tests, not a GUI thread)."""
        self.cancel(grace_s=grace_s)
        self.wait_stopped()


@atexit.register
def _stop_live_workers() -> None:
    """When the caller's interpreter exits (3D Slicer quitting), stop what still runs: close stdin
    and signal each group (no waiting; the workers remove their own temporary files)."""
    for worker in list(_LIVE):
        if worker.returncode is None:
            worker._close_stdin()
            if not _IS_WINDOWS:
                worker._signal_tree(signal.SIGTERM)
            else:
                worker._signal_tree(9)


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

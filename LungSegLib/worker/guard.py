"""The worker's side of cancelling: every way to stop it ends the same way, at once, leaving nothing.

A worker can be told to stop by

* its **stdin closing** (``--watch-stdin``): the caller holds the only write end of that pipe, so it
  closes when the caller cancels *and* when the caller dies (a crash, a SIGKILL, the application
  quitting). This is the channel that survives launchers: 3D Slicer's ``PythonSlicer`` starts the
  real interpreter as its own child and forwards no signal, but it passes stdin straight through
  (CTKAppLauncher uses ``QProcess::ForwardedInputChannel``);
* **SIGTERM / SIGINT** (a signal to the process group, Ctrl+C, ``kill``).

Both are handled on their own threads, not by waiting for the main thread to reach Python code (it
may be inside a TensorFlow call for seconds): :meth:`CancelGuard.abort` takes the commit lock (so a
rename that already started finishes first and is then undone), removes the staging folder, the
output this run committed and the folder the caller asked it to remove, reports a ``Cancelled``
error event and ends the process with exit code 130 (``os._exit``: no TensorFlow teardown).

The output is only ever published by :meth:`CancelGuard.commit`, which checks the cancel flag under
the same lock right before the rename: a cancel either comes first (nothing is renamed) or after (the
renamed file is removed again), never in between.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import Cancelled, OutputError

#: Exit code of a cancelled worker (128 + SIGINT, as shells report Ctrl+C).
CANCELLED_EXIT = 130
CANCEL_MESSAGE = "Segmentation cancelled; nothing was written."

#: ``report(message)`` emits the final ``Cancelled`` event; it must not raise.
Reporter = Callable[[str], None]


def _remove_tree(path: Path) -> None:
    """Remove ``path`` (file or folder) even while another thread is still creating files in it."""
    for _ in range(5):  # rmtree lists, then deletes: a file created in between makes rmdir fail
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass
        if not os.path.lexists(path):
            return


class CancelGuard:
    """The worker's cancel flag, its staging folder and the one lock that orders cancel and commit.

    Args:
        report: emits the final ``Cancelled`` error event (called once, from :meth:`abort`).
        cleanup_dir: a folder the caller owns and wants gone if the run is cancelled or the caller
            vanished (3D Slicer's temporary folder holding the input copy); None for none.
    """

    def __init__(self, report: Reporter, cleanup_dir: Optional[os.PathLike] = None):
        self.cancel = threading.Event()
        self._report = report
        # re-entrant: reporting the cancel can find the caller gone, which aborts again (a no-op)
        self._lock = threading.RLock()
        self._aborting = False
        self._remove_on_abort: List[Path] = []
        if cleanup_dir is not None:
            self._remove_on_abort.append(Path(cleanup_dir))
        self._finished = False  # the result is published and reported: a cancel has nothing left to stop
        self._exit = os._exit  # replaced in tests that must not end the test process

    # --- stopping ---------------------------------------------------------------------------------
    def abort(self, reason: str = CANCEL_MESSAGE) -> None:
        """Cancel now, from any thread: remove what this run wrote, report, exit 130. Never returns
        (unless called again while the first call is finishing, which then ends the process).

        A cancel that comes after the result was published *and* reported (``done``) is too late: the
        caller was told where the result is, so it stays; only the staging folder goes, and the exit
        status is 0."""
        self.cancel.set()
        with self._lock:  # a commit in progress completes first; its file is then removed below
            if self._aborting:
                return
            self._aborting = True
            for path in reversed(self._remove_on_abort):
                _remove_tree(path)
            if self._finished:
                self._exit(0)
                return
            try:
                self._report(reason)
            except Exception:  # the caller may be gone (broken pipe): nothing left to tell
                pass
            try:
                sys.stderr.flush()
            except Exception:
                pass
            self._exit(CANCELLED_EXIT)

    def check(self) -> None:
        """Raise :class:`Cancelled` if a cancel was requested (for the main thread between stages)."""
        if self.cancel.is_set():
            raise Cancelled(CANCEL_MESSAGE)

    def watch_stdin(self, stream=None) -> threading.Thread:
        """Abort as soon as stdin reaches end-of-file (the caller closed it, or died)."""
        fd = (stream if stream is not None else sys.stdin).fileno()

        def watch() -> None:
            while True:
                try:
                    data = os.read(fd, 4096)
                except InterruptedError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.abort("Segmentation cancelled (the caller closed the worker's input or ended); "
                               "nothing was written.")
                    return

        thread = threading.Thread(target=watch, name="lungseg-stdin-watch", daemon=True)
        thread.start()
        return thread

    def handle_signals(self) -> None:
        """SIGTERM and SIGINT abort at once, whatever the main thread is doing.

        On POSIX both are blocked in every thread (threads TensorFlow starts later inherit the mask)
        and a dedicated thread waits for them with ``sigwait``; elsewhere a plain handler is used.
        The dispositions are set explicitly first: a parent that ignored SIGTERM would otherwise
        pass ``SIG_IGN`` on, and an ignored signal is discarded before ``sigwait`` can see it.
        """
        signals = {signal.SIGTERM, signal.SIGINT}
        for signum in signals:
            signal.signal(signum, lambda s, f: threading.Thread(target=self.abort, daemon=True).start())
        if hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwait"):
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)

            def wait() -> None:
                signal.sigwait(signals)
                self.abort()

            threading.Thread(target=wait, name="lungseg-signal-wait", daemon=True).start()

    # --- writing --------------------------------------------------------------------------------------
    def make_staging_dir(self, output: os.PathLike) -> Path:
        """A private folder beside ``output`` to write into (same file system: the commit is a rename).

        Created with a plain ``mkdir``, never with its parents: if the output folder is gone (the
        caller removed it), the worker fails instead of re-creating it.
        """
        output = Path(output)
        staging = output.parent / f".lungseg-{os.getpid()}.partial"
        with self._lock:
            self.check()
            try:
                os.mkdir(staging)
            except FileNotFoundError:
                raise OutputError(f"The output folder {output.parent} does not exist (it was removed?); "
                                  "nothing was written.") from None
            except FileExistsError:
                pass
            except OSError as exc:
                raise OutputError(f"Cannot write in {output.parent}: {exc.strerror or exc}") from exc
            self._remove_on_abort.append(staging)
        return staging

    def commit(self, staged: os.PathLike, output: os.PathLike, overwrite: bool,
               then: Optional[Callable[[], None]] = None) -> None:
        """Publish ``staged`` as ``output`` unless cancelled; ``then`` runs under the same lock (the
        ``done`` event), so a cancel can never fall between the rename and the report."""
        staged, output = Path(staged), Path(output)
        with self._lock:
            self.check()
            if not output.parent.is_dir():
                raise OutputError(f"The output folder {output.parent} was removed while segmenting; "
                                  "nothing was written.")
            if overwrite:
                os.replace(staged, output)
            else:
                _rename_no_clobber(staged, output)
            # Until it is reported a cancel removes the published file again (exit 130 means: nothing
            # written); once reported it is the caller's.
            self._remove_on_abort.append(output)
            if then is not None:
                then()
            self._remove_on_abort.remove(output)
            self._finished = True

    def discard(self, path: os.PathLike) -> None:
        """Remove a staging folder on the normal way out (success or a reported error)."""
        with self._lock:
            _remove_tree(Path(path))
            self._remove_on_abort = [p for p in self._remove_on_abort if p != Path(path)]


def _rename_no_clobber(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` unless ``dst`` exists (something appeared there while segmenting)."""
    try:
        os.link(src, dst)  # atomic and fails on an existing target (POSIX, NTFS)
    except FileExistsError:
        raise OutputError(f"{dst} appeared while segmenting; LungSeg does not overwrite it unless you pass "
                          "--overwrite (overwrite=True).") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if dst.exists():  # no hard links on this file system: the best a rename can do
            raise OutputError(f"{dst} appeared while segmenting; LungSeg does not overwrite it.") from None
        os.replace(src, dst)
        return
    src.unlink()

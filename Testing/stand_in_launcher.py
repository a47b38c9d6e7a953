"""A stand-in for 3D Slicer's ``PythonSlicer`` launcher (CTKAppLauncher), for the cancel tests.

Like the real one it starts the interpreter as its **own child** with the same arguments, passes stdin,
stdout and stderr straight through (``QProcess::ForwardedChannels`` / ``ForwardedInputChannel``),
waits for it and exits with its exit code, and forwards **no signal**. It goes further than the real
launcher in one way, to make the tests strict: SIGTERM and SIGINT do not even end it (a handler that
does nothing, so the child, after ``exec``, still gets the default dispositions). Only SIGKILL does.

Usage (as the logic's ``pythonExecutable``, through a small shell wrapper)::

    python stand_in_launcher.py -m LungSegLib.worker --input ... --output ...
"""
import signal
import subprocess
import sys


def _ignore(signum, frame):  # a launcher that neither forwards the signal nor dies of it
    pass


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _ignore)
    child = subprocess.Popen([sys.executable] + sys.argv[1:])
    while True:
        try:
            return child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue


if __name__ == "__main__":
    code = main()
    sys.exit(code if code >= 0 else 128 - code)

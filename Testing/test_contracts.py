"""Small contracts of the library's shared pieces: the exit-code table, atomic writes, the thread
settings that are really in effect, and the DICOM slice-spacing check that cannot run silently."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from LungSegLib import errors
from LungSegLib.core.atomic import atomic_path, atomic_write_text
from LungSegLib.core.imageio import check_slice_spacing

REPO = Path(__file__).resolve().parents[1]


def test_exit_code_table_comes_from_the_error_classes():
    from LungSegLib.cli import EXIT_CODES, build_parser
    from LungSegLib.worker import EXIT_CODES as WORKER_EXIT_CODES, DependencyError

    def codes(text):
        return {int(c): rest for c, rest in re.findall(r"^  (\d+)\s+(.*)$", text, re.M)}

    cli, worker = codes(EXIT_CODES), codes(WORKER_EXIT_CODES)
    for cls in errors.LIBRARY_ERRORS:
        assert cli[cls.exit_code].startswith(errors.MEANINGS[cls].split(";")[0].split(" (")[0])
    assert cli[0] == "success" and cli[2] == "wrong command-line usage"
    assert cli[130].startswith("cancelled (Ctrl+C") and cli[130].endswith("); nothing was written")
    assert worker[DependencyError.exit_code] == DependencyError.meaning
    assert worker[0] == "success: the output file is complete" and 7 not in worker
    assert EXIT_CODES in build_parser().format_help()


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.nii.gz.") and tmp.name.endswith(".nii.gz")
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
    atomic_write_text(target, json.dumps({"a": 1}))
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_unreadable_slice_positions_warn_instead_of_passing_silently():
    with pytest.warns(UserWarning, match="cannot check that its slices are evenly spaced"):
        check_slice_spacing(None, "series X", n_slices=40)
    with pytest.raises(Exception, match="not evenly spaced"):
        check_slice_spacing(np.array([0.0, 2.5, 5.0, 10.0, 12.5]), "series Y", n_slices=5)


#: Collects the messages of logged warnings into ``caught`` (a list of str) in the child process.
LOG_CAPTURE = """
import json, logging
caught = []
class _Keep(logging.Handler):
    def emit(self, record):
        caught.append(record.getMessage())
logging.getLogger("LungSegLib").addHandler(_Keep(logging.WARNING))
"""


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (TensorFlow's pools are per process); it prints JSON."""
    proc = subprocess.run([sys.executable, "-c", LOG_CAPTURE.join(textwrap.dedent(part) for part in
                                                                  code.split(LOG_CAPTURE))], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin",
                                                      "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_configure_threads_reports_the_pools_in_effect():
    out = _run(LOG_CAPTURE + """
        from LungSegLib.core.inference import configure_threads, thread_settings
        first = configure_threads(2)
        second = configure_threads(3)
        print(json.dumps({"first": first, "second": second, "applied": thread_settings().applied,
                          "warned": caught}))
    """)
    assert out["first"] == 2 and out["second"] == 2 and out["applied"] is True
    assert len(out["warned"]) == 1 and "3 CPU threads were asked for" in out["warned"][0]


def test_configure_threads_says_when_tensorflow_had_started():
    out = _run(LOG_CAPTURE + """
        import tensorflow as tf
        tf.constant(1.0) + 1.0  # TensorFlow runs: its pools are fixed now
        from LungSegLib.core.inference import configure_threads, thread_settings
        n = configure_threads(1)
        s = thread_settings()
        print(json.dumps({"n": n, "applied": s.applied, "note": s.note, "warned": caught}))
    """)
    assert out["applied"] is False and "already started" in out["note"]
    assert out["n"] >= 1
    if out["n"] != 1:
        assert "already started" in out["warned"][0]

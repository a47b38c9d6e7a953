"""What `lungseg segment` prints: with --quiet errors only; by default the program's own lines and none of
TensorFlow's start-up chatter (oneDNN, absl, cpu_feature_guard), whatever TF_CPP_MIN_LOG_LEVEL says."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from LungSegLib.core.tf_quiet import is_startup_noise

#: Lines TensorFlow prints at start-up when nothing filters them.
TF_NOISE = re.compile(r"oneDNN custom operations|absl::InitializeLog|cpu_feature_guard|port\.cc:\d+\]|"
                      r"This TensorFlow binary is optimized")


def _run(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}  # as a user's shell has it
    return subprocess.run([sys.executable, "-m", "LungSegLib", "segment"] + [str(a) for a in args],
                          capture_output=True, encoding="utf-8", errors="replace", env=env, cwd=tmp_path,
                          timeout=600)


def test_quiet_prints_nothing_on_success(sample_ct_crop, oracle_model_path, tmp_path):
    proc = _run([sample_ct_crop, tmp_path / "l.nrrd", "--model", oracle_model_path, "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert (tmp_path / "l.nrrd").is_file()


def test_default_output_is_the_programs_own_lines(sample_ct_crop, oracle_model_path, tmp_path):
    proc = _run([sample_ct_crop, tmp_path / "l.nrrd", "--model", oracle_model_path], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not TF_NOISE.search(proc.stderr), proc.stderr
    lines = [line.strip() for line in re.split(r"[\r\n]+", proc.stderr) if line.strip()]
    assert lines.count("Loading the model...") == 1
    for line in lines:  # status, the progress bar, named warnings: nothing else
        assert line == "Loading the model..." or line.startswith(("Segmenting", "warning:")), line
    assert proc.stdout.startswith(f"Wrote {tmp_path / 'l.nrrd'}: right lung ")


def test_quiet_still_prints_errors(tmp_path):
    proc = _run([tmp_path / "missing.nrrd", tmp_path / "l.nrrd", "--quiet"], tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.startswith("lungseg: error: Input not found")


@pytest.mark.parametrize("line, noise", [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", True),
    ("I0000 00:00:1795982608.240630   25810 port.cc:153] oneDNN custom operations are on.", True),
    ("I0000 00:00:1795982280.777367   12608 cpu_feature_guard.cc:227] This TensorFlow binary is optimized", True),
    ("To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow", True),
    ("W0000 00:00:1795982608.240630   25810 some_file.cc:12] a warning at start-up", True),
    ("E0000 00:00:1795982608.240630   25810 cuda_dnn.cc:8310] Unable to register cuDNN factory", False),
    ("F0000 00:00:1795982608.240630   25810 fatal.cc:1] Check failed", False),
    ("Traceback (most recent call last):", False),
    ("ImportError: libcudart.so.12: cannot open shared object file", False),
])
def test_only_informational_startup_lines_are_filtered(line, noise):
    assert is_startup_noise(line) is noise

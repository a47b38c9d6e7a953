"""Every ```python and ```bash block of README.md runs, or is checked, as written (issue 10, point 12).

Python blocks run in a fresh interpreter in a temporary folder where ``ct.nrrd`` is the shipped sample CT;
blocks that need 3D Slicer are listed below by their first line and only compiled. Bash blocks are checked
with ``bash -n``; each command line in them must be classified below as run (safe and cheap: it runs in the
temporary folder with ``lungseg`` = this checkout), syntax-only (installs, trains, needs data the test does
not have: a ``lungseg`` command's options are still parsed by the real argument parser) or a synopsis
(``[--option ...]`` usage lines). The ``lungseg`` commands inside YAML blocks (deployment examples) are
parsed the same way. A new block or command that is not classified fails the test, so nothing is skipped
silently.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SAMPLE = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"

#: Python blocks that need 3D Slicer (its ``slicer``/``qt`` modules), by their first line: compiled only.
SLICER_BLOCKS = {
    "import slicer": "the Python console of 3D Slicer (slicer.util, the LungSeg module)",
    "import qt": "a Qt timer polling a Slicer segmentation task",
}

RUN, SYNTAX, SYNOPSIS = "run", "syntax only", "synopsis"
#: Command prefixes of the README's bash blocks -> how the test treats them (the longest prefix wins).
COMMANDS = {
    "lungseg --version": (RUN, "cheap"),
    "lungseg segment ct.nrrd lungs.seg.nrrd --overview": (RUN, "the sample CT, a few seconds"),
    "lungseg segment ct.nrrd lungs.seg.nrrd --report": (RUN, "the sample CT with its reports, seconds"),
    "lungseg segment CT OUTPUT": (SYNOPSIS, "the usage synopsis, not a command"),
    "lungseg batch INPUT_ROOT OUTPUT_ROOT [": (SYNOPSIS, "the usage synopsis, not a command"),
    "lungseg batch /data/": (SYNTAX, "a cluster job over a data folder the test does not have"),
    "lungseg segment ct.nrrd lungs.seg.nrrd --model runs/": (SYNTAX, "needs a model trained by the block"),
    ". .venv/bin/activate": (SYNTAX, "the test already runs in the project's environment"),
    "bash scripts/sample.sh": (SYNTAX, "creates a virtual environment and installs (network)"),
    "bash scripts/test.sh": (SYNTAX, "runs the whole test suite, this test included"),
    "pip install": (SYNTAX, "installs packages"),
    "lungseg import-rt": (SYNTAX, "needs a DICOM CT series with an RTSTRUCT"),
    "lungseg train": (SYNTAX, "trains for minutes on a folder of cases"),
    "lungseg evaluate": (SYNTAX, "needs a trained model and ground-truth cases"),
    "lungseg export-weights": (SYNTAX, "needs a .keras training checkpoint"),
    "python benchmarks/": (SYNTAX, "minutes of benchmarking"),
}


class Block(NamedTuple):
    language: str
    line: int  # 1-based line of the opening fence in README.md
    code: str

    @property
    def first_line(self) -> str:
        return next((l.strip() for l in self.code.splitlines() if l.strip()), "")


def readme_blocks(text: str) -> List[Block]:
    """The fenced code blocks of a Markdown text (language, line of the fence, code)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if m:
            start, language, body = i, m.group(2).lower(), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(language, start + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


def bash_commands(code: str) -> List[str]:
    """Command lines of a bash block: comments stripped, indented lines joined to the command above (the
    synopsis style), backslash continuations joined."""
    commands: List[str] = []
    continued = False
    for raw in code.splitlines():
        line = re.sub(r"\s+#.*$", "", raw) if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continued = False
            continue
        if (continued or raw[:1].isspace()) and commands:
            commands[-1] += " " + line.strip().rstrip("\\").strip()
        else:
            commands.append(line.strip().rstrip("\\").strip())
        continued = line.rstrip().endswith("\\")
    return commands


def classify(command: str):
    matches = [p for p in COMMANDS if command.startswith(p)]
    if not matches:
        return None
    return COMMANDS[max(matches, key=len)][0]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.language == "python"]
BASH = [b for b in BLOCKS if b.language in ("bash", "sh", "shell", "console")]


def _id(block: Block) -> str:
    return f"line{block.line}:{block.first_line[:30]}"


YAML = [b for b in BLOCKS if b.language in ("yaml", "yml")]


def test_the_readme_has_the_blocks_this_test_knows():
    assert len(PYTHON) >= 3 and len(BASH) >= 3
    firsts = {b.first_line for b in PYTHON}
    for first in SLICER_BLOCKS:
        assert first in firsts, f"SLICER_BLOCKS lists {first!r}, which no README python block starts with"
    known = ("python", "bash", "sh", "shell", "console", "yaml", "yml", "")
    assert not [b for b in BLOCKS if b.language not in known], \
        "a README block in another language: decide how to check it here"


def check_lungseg_arguments(command: str) -> None:
    """Parse a ``lungseg ...`` command line with the real parser (environment variables get sample values:
    ``*COUNT`` -> 10, others -> 0); fails on an unknown option or a bad value."""
    from LungSegLib.cli import build_parser

    text = re.sub(r"\$\{?(\w+)\}?", lambda m: "10" if m.group(1).endswith("COUNT") else "0", command)
    words = shlex.split(text)
    assert words[0] == "lungseg", command
    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"`{command}` is not accepted by lungseg's argument parser (exit {exc.code})")


@pytest.mark.parametrize("block", YAML, ids=_id)
def test_yaml_block_lungseg_commands_parse(block):
    commands = re.findall(r"lungseg [^\"'\n\]]*", block.code)
    assert commands, f"README.md line {block.line}: a YAML block without a lungseg command: check it here"
    for command in commands:
        check_lungseg_arguments(command.strip())


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A fresh folder where ct.nrrd is the sample CT and `lungseg` runs this checkout."""
    folder = tmp_path
    (folder / "ct.nrrd").symlink_to(SAMPLE)
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "lungseg"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m LungSegLib "$@"\n')
    wrapper.chmod(0o755)
    return folder


def _env(workdir: Path) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = os.pathsep.join((str(workdir / "bin"), env.get("PATH", "")))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


#: Run after a python block, in the same interpreter: what the block promises (names it defines).
_AFTER = """
import numpy as _np, SimpleITK as _sitk
_names = globals()
if "labels" in _names and "labels_np" in _names:   # the NumPy call gives the same labels as the image call
    assert _np.array_equal(_sitk.GetArrayFromImage(labels), labels_np), "NumPy and SimpleITK results differ"
    print("README-CHECK: numpy == sitk")
if "result" in _names:
    _v = result.volumes_ml()
    assert _v["right lung"] > 500 and _v["left lung"] > 500, _v
    print("README-CHECK: volumes", _v)
"""


@pytest.mark.parametrize("block", PYTHON, ids=_id)
def test_python_block(block, workdir):
    compile(block.code, f"README.md:{block.line}", "exec")  # every block is valid Python
    if block.first_line in SLICER_BLOCKS:
        assert re.search(r"\b(slicer|qt)\.", block.code), "listed as needing Slicer but uses neither"
        return
    proc = subprocess.run([sys.executable, "-c", block.code + _AFTER], cwd=str(workdir), env=_env(workdir),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README.md line {block.line} failed:\n{proc.stderr[-3000:]}"
    assert "README-CHECK" in proc.stdout  # the block produced what it promises


@pytest.mark.parametrize("block", BASH, ids=_id)
def test_bash_block(block, workdir):
    syntax = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert syntax.returncode == 0, f"README.md line {block.line}: {syntax.stderr}"
    commands = bash_commands(block.code)
    unknown = [c for c in commands if classify(c) is None]
    assert not unknown, f"README.md line {block.line}: classify these commands in COMMANDS: {unknown}"
    for command in commands:
        if classify(command) == SYNTAX and command.startswith("lungseg "):
            check_lungseg_arguments(command)
        if classify(command) != RUN:
            continue
        proc = subprocess.run(["bash", "-c", command], cwd=str(workdir), env=_env(workdir),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README.md line {block.line}: {command!r} failed:\n{proc.stderr[-3000:]}"
        if command.startswith("lungseg segment"):
            written = command.split()[3]
            assert (workdir / written).is_file() and "Wrote" in proc.stdout
        else:
            assert proc.stdout.strip()


def test_bash_commands_are_split_as_written():
    code = "a one  # comment\n   --continued\nb two \\\n  three\n# only a comment\n"
    assert bash_commands(code) == ["a one --continued", "b two three"]

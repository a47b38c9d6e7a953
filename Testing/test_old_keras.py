"""The oldest supported stack, installed the way users install: same labels as here.

3D Slicer 5.6/5.8 run Python 3.9, where pip resolves TensorFlow 2.20 + Keras 3.10 (Keras 3.11 needs Python
3.10). A separate venv in the repository (``.tmp-oldkeras/``, git-ignored, reused while its pins are
unchanged; pip caches nothing) gets exactly the lower bounds that pyproject.toml states -- so the stated
bounds are the tested ones -- and LungSeg itself from a wheel (a normal, non-editable ``pip install``,
which must carry the bundled model as package data). There ``python -m LungSegLib segment`` labels the
shipped sample CT, and the labels must equal those of this environment voxel for voxel.

The first run downloads about 400 MB and takes a few minutes; later runs take about half a minute.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest
import SimpleITK as sitk
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / ".tmp-oldkeras"
VENV = ROOT / "venv"
SAMPLE = REPO / "Resources" / "SampleData" / "ACRIN-FLT-Breast-001_chest.nrrd"
#: What a wheel is built from (a fresh copy, so no stale build/ output of an earlier build gets in).
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "LungSegLib", "Resources/Models")


def _quoted_list(text: str, key: str) -> List[str]:
    """The strings of ``key = [ ... ]`` in a TOML text (enough for pyproject.toml; tomllib is 3.11+)."""
    match = re.search(rf"^{re.escape(key)}\s*=\s*\[(.*?)\]", text, re.S | re.M)
    assert match, f"no {key} list in pyproject.toml"
    body = "\n".join(line.split("#", 1)[0] for line in match.group(1).splitlines())
    return re.findall(r'"([^"]+)"', body)


def _floor(req: Requirement) -> str:
    floors = [s.version for s in req.specifier if s.operator == ">="]
    assert len(floors) == 1, f"{req} states no single lower bound"
    return floors[0]


def floor_pins() -> List[str]:
    """``name==<lower bound>.*`` for every dependency of this platform in pyproject.toml, plus the build
    backend (the wheel is built without isolation, from these packages only)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    pins = []
    for line in _quoted_list(text, "dependencies"):
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            floor = _floor(req)
            pins.append(f"{req.name}=={floor}{'.0' if '.' not in floor else ''}.*")
    return sorted(pins) + _quoted_list(text, "requires")


def python_in(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(args, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


def pip_env() -> Dict[str, str]:
    """pip caches nothing and keeps its temporary files inside the repository's ignored folder."""
    tmp = ROOT / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_USER", "VIRTUAL_ENV")}
    env.update(PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1", TMPDIR=str(tmp), TEMP=str(tmp),
               TMP=str(tmp))
    return env


@contextmanager
def locked() -> Iterator[None]:
    """One test run at a time builds and uses the shared venv."""
    ROOT.mkdir(exist_ok=True)
    with open(ROOT / ".lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: runs are not concurrent there
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_venv(pins: List[str]) -> Path:
    """The venv with exactly ``pins`` installed, on this Python's version (3.9 under a 3.9 test run, as in
    Slicer 5.8); rebuilt when either changed or it is broken."""
    marker = ROOT / "pins.json"
    wanted = {"python": "%d.%d" % sys.version_info[:2], "pins": pins}
    python = python_in(VENV)
    if python.exists() and marker.is_file() and json.loads(marker.read_text()) == wanted:
        return python
    shutil.rmtree(VENV, ignore_errors=True)
    marker.unlink(missing_ok=True)
    run([sys.executable, "-m", "venv", VENV], timeout=300)
    run([python, "-m", "pip", "install", "--no-cache-dir", "--quiet", *pins], timeout=1500, env=pip_env())
    marker.write_text(json.dumps(wanted))
    return python


def install_lungseg(python: Path) -> None:
    """``pip install .`` (non-editable, no dependencies) from a fresh copy of the build inputs."""
    src = ROOT / "src"
    shutil.rmtree(src, ignore_errors=True)
    for name in BUILD_INPUTS:
        source, target = REPO / name, src / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    run([python, "-m", "pip", "install", "--no-cache-dir", "--quiet", "--no-deps", "--no-build-isolation",
         "--force-reinstall", src], timeout=600, env=pip_env())
    shutil.rmtree(src, ignore_errors=True)


#: Run in the old venv: where LungSeg and its model come from, and the versions there (no TensorFlow import).
PROBE = """
import json, sys
from importlib import metadata
import LungSegLib
from LungSegLib.core.model import BUNDLED_MODEL, models_dir, read_card, sha256_of
path = models_dir() / BUNDLED_MODEL
print(json.dumps({"library": LungSegLib.__file__, "models_dir": str(models_dir()),
                  "sha256": sha256_of(path), "card": read_card(path),
                  "versions": {name: metadata.version(name) for name in
                               ("tensorflow-cpu", "keras", "numpy", "scipy", "SimpleITK")},
                  "prefix": sys.prefix}))
"""


@pytest.fixture(scope="module")
def old_env(tmp_path_factory):
    """Segment the sample CT in the old stack; returns (probe JSON, {precision: labels array}) for the
    default precision and float32."""
    out_dir = tmp_path_factory.mktemp("oldkeras")  # the working folder: outside the repository checkout
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LUNGSEG_MODELS_DIR", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with locked():
        python = ensure_venv(floor_pins())
        install_lungseg(python)
        probe = json.loads(run([python, "-c", PROBE], timeout=120, cwd=out_dir, env=env).stdout)
        labels = {}
        for precision in ("default", "float32"):
            path = out_dir / f"lungs_{precision}.nrrd"
            extra = [] if precision == "default" else ["--precision", precision]
            run([python, "-m", "LungSegLib", "segment", SAMPLE, path, *extra], timeout=600, cwd=out_dir, env=env)
            labels[precision] = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return probe, labels


def test_requirements_txt_states_the_same_lower_bounds_as_pyproject():
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    project = {Requirement(line).name.lower(): _floor(Requirement(line)) for line in _quoted_list(text, "dependencies")}
    slicer = [Requirement(line.split("#", 1)[0].strip())
              for line in (REPO / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()
              if line.split("#", 1)[0].strip()]
    assert {r.name.lower() for r in slicer} <= set(project)
    for req in slicer:
        assert _floor(req) == project[req.name.lower()], f"{req} and pyproject.toml state different lower bounds"
    assert project["keras"] == "3.10" and project["tensorflow-cpu"] == "2.20"


def test_floor_pins_pin_every_dependency_to_its_lower_bound():
    pins = floor_pins()
    assert "keras==3.10.*" in pins and "tensorflow-cpu==2.20.*" in pins and "numpy==1.26.*" in pins
    assert any(p.startswith("setuptools") for p in pins)


def test_pyproject_ships_every_bundled_model_file_as_package_data():
    """One copy in git (Resources/Models), mapped into the wheel as LungSegLib/bundled_models."""
    import fnmatch

    from LungSegLib.core.model import PACKAGED_MODELS

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    package = f"LungSegLib.{PACKAGED_MODELS}"
    assert package in _quoted_list(text, "packages")
    assert re.search(rf'^"{re.escape(package)}"\s*=\s*"Resources/Models"', text, re.M)
    patterns = _quoted_list(text, f'"{package}"')
    files = [p.name for p in (REPO / "Resources" / "Models").iterdir() if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in files), files
    assert not (REPO / "LungSegLib" / PACKAGED_MODELS).exists()  # no second copy in the checkout


def test_oldest_stack_installs_lungseg_with_its_model_from_a_wheel(old_env):
    probe, _ = old_env
    assert probe["versions"]["keras"].startswith("3.10.") and probe["versions"]["tensorflow-cpu"].startswith("2.20.")
    library = Path(probe["library"]).resolve()
    assert Path(probe["prefix"]).resolve() in library.parents and REPO / "LungSegLib" not in library.parents
    assert "site-packages" in library.parts  # the wheel's copy, not this checkout
    models = Path(probe["models_dir"])
    assert models == library.parent / "bundled_models"
    repo_card = json.loads((REPO / "Resources" / "Models" / "lungseg_unet_3class.json").read_text())
    assert probe["sha256"] == probe["card"]["sha256"] == repo_card["sha256"]
    assert (models / "MODEL_CARD.md").is_file()  # the licence travels with the weights


def test_oldest_stack_labels_the_sample_exactly_as_this_environment(old_env, tmp_path, capsys):
    """float32: the same labels voxel for voxel. The default precision (auto: bfloat16 on CPUs that have
    it, whose rounding may differ between TensorFlow versions): within 0.01 % of the voxels."""
    from LungSegLib.cli import main

    _, old = old_env
    for precision, old_labels in old.items():
        out = tmp_path / f"lungs_{precision}.nrrd"
        assert main(["segment", str(SAMPLE), str(out)] + ([] if precision == "default" else
                                                          ["--precision", precision])) == 0
        capsys.readouterr()
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        counts_here, counts_old = np.bincount(labels.ravel(), minlength=3), np.bincount(old_labels.ravel(), minlength=3)
        assert counts_here[1] > 10000 and counts_here[2] > 10000
        assert old_labels.shape == labels.shape
        differ = int(np.count_nonzero(old_labels != labels))
        if precision == "float32":
            assert differ == 0, f"voxel counts here {counts_here}, Keras 3.10 {counts_old}"
        else:
            assert differ <= 1e-4 * labels.size, f"{differ} voxels differ; counts here {counts_here}, old {counts_old}"

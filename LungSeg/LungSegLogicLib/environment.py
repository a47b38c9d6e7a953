"""What the Advanced section shows about the Python packages LungSeg needs, read from package metadata
only (nothing is imported: TensorFlow takes seconds to import and must not load into Slicer itself)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional

import LungSegLib

#: The folder that holds the ``LungSegLib`` package (the worker needs it on its PYTHONPATH).
LIBRARY_ROOT = Path(LungSegLib.__file__).resolve().parent.parent
#: ``Resources/requirements.txt``, beside ``LungSegLib`` in the repository and in an installed extension.
REQUIREMENTS_FILE = LIBRARY_ROOT / "Resources" / "requirements.txt"

#: The packages whose versions the panel shows.
SHOWN_PACKAGES = ("tensorflow", "keras")

#: Distributions that all provide the ``tensorflow`` package: any one satisfies a TensorFlow requirement,
#: so a user's GPU build is not doubled by a CPU build.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel")


def _installed_version(name: str) -> Optional[str]:
    from importlib import metadata

    names = TENSORFLOW_DISTRIBUTIONS if name.lower() in TENSORFLOW_DISTRIBUTIONS else (name,)
    for candidate in names:
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def _platform_requirement_objects(path: Path) -> Iterator:
    """The ``packaging`` Requirement of each line of ``path`` whose marker holds on this platform."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # Slicer versions without the standalone package still have pip's copy
        from pip._vendor.packaging.requirements import Requirement
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            yield req


def installedVersions() -> Dict[str, Optional[str]]:
    """{"tensorflow": "2.20.0" or None, "keras": ...}; any TensorFlow build (cpu, gpu, macos) counts."""
    return {name: _installed_version(name) for name in SHOWN_PACKAGES}


def versionsText() -> str:
    """One line for the panel, e.g. ``TensorFlow 2.20.0, Keras 3.10.0`` (or "not installed")."""
    labels = {"tensorflow": "TensorFlow", "keras": "Keras"}
    return ", ".join(f"{labels[name]} {version or 'not installed'}" for name, version in installedVersions().items())


def platformRequirements(path: Path = REQUIREMENTS_FILE) -> List[str]:
    """The requirements of ``path`` that apply to this platform, as pip arguments (no markers)."""
    return [f"{req.name}{req.specifier}" for req in _platform_requirement_objects(path)]


def missing_requirements(path: Path = REQUIREMENTS_FILE) -> List[str]:
    """Requirements of ``path`` (those for this platform, as pip arguments) that this Python lacks.

    Only package metadata is read, nothing is imported, so this is fast and safe from the GUI.
    """
    missing = []
    for req in _platform_requirement_objects(path):
        version = _installed_version(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(f"{req.name}{req.specifier}")  # no marker, no spaces: one pip argument
    return missing

"""What the Advanced section shows about the Python packages LungSeg needs, read from package metadata
only (nothing is imported: TensorFlow takes seconds to import and must not load into Slicer itself)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from .logic import REQUIREMENTS_FILE, _installed_version

#: The packages whose versions the panel shows.
SHOWN_PACKAGES = ("tensorflow", "keras")


def installedVersions() -> Dict[str, Optional[str]]:
    """{"tensorflow": "2.20.0" or None, "keras": ...}; any TensorFlow build (cpu, gpu, macos) counts."""
    return {name: _installed_version(name) for name in SHOWN_PACKAGES}


def versionsText() -> str:
    """One line for the panel, e.g. ``TensorFlow 2.20.0, Keras 3.10.0`` (or "not installed")."""
    labels = {"tensorflow": "TensorFlow", "keras": "Keras"}
    return ", ".join(f"{labels[name]} {version or 'not installed'}" for name, version in installedVersions().items())


def platformRequirements(path: Path = REQUIREMENTS_FILE) -> List[str]:
    """The requirements of ``path`` that apply to this platform, as pip arguments (no markers)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # Slicer versions without the standalone package still have pip's copy
        from pip._vendor.packaging.requirements import Requirement
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            out.append(f"{req.name}{req.specifier}")
    return out

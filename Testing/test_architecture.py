"""The layout's rules, read from the source with ``ast`` (every import, also those inside functions):

* the library (``LungSegLib``) never imports 3D Slicer, Qt or CTK;
* the label table and the defaults are dependency-free (standard library only);
* the library's parts import one way: the base modules (errors, labels, defaults) nothing of the
  library; ``core`` only the base and itself; ``evaluation`` also ``core``; ``training`` also
  ``evaluation``; ``api`` the base and ``core``; the ``worker`` also ``api``; only ``cli``, ``batch``
  and ``__main__`` may use everything;
* the Slicer module (``LungSeg``) imports from the library only its public API (``LungSegLib``'s
  ``LungSegmenter``, errors and ``__version__``), the label table, the errors, the defaults and the
  worker subpackage (protocol, process, worker commands).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "LungSegLib"
SLICER_MODULE = REPO / "LungSeg"

FORBIDDEN_IN_LIBRARY = {"slicer", "qt", "ctk", "PythonQt", "ScriptedLoadableModule", "SegmentEditorEffects"}
BASE = {"errors", "labels", "defaults", "__init__"}
#: What each part of the library may import (parts named by their first component under LungSegLib).
ALLOWED: Dict[str, Set[str]] = {
    "errors": set(), "labels": set(), "defaults": set(),
    "core": BASE | {"core"},
    "evaluation": BASE | {"core", "evaluation"},
    "training": BASE | {"core", "evaluation", "training"},
    "api": BASE | {"core"},
    "worker": BASE | {"core", "api", "worker"},
}
#: What the Slicer module may import from the library: (module, names imported from it or None = any).
SLICER_MAY_IMPORT = {
    "LungSegLib": {"LungSegmenter", "errors", "__version__", "labels", "defaults", "worker"},
    "LungSegLib.labels": None, "LungSegLib.errors": None, "LungSegLib.defaults": None,
    "LungSegLib.worker": None,
}
#: The worker subpackage is the Slicer module's way to the network: any of its modules (protocol, the
#: caller's side of a process, a worker command's argv) may be imported.
WORKER_PACKAGE = "LungSegLib.worker."


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[Tuple[str, Tuple[str, ...], int]]:
    """(absolute module, names imported from it, line) for every import statement of a file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, tuple(a.name for a in node.names), node.lineno


def _library_files():
    return sorted(LIBRARY.rglob("*.py"))


def test_the_scan_sees_function_level_imports(tmp_path):
    probe = LIBRARY / "core" / "inference.py"
    found = {m for m, _, _ in imports(probe)}
    assert "tensorflow" in found  # imported inside configure_threads only
    assert "LungSegLib.core.lean_graph" in found  # a relative import inside a method


def test_library_never_imports_slicer_qt_or_ctk():
    bad = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in _library_files()
           for m, _, line in imports(p) if m.split(".")[0] in FORBIDDEN_IN_LIBRARY]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["labels", "defaults", "errors"])
def test_base_modules_are_dependency_free(module):
    stdlib = set(sys.stdlib_module_names)
    found = {m.split(".")[0] for m, _, _ in imports(LIBRARY / f"{module}.py")}
    assert found <= stdlib | {"__future__"}, found - stdlib


def _part(module: str) -> str:
    """``LungSegLib.core.model`` -> ``core``; ``LungSegLib`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_library_parts_import_one_way():
    bad = []
    for path in _library_files():
        source = _part(_module_name(path))
        allowed = ALLOWED.get(source)
        if allowed is None:  # cli, batch, __main__, the package itself: the top of the graph
            continue
        for module, names, line in imports(path):
            if module.split(".")[0] != "LungSegLib":
                continue
            target = _part(module)
            # "from .. import __version__" / "from .. import defaults" name the base through the package
            targets = {target} if target != "__init__" else ({n for n in names} & BASE or {"__init__"})
            if not targets <= allowed | {"__init__"} or (target == "__init__" and not set(names) <= BASE
                                                             | {"__version__"}):
                bad.append(f"{path.relative_to(REPO)}:{line}: {source} imports {module} {names}")
    assert not bad, "\n".join(bad)


def test_nothing_but_the_entry_points_imports_the_cli():
    bad = [f"{p.relative_to(REPO)}:{line}" for p in _library_files()
           for m, _, line in imports(p)
           if _part(m) in ("cli", "batch") and m.startswith("LungSegLib")
           and _part(_module_name(p)) not in ("cli", "batch", "__main__")]
    assert not bad, bad


def test_slicer_module_imports_only_the_public_parts_of_the_library():
    files = sorted(SLICER_MODULE.rglob("*.py"))
    assert any(p.name == "logic.py" for p in files)
    bad = []
    for path in files:
        for module, names, line in imports(path):
            if module.split(".")[0] != "LungSegLib":
                continue
            if module.startswith(WORKER_PACKAGE):
                continue
            if module not in SLICER_MAY_IMPORT:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
                continue
            allowed = SLICER_MAY_IMPORT[module]
            if allowed is not None and names and not set(names) <= allowed:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {sorted(set(names) - allowed)} from {module}")
    assert not bad, "\n".join(bad)

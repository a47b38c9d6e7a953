"""Static checks of the Slicer module and its packaging: the panel's .ui against the widget code and the
parameter node, the CMake lists against the files the module needs, the extension metadata and the
ExtensionsIndex entry, the licence, the icon and the CI workflow. No Slicer needed."""
from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "LungSeg"
MODULE_PY = MODULE_DIR / "LungSeg.py"
UI_FILE = REPO / "Resources" / "UI" / "LungSeg.ui"
LIBRARY = REPO / "LungSegLib"

#: The Qt class each widget the panel's code touches must have (what the code calls on it).
WIDGET_CLASSES = {
    "inputSelector": "qMRMLNodeComboBox",
    "outputSelector": "qMRMLNodeComboBox",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "applyButton": "QPushButton",        # text switches Apply / Cancel
    "show3DCheckBox": "QCheckBox",       # toggled(bool)
    "progressBar": "QProgressBar",       # maximum, value
    "statusLabel": "QLabel",             # text
    "versionsLabel": "QLabel",           # text (TensorFlow/Keras versions)
    "reinstallButton": "QPushButton",    # clicked(bool)
    "exportDicomSegButton": "QPushButton",  # clicked(bool), enabled for CTs loaded from DICOM
    "logTextEdit": "QPlainTextEdit",     # appendPlainText, clear, toPlainText
    "measuresTableView": "qMRMLTableView",      # setMRMLTableNode
    "reviewTableWidget": "QTableWidget",        # rows of the review list, cellClicked(int,int)
    "nextReviewButton": "QPushButton",          # clicked(bool)
    "showConfidenceButton": "QPushButton",      # clicked(bool)
    "openSegmentEditorButton": "QPushButton",   # clicked(bool)
}
#: Widgets the parameterNodeWrapper can connect to each parameter type (Slicer's guiConnectors).
CONNECTABLE = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget", "QDoubleSpinBox"},
    "str": {"QComboBox", "ctkComboBox", "QLineEdit"},
    "node": {"qMRMLNodeComboBox"},
}


# --- helpers ------------------------------------------------------------------------------------------
def ui_widgets() -> Dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def ui_property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            child = list(prop)[0]
            if child.tag == "stringlist":
                return [s.text for s in child]
            return child.text
    return None


def module_tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"))


def parameter_fields() -> Dict[str, ast.expr]:
    cls = next(n for n in module_tree().body if isinstance(n, ast.ClassDef) and n.name == "LungSegParameterNode")
    return {n.target.id: n.annotation for n in cls.body if isinstance(n, ast.AnnAssign)}


def cmake_lists(path: Path) -> Dict[str, List[str]]:
    """``set(NAME a b c)`` blocks of a CMakeLists.txt, with ${MODULE_NAME} expanded."""
    text = re.sub(r"#.*", "", path.read_text(encoding="utf-8"))
    sets = {m.group(1): m.group(2).split() for m in re.finditer(r"set\((\w+)\s+([^)]*)\)", text)}
    name = sets.get("MODULE_NAME", [""])[0]
    return {k: [v.replace("${MODULE_NAME}", name) for v in vals] for k, vals in sets.items()}


def _module_file(module: str) -> Path:
    """``core.geometry`` -> LungSegLib/core/geometry.py; ``worker`` -> LungSegLib/worker/__init__.py."""
    path = LIBRARY.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def library_imports(module: str) -> Set[str]:
    """LungSegLib modules (dotted, relative to LungSegLib) that ``module`` imports anywhere, also inside
    functions; a package's import counts its ``__init__``."""
    file = _module_file(module)
    package = module.split(".") if file.name == "__init__.py" else module.split(".")[:-1]
    tree = ast.parse(file.read_text(encoding="utf-8"))
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
            elif node.module and node.module.split(".")[0] == "LungSegLib":
                base = []
            else:
                continue
            mod = node.module or ""
            if not node.level:
                mod = ".".join(mod.split(".")[1:])
            parts = base + ([p for p in mod.split(".") if p])
            for i in range(1, len(parts) + 1):  # parent packages run their __init__
                found.add(".".join(parts[:i]))
            found.update(".".join(parts + [a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("LungSegLib."):
                    parts = a.name.split(".")[1:]
                    found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if m and _module_file(m).is_file()}


def worker_closure() -> Set[str]:
    seen: Set[str] = set()
    todo = ["worker.run", "worker.process", "__init__"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(library_imports(module))
    return {str(_module_file(m).relative_to(REPO)) for m in seen}


# --- the panel ------------------------------------------------------------------------------------------
def test_every_widget_the_code_uses_is_in_the_ui_with_the_right_class():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_PY.read_text(encoding="utf-8")))
    assert used and used <= set(WIDGET_CLASSES), f"add {used - set(WIDGET_CLASSES)} to WIDGET_CLASSES"
    widgets = ui_widgets()
    for name in used:
        assert name in widgets, f"{name} is used by LungSeg.py but missing from {UI_FILE.name}"
        assert widgets[name].get("class") == WIDGET_CLASSES[name], name


def test_parameter_node_fields_and_ui_widgets_match():
    fields = parameter_fields()
    bound = {ui_property(w, "SlicerParameterName"): w for w in ui_widgets().values()
             if ui_property(w, "SlicerParameterName")}
    assert set(bound) == set(fields), "every parameter has exactly one widget and vice versa"
    for name, annotation in fields.items():
        widget = bound[name]
        source = ast.unparse(annotation)
        if source.startswith("vtkMRML"):
            assert widget.get("class") in CONNECTABLE["node"], name
            assert ui_property(widget, "nodeTypes") == [source], name
        else:
            base = re.match(r"(?:Annotated\[)?(\w+)", source).group(1)
            assert widget.get("class") in CONNECTABLE[base], f"{name}: {base} in a {widget.get('class')}"
            if widget.get("class") in ("QComboBox", "ctkComboBox"):
                assert "Choice(" in source, f"{name}: a combo box needs a Choice annotation"
    output = bound["outputSegmentation"]
    assert ui_property(output, "noneEnabled") == "true"
    assert ui_property(output, "noneDisplay") == "Create new segmentation"
    assert ui_property(bound["inputVolume"], "showChildNodeTypes") == "false"  # no labelmaps as input


def test_ui_declares_its_custom_widgets_and_scene_connections():
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml_widgets = {n for n, w in ui_widgets().items() if w.get("class").startswith("qMRML") and n != "LungSeg"}
    assert mrml_widgets <= receivers


def test_module_file_has_slicer_classes_and_keeps_qt_out_of_module_scope():
    tree = module_tree()
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["LungSeg"] == ["ScriptedLoadableModule"]
    assert classes["LungSegWidget"][0] == "ScriptedLoadableModuleWidget"
    assert classes["LungSegLogic"] == ["ScriptedLoadableModuleLogic", "LungSegLogicLib.LungSegLogic"]
    assert classes["LungSegTest"] == ["ScriptedLoadableModuleTest"]
    top_imports = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert not top_imports & {"qt", "ctk"}  # imported inside functions only


@pytest.mark.parametrize("path", [MODULE_PY, *sorted((MODULE_DIR / "LungSegLogicLib").glob("*.py")),
                                  *sorted((LIBRARY / "worker").glob("*.py"))], ids=lambda p: p.name)
def test_python_39_syntax_and_no_gui_imports_in_the_logic(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
    if path != MODULE_PY:
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"qt", "ctk", "slicer.app", "slicer.ScriptedLoadableModule"}, path.name
        assert "slicer.app" not in path.read_text(encoding="utf-8")


# --- CMake ------------------------------------------------------------------------------------------------
def test_module_cmake_lists_every_module_script():
    lists = cmake_lists(MODULE_DIR / "CMakeLists.txt")
    on_disk = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert set(lists["MODULE_PYTHON_SCRIPTS"]) == on_disk
    assert "slicerMacroBuildScriptedModule" in (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")


def test_module_cmake_installs_every_library_module_the_worker_imports():
    listed = cmake_lists(MODULE_DIR / "CMakeLists.txt")["LUNGSEG_LIBRARY_SCRIPTS"]
    for file in listed:
        assert (REPO / file).is_file(), f"{file} is listed but does not exist"
    missing = worker_closure() - set(listed)
    assert not missing, f"the worker imports {sorted(missing)}: add them to LUNGSEG_LIBRARY_SCRIPTS"


def test_module_cmake_installs_every_resource_the_module_uses():
    listed = set(cmake_lists(MODULE_DIR / "CMakeLists.txt")["LUNGSEG_RESOURCES"])
    for file in listed:
        assert (REPO / file).is_file(), f"{file} is listed but does not exist"
    from LungSegLib.core.model import BUNDLED_MODEL

    needed = {f"Resources/{p}" for p in re.findall(r'resourcePath\("([^"]+)"\)', MODULE_PY.read_text())}
    needed |= {str(p.relative_to(REPO)) for p in (REPO / "Resources" / "Models").iterdir() if p.is_file()}
    needed |= {f"Resources/Models/{BUNDLED_MODEL}", f"Resources/Models/{Path(BUNDLED_MODEL).stem}.json",
               "Resources/requirements.txt", "Resources/Icons/LungSeg.png", "Resources/UI/LungSeg.ui"}
    assert not needed - listed, f"not installed: {sorted(needed - listed)}"


def test_library_layout_matches_the_installed_layout(monkeypatch):
    """Installed beside LungSeg.py, LungSegLib finds its model in ../Resources/Models as in the repository."""
    from LungSegLib.core import model

    monkeypatch.delenv("LUNGSEG_MODELS_DIR", raising=False)
    assert model.models_dir() == REPO / "Resources" / "Models"
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    # copied beside LungSeg.py in the build tree's module folder, which the module macro installs whole
    assert re.search(r"foreach\(file \$\{LUNGSEG_LIBRARY_SCRIPTS\} \$\{LUNGSEG_RESOURCES\}\)\s*configure_file\("
                     r"\$\{LUNGSEG_SOURCE_ROOT\}/\$\{file\} \$\{CMAKE_BINARY_DIR\}/\$\{Slicer_QTSCRIPTEDMODULES_LIB_DIR\}"
                     r"/\$\{file\} COPYONLY\)", text)


def test_module_cmake_follows_the_scripted_module_template():
    """What the ExtensionsIndex's "Package Python Extension" check needs (its stub ctkMacroCompilePythonScript
    joins SCRIPTS to the module folder) and what keeps each file installed once: relative SCRIPTS and
    RESOURCES inside the module folder, and no install() of files that the module macro's install of the
    whole build module folder already covers."""
    text = re.sub(r"#.*", "", (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    lists = cmake_lists(MODULE_DIR / "CMakeLists.txt")
    for file in lists["MODULE_PYTHON_SCRIPTS"] + lists.get("MODULE_PYTHON_RESOURCES", []):
        assert not file.startswith(("/", "$", "..")) and (MODULE_DIR / file).is_file(), file
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)\s*\n", text, re.S).group(1).split()
    assert call[call.index("SCRIPTS") + 1] == "${MODULE_PYTHON_SCRIPTS}" and call[call.index("SCRIPTS") + 2] == "RESOURCES"
    assert call[call.index("RESOURCES") + 1] == "${MODULE_PYTHON_RESOURCES}"
    assert "install(" not in text  # the macro installs <build>/qt-scripted-modules/ once, as a directory
    for file in lists["LUNGSEG_LIBRARY_SCRIPTS"] + lists["LUNGSEG_RESOURCES"]:
        assert not file.startswith(("/", "$")) and not file.startswith("LungSeg/"), file


def test_extension_cmake_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert meta.get(key), key
    assert meta["EXTENSION_CATEGORY"] == "Segmentation" and meta["EXTENSION_DEPENDS"] == "NA"
    assert meta["EXTENSION_ICONURL"].endswith("Resources/Icons/LungSeg.png")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(r"/SlicerLungSeg[/#]", meta[key]) and "/LungSeg/LungSeg" not in meta[key], key
    # the weights' licence is disclosed in the Extensions Manager text
    assert "non-commercial" in meta["EXTENSION_DESCRIPTION"] and "CC BY-NC 3.0" in meta["EXTENSION_DESCRIPTION"]
    assert "MODEL_CARD.md" in meta["EXTENSION_DESCRIPTION"]
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(LungSeg)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text
    assert re.search(r"^project\(LungSeg\)", text, re.M)


# --- ExtensionsIndex entry, licence, icon, requirements, CI ----------------------------------------------
#: slicer-extension-catalog-entry-schema v1.0.1 / v1.0.2 (Slicer/Schemas): required and allowed keys.
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
SCHEMA_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                     "dicom_support_rule", "build_subdirectory", "enabled", "tier"}


def test_extensions_index_entry_validates_against_the_schema_fields():
    entry = json.loads((REPO / "LungSeg.json").read_text(encoding="utf-8"))
    assert SCHEMA_REQUIRED <= set(entry) <= SCHEMA_PROPERTIES
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                        r"slicer-extension-catalog-entry-schema-v1\.0\.[0-9]+\.json#", entry["$schema"])
    assert entry["category"] == "Segmentation"
    assert isinstance(entry["scm_url"], str) and entry["scm_url"].startswith("https://")
    # the index requires the repository name to start with "Slicer" (check_description_files.py)
    assert re.fullmatch(r"https://github\.com/[\w.-]+/SlicerLungSeg\.git", entry["scm_url"])
    assert isinstance(entry.get("scm_revision", ""), str)
    assert entry.get("scm_type", "git") in ("git", "local")
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))
    assert isinstance(entry.get("build_subdirectory", "."), str)
    assert isinstance(entry.get("enabled", True), bool)
    assert isinstance(entry.get("tier", 1), int) and 1 <= entry.get("tier", 1) <= 5


def test_license_is_the_full_apache_2_text():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    for section in ("1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                    "4. Redistribution.", "9. Accepting Warranty or Additional Liability.",
                    "END OF TERMS AND CONDITIONS"):
        assert section in text, section
    assert len(text.splitlines()) > 170


def test_icon_is_a_128px_png():
    from PIL import Image

    with Image.open(REPO / "Resources" / "Icons" / "LungSeg.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def test_requirements_are_ranges_not_pins():
    from packaging.requirements import Requirement

    lines = [line.split("#")[0].strip() for line in (REPO / "Resources" / "requirements.txt").read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line]
    tf = [r for r in reqs if r.name.startswith("tensorflow")]
    assert {r.name for r in tf} == {"tensorflow-cpu", "tensorflow"}
    for r in reqs:
        ops = {s.operator for s in r.specifier}
        assert "==" not in ops and ">=" in ops, str(r)
    for r in tf:
        assert "<" in {s.operator for s in r.specifier}
    # exactly one TensorFlow build applies on each platform
    for env in ({"sys_platform": "linux", "platform_machine": "x86_64"},
                {"sys_platform": "win32", "platform_machine": "AMD64"},
                {"sys_platform": "darwin", "platform_machine": "arm64"},
                {"sys_platform": "linux", "platform_machine": "aarch64"}):
        assert sum(r.marker.evaluate(env) for r in tf) == 1, env


def test_ci_workflow_runs_the_module_test_in_real_slicer():
    text = (REPO / ".github" / "workflows" / "slicer-test.yml").read_text(encoding="utf-8")
    assert re.search(r"^on:", text, re.M) and re.search(r"^jobs:", text, re.M)
    assert "uses: actions/checkout@" in text and "download.slicer.org" in text
    assert "PythonSlicer -m pip install -r Resources/requirements.txt" in text
    assert "xvfb-run" in text and "--testing" in text
    # Slicer builds its QApplication before it parses --version: every start of the application needs a display
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.search(r"\./slicer/Slicer\s", line)]
    assert starts
    for i in starts:
        assert "xvfb-run" in lines[i] or (lines[i - 1].rstrip().endswith("\\") and "xvfb-run" in lines[i - 1]), lines[i]
    versions = re.findall(r"^\s+- \{ name: \"([^\"]+)\"", text, re.M)
    assert versions[:1] == ["5.8"] and "stable" in versions, versions
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "Tested in 3D Slicer 5.8" in readme and "3d-slicer-extension" in readme
    assert '--additional-module-paths "$GITHUB_WORKSPACE/LungSeg"' in text
    assert "slicer.testing.runUnitTest(['$GITHUB_WORKSPACE/LungSeg'], 'LungSeg')" in text
    assert "\t" not in text  # YAML forbids tabs

"""Static checks of what LungSeg.py promises a Slicer user (no Slicer needed): the weights' licence in the
module's help and acknowledgement, the Sample Data registration, panel-worded errors, and that LungSegTest
(the test that runs in a real Slicer) exercises the new features."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_PY = REPO / "LungSeg" / "LungSeg.py"
TEXT = MODULE_PY.read_text(encoding="utf-8")
TREE = ast.parse(TEXT)


def _class(name: str) -> ast.ClassDef:
    return next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == name)


def _method(cls: str, name: str) -> str:
    node = next(n for n in _class(cls).body if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.get_source_segment(TEXT, node)


def test_help_and_acknowledgement_disclose_the_weights_licence_with_the_model_card():
    init = _method("LungSeg", "__init__")
    help_text = re.search(r"helpText = _\(\"\"\"(.*?)\"\"\"\)", init, re.S).group(1)
    ack = re.search(r"acknowledgementText = _\(\"\"\"(.*?)\"\"\"\)", init, re.S).group(1)
    for text in (help_text, ack):
        assert "non-commercial" in text and "{url}" in text
    assert "CC BY-NC 3.0" in help_text and "three" in help_text and "NSCLC-Radiomics" in help_text
    assert init.count("format(url=LungSegLogicLib.license.MODEL_CARD_URL)") == 2


def test_extension_catalog_texts_use_the_renamed_repository_and_the_licence():
    entry = json.loads((REPO / "LungSeg.json").read_text(encoding="utf-8"))
    assert entry["scm_url"].endswith("/SlicerLungSeg.git")
    from importlib import util

    spec = util.spec_from_file_location("license", REPO / "LungSeg" / "LungSegLogicLib" / "license.py")
    text = (REPO / "LungSeg" / "LungSegLogicLib" / "license.py").read_text(encoding="utf-8")
    url = re.search(r'MODEL_CARD_URL = "([^"]+)"', text).group(1)
    assert spec is not None and "/SlicerLungSeg/blob/main/Resources/Models/MODEL_CARD.md" in url
    assert (REPO / "Resources" / "Models" / "MODEL_CARD.md").is_file()
    assert url in (REPO / "CMakeLists.txt").read_text(encoding="utf-8")


def test_sample_ct_is_registered_with_the_sample_data_module_at_startup():
    init = _method("LungSeg", "__init__")
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in init
    register = ast.get_source_segment(TEXT, next(n for n in TREE.body if isinstance(n, ast.FunctionDef)
                                                 and n.name == "registerSampleData"))
    assert "SampleData.SampleDataLogic.registerCustomSampleDataSource(" in register
    assert 'category="LungSeg"' in register and "qt.QUrl.fromLocalFile(path)" in register
    sample = re.search(r'SAMPLE_FILE = "([^"]+)"', TEXT).group(1)
    assert (REPO / "Resources" / sample).is_file()


def test_panel_shows_errors_in_panel_words_and_asks_for_the_licence_before_installing():
    timer = _method("LungSegWidget", "onTimer")
    assert "panelMessage(exc)" in timer and "format(message=exc)" not in timer.split("except Exception")[0]
    apply = _method("LungSegWidget", "onApplyButton")
    assert apply.index("ensureModelLicenseAccepted()") < apply.index("ensureDependencies()")
    assert "checkHU=not p.allowNonHU" in apply and "acceptModelLicense=True" in apply
    license_ = _method("LungSegWidget", "ensureModelLicenseAccepted")
    assert "SETTINGS_KEY" in license_ and "settings.setValue(SETTINGS_KEY, fingerprint)" in license_


def test_module_test_in_slicer_covers_the_new_features():
    run = _method("LungSegTest", "runTest")
    for test in ("test_sample_data_is_registered", "test_panel_cancel_stops_the_worker_at_once",
                 "test_non_hu_input_is_refused_in_panel_words", "test_logic_segments_sample_ct", "test_panel_apply"):
        assert f"self.{test}()" in run, test
        _method("LungSegTest", test)  # exists
    assert "acceptModelLicense=True" in _method("LungSegTest", "test_logic_segments_sample_ct")

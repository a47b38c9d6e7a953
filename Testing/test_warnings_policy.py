"""The test suite's warning policy (pyproject.toml [tool.pytest.ini_options] filterwarnings): a warning
raised from our own code fails the test; the known third-party ones are silenced."""
from __future__ import annotations

import types
import warnings

import pytest


def _module(name: str, category: str) -> types.ModuleType:
    """A module called ``name`` whose ``warn()`` raises a ``category`` warning from inside it."""
    module = types.ModuleType(name)
    exec(f"import warnings\ndef warn():\n    warnings.warn('probe', {category})\n", module.__dict__)
    return module


@pytest.mark.parametrize("name", ["LungSegLib.core.probe", "LungSeg.LungSegLogicLib.probe"])
@pytest.mark.parametrize("category", ["UserWarning", "DeprecationWarning", "RuntimeWarning"])
def test_a_warning_from_our_code_fails(name, category):
    with pytest.raises(Warning, match="probe"):
        _module(name, category).warn()


def test_known_third_party_deprecations_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        # catch_warnings(record=True) keeps the active filters (pytest's, from pyproject.toml)
        _module("keras.src.backend.tensorflow.probe", "DeprecationWarning").warn()
        warnings.warn("__array__ implementation doesn't accept a copy keyword, so passing copy=False failed.",
                      DeprecationWarning)
    assert caught == []

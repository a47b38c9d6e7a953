"""The bundled weights' licence: what the module says about it and the explicit acceptance it needs.

The LungSeg code is Apache-2.0, but the bundled network was trained on three patients, two of them from
NSCLC-Radiomics (CC BY-NC 3.0): the weights are for non-commercial use. A model's card states such a
restriction in its ``licence_note``; running a model whose card has one needs an explicit acceptance
(``acceptModelLicense=True`` in scripts; the panel asks once and remembers the answer in the
application settings). Standard library only (the module must load before TensorFlow is installed).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from LungSegLib.errors import LungSegError

#: The repository's model card (what the panel and the extension description link to).
MODEL_CARD_URL = "https://github.com/LungSeg/SlicerLungSeg/blob/main/Resources/Models/MODEL_CARD.md"
#: The bundled model's card, in ``Resources/Models`` (``LungSegLib.core.model.BUNDLED_MODEL`` + ``.json``).
BUNDLED_CARD = "lungseg_unet_3class.json"
#: One sentence for help texts and the extension description.
MODEL_LICENSE_SUMMARY = ("The bundled model weights are for non-commercial use only: they were trained on three "
                         "patients, two of them from NSCLC-Radiomics (CC BY-NC 3.0). The LungSeg code is "
                         "Apache-2.0. Model card: " + MODEL_CARD_URL)
#: Application-settings key under which the panel remembers the accepted licence (its fingerprint).
SETTINGS_KEY = "LungSeg/AcceptedModelLicense"


class ModelLicenseNotAccepted(LungSegError):
    """The model's licence restricts its use and was not accepted (``acceptModelLicense=True``)."""

    exit_code = 5
    code = "license"

    def __init__(self, note: str):
        self.reason = (f"The model's weights have a restricted licence: {note} Model card: {MODEL_CARD_URL}")
        super().__init__(self.reason + " To use them, accept the licence: call segment(..., "
                         "acceptModelLicense=True), or click Apply in the LungSeg panel and accept.")


def models_dir(library_root: Path) -> Path:
    """Where the bundled model lies (``LUNGSEG_MODELS_DIR`` overrides it, as in ``LungSegLib.core.model``)."""
    override = os.environ.get("LUNGSEG_MODELS_DIR")
    return Path(override) if override else Path(library_root) / "Resources" / "Models"


def card_for(modelPath: Optional[os.PathLike], library_root: Path) -> Path:
    """The JSON card of ``modelPath`` (``<model>.json``), or of the bundled model when None."""
    if modelPath is None:
        return models_dir(library_root) / BUNDLED_CARD
    return Path(modelPath).with_suffix(".json")


def licenseNote(modelPath: Optional[os.PathLike], library_root: Path) -> Optional[str]:
    """The card's ``licence_note`` (a use restriction), or None when the card states none or is
    missing (the worker reports a missing model itself)."""
    try:
        card = json.loads(card_for(modelPath, library_root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    note = card.get("licence_note") if isinstance(card, dict) else None
    return str(note) if note else None


def licenseFingerprint(note: str) -> str:
    """A short stable id of a licence text: a changed licence is asked for again."""
    return hashlib.sha256(note.encode("utf-8")).hexdigest()[:16]


def requireAccepted(modelPath: Optional[os.PathLike], library_root: Path, accepted: bool) -> None:
    """Raise :class:`ModelLicenseNotAccepted` if the model has a licence note and it was not accepted."""
    note = licenseNote(modelPath, library_root)
    if note is not None and not accepted:
        raise ModelLicenseNotAccepted(note)

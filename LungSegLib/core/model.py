"""Finding, verifying and loading LungSeg models (``.keras`` + a JSON model card)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import ModelError
from .preprocess import ModelGridSpec

#: Name of the bundled model in ``Resources/Models`` (its card is the same name with ``.json``).
BUNDLED_MODEL = "lungseg_unet_3class.keras"
CLASSES_3 = ("background", "right lung", "left lung")


def models_dir() -> Path:
    """Where the bundled models live: ``$LUNGSEG_MODELS_DIR`` or ``Resources/Models`` beside the
    package (the repository, an editable install and Slicer's ``qt-scripted-modules`` all share it)."""
    env = os.environ.get("LUNGSEG_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


@dataclass
class LoadedModel:
    """A Keras model with what inference needs to know about it (from its card)."""

    keras_model: Any
    path: Path
    spec: ModelGridSpec
    classes: Tuple[str, ...]
    card: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes) if len(self.classes) > 2 else 1

    @property
    def is_placeholder(self) -> bool:
        return bool(self.card.get("placeholder", False))


def read_card(model_path: Path) -> Dict[str, Any]:
    path = card_path(model_path)
    if not path.is_file():
        raise ModelError(f"No model card {path.name} next to {model_path}: a LungSeg model needs one "
                         "(written by `lungseg train`) giving its checksum and input grid.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Model card {path} is unreadable: {exc}") from exc


def spec_from_card(card: Dict[str, Any]) -> ModelGridSpec:
    grid = card.get("input", {})
    return ModelGridSpec(size=int(grid.get("size", 256)), pixel_mm=float(grid.get("pixel_mm", 1.5)),
                         hu_window=tuple(float(v) for v in grid.get("hu_window", (-1024.0, 600.0))))


def write_card(model_path: Path, card: Dict[str, Any]) -> Path:
    """Write ``card`` (with this file's SHA-256 filled in) next to ``model_path``, atomically."""
    card = dict(card, file=Path(model_path).name, sha256=sha256_of(Path(model_path)))
    path = card_path(model_path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_model(path: Optional[os.PathLike] = None, verify: bool = True) -> LoadedModel:
    """Load a model (default: the bundled one) in Keras safe mode after checking its SHA-256.

    Raises :class:`ModelError` when the file or its card is missing, the checksum differs (a
    truncated download or an edited file) or Keras cannot read it.
    """
    model_path = Path(path) if path else models_dir() / BUNDLED_MODEL
    if not model_path.is_file():
        raise ModelError(f"Model file not found: {model_path}. Reinstall LungSeg or pass --model PATH.")
    if model_path.suffix != ".keras":
        raise ModelError(f"{model_path.name}: LungSeg loads Keras v3 '.keras' files only.")
    card = read_card(model_path)
    if verify:
        actual = sha256_of(model_path)
        if card.get("sha256") != actual:
            raise ModelError(f"Checksum mismatch for {model_path.name}: the card says "
                             f"{card.get('sha256')}, the file is {actual}. The file is corrupted or "
                             "was changed; reinstall it (or retrain and let `lungseg train` write the card).")
    import keras

    try:
        keras_model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad file
        raise ModelError(f"Keras could not load {model_path}: {exc}") from exc
    classes = tuple(card.get("classes", CLASSES_3))
    out_channels = keras_model.output_shape[-1]
    expected = len(classes) if len(classes) > 2 else 1
    if out_channels != expected:
        raise ModelError(f"{model_path.name} has {out_channels} output channels but its card lists "
                         f"classes {classes}.")
    return LoadedModel(keras_model, model_path, spec_from_card(card), classes, card)

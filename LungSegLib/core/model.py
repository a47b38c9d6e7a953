"""Finding, verifying and loading LungSeg models: exported weights (``.npz``) or a ``.keras`` checkpoint,
each with its JSON model card.

The bundled model is exported weights (:mod:`.weights`): the network is rebuilt from the card's
architecture in code and the arrays are assigned by name, so no Keras version's serialisation is
involved. ``.keras`` files (what ``lungseg train`` checkpoints) still load, in Keras safe mode.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..defaults import GRID_PIXEL_MM, GRID_SIZE, HU_WINDOW, NOISE_TARGET_HU, NOISE_TRIGGER_HU
from ..errors import ModelError
from ..labels import BINARY_CLASS_NAMES, CLASS_NAMES, check_classes
from .atomic import atomic_write_text
from .preprocess import ModelGridSpec

#: Name of the bundled model in ``Resources/Models`` (its card is the same name with ``.json``).
BUNDLED_MODEL = "lungseg_unet_3class.npz"
#: Where a wheel (``pip install .``) puts the bundled model: package data inside ``LungSegLib``.
PACKAGED_MODELS = "bundled_models"


def models_dir() -> Path:
    """Where the bundled models live: ``$LUNGSEG_MODELS_DIR``; else ``LungSegLib/bundled_models`` when
    installed from a wheel (package data, see pyproject.toml); else ``Resources/Models`` beside the
    package (the repository, an editable install and Slicer's ``qt-scripted-modules`` all share it)."""
    env = os.environ.get("LUNGSEG_MODELS_DIR")
    if env:
        return Path(env)
    library = Path(__file__).resolve().parents[1]
    packaged = library / PACKAGED_MODELS
    if (packaged / BUNDLED_MODEL).is_file():
        return packaged
    return library.parent / "Resources" / "Models"


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
        """Output channels: 3 (background, right, left) or 1 for a binary lung model."""
        return 1 if len(self.classes) == len(BINARY_CLASS_NAMES) else len(self.classes)


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
    """The model's input grid from its card's ``input`` section (:mod:`LungSegLib.defaults` where the
    card does not say)."""
    grid = card.get("input", {})
    trigger = float(grid.get("noise_trigger_hu", NOISE_TRIGGER_HU))
    target = float(grid.get("noise_target_hu", NOISE_TARGET_HU))
    if trigger > 0 and not 0 < target < trigger:
        raise ModelError(f"The model card's input.noise_target_hu ({target}) must be above 0 and below "
                         f"input.noise_trigger_hu ({trigger}); fix the card (or set noise_trigger_hu to 0 to "
                         "turn noise smoothing off).")
    return ModelGridSpec(size=int(grid.get("size", GRID_SIZE)), pixel_mm=float(grid.get("pixel_mm", GRID_PIXEL_MM)),
                         hu_window=tuple(float(v) for v in grid.get("hu_window", HU_WINDOW)),
                         context_mm=float(grid.get("context_mm", 0.0)),
                         noise_trigger_hu=trigger, noise_target_hu=target)


def classes_from_card(card: Dict[str, Any], model_name: str, out_channels: int) -> Tuple[str, ...]:
    """The card's ``classes`` (default: LungSeg's 3-class label set), checked against the label table
    (:func:`LungSegLib.labels.check_classes`) and the network's ``out_channels``; :class:`ModelError`
    saying which does not fit."""
    classes = tuple(str(c).lower() for c in card.get("classes", CLASS_NAMES))
    try:
        check_classes(classes)
    except ValueError as exc:
        raise ModelError(f"{model_name}: {exc}. LungSeg can only use a model whose card names these "
                         "classes in this order.") from None
    expected = 1 if classes == BINARY_CLASS_NAMES else len(classes)
    if out_channels != expected:
        raise ModelError(f"{model_name} has {out_channels} output channels but its card lists the classes "
                         f"{list(classes)}, which need {expected}: the card does not belong to this model.")
    return classes


def write_card(model_path: Path, card: Dict[str, Any]) -> Path:
    """Write ``card`` (with this file's SHA-256 filled in) next to ``model_path``, atomically."""
    card = dict(card, file=Path(model_path).name, sha256=sha256_of(Path(model_path)))
    return atomic_write_text(card_path(model_path), json.dumps(card, indent=2) + "\n")


def _keras_file_model(model_path: Path) -> Any:
    """A ``.keras`` checkpoint, deserialised by Keras in safe mode (no code from the file runs)."""
    import keras

    from .unet import position_layer

    position_layer()  # LungSeg's own layer, registered so that safe mode finds it by name
    try:
        return keras.models.load_model(model_path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad file
        raise ModelError(f"Keras could not load {model_path}: {exc}. A .keras file saved by a newer Keras "
                         "may not load in an older one: export its weights with `lungseg export-weights` "
                         "and load the .npz instead.") from exc


def _weights_file_model(model_path: Path, card: Dict[str, Any]) -> Any:
    """The network the card describes, built in code, with the file's named arrays assigned."""
    from .unet import UNetArchitecture
    from .weights import WEIGHTS_FORMAT, assign_weights, read_weights

    if card.get("weights_format") != WEIGHTS_FORMAT:
        raise ModelError(f"The card of {model_path.name} gives weights_format {card.get('weights_format')!r}, "
                         f"not {WEIGHTS_FORMAT!r}: it was not written by `lungseg export-weights`.")
    architecture = UNetArchitecture.from_card(card)
    arrays = read_weights(model_path)  # before building: a bad file fails without starting TensorFlow
    keras_model = architecture.build(name=str(card.get("name") or model_path.stem))
    assign_weights(keras_model, arrays, model_path.name)
    return keras_model


def load_model(path: Optional[os.PathLike] = None, verify: bool = True) -> LoadedModel:
    """Load a model (default: the bundled one) after checking its SHA-256 against its card.

    ``.npz`` exported weights: the network is built from the card's architecture and every named array
    assigned (names and shapes must match exactly). ``.keras``: loaded by Keras in safe mode.
    Raises :class:`ModelError` when the file or its card is missing, the checksum differs (a
    truncated download or an edited file), or the file does not fit its card.
    """
    from .weights import WEIGHTS_SUFFIX

    model_path = Path(path) if path else models_dir() / BUNDLED_MODEL
    if not model_path.is_file():
        raise ModelError(f"Model file not found: {model_path}. Reinstall LungSeg or pass --model PATH.")
    if model_path.suffix not in (".keras", WEIGHTS_SUFFIX):
        raise ModelError(f"{model_path.name}: LungSeg loads exported weights ('{WEIGHTS_SUFFIX}', from "
                         "`lungseg export-weights` or `lungseg train`) or Keras v3 '.keras' files, each with "
                         "its .json card.")
    card = read_card(model_path)
    if verify:
        actual = sha256_of(model_path)
        if card.get("sha256") != actual:
            raise ModelError(f"Checksum mismatch for {model_path.name}: the card says "
                             f"{card.get('sha256')}, the file is {actual}. The file is corrupted or "
                             "was changed; reinstall it (or retrain and let `lungseg train` write the card).")
    if model_path.suffix == WEIGHTS_SUFFIX:
        keras_model = _weights_file_model(model_path, card)
    else:
        keras_model = _keras_file_model(model_path)
    classes = classes_from_card(card, model_path.name, int(keras_model.output_shape[-1]))
    spec = spec_from_card(card)
    if int(keras_model.input_shape[-1]) != spec.channels:
        raise ModelError(f"{model_path.name} takes {keras_model.input_shape[-1]} input channel(s) but its card's "
                         f"input.context_mm ({spec.context_mm}) means {spec.channels}: the card does not belong "
                         "to this model.")
    return LoadedModel(keras_model, model_path, spec, classes, card)

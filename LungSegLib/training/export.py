"""Exporting a trained model as the shipped weights format (``lungseg export-weights``, and
``lungseg train`` for its best epoch).

A ``.keras`` checkpoint can only be read by a Keras that understands every option the saving Keras
wrote; the exported ``.npz`` (:mod:`LungSegLib.core.weights`) holds only named arrays, and its card the
architecture to rebuild the network in code, so it loads with any supported Keras.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..core.model import card_path, load_model, read_card, write_card
from ..core.unet import UNetArchitecture, count_flops
from ..core.weights import WEIGHTS_FORMAT, WEIGHTS_SUFFIX, matched_arrays, read_weights, write_weights
from ..errors import ModelError, OutputError


def export_card(card: Dict[str, Any], architecture: UNetArchitecture, reference_model: Any,
                source: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The card of exported weights: ``card`` with the full architecture and the weights format.

    ``source`` (file name, SHA-256, Keras version) records what the weights were exported from.
    """
    out = dict(card)
    out["architecture"] = dict(card.get("architecture") or {}, **architecture.to_card(),
                               parameters=int(reference_model.count_params()),
                               gflop_per_slice=round(count_flops(reference_model) / 1e9, 3))
    out["weights_format"] = WEIGHTS_FORMAT
    if source:
        out["exported_from"] = source
    for key in ("file", "sha256"):  # write_card fills them in for the new file
        out.pop(key, None)
    return out


def export_model(keras_model: Any, card: Dict[str, Any], out: os.PathLike,
                 source: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``keras_model``'s weights to ``out`` (``.npz``) and its card beside it; returns ``out``.

    The network is rebuilt from ``card`` (older cards without every architecture field are completed
    from their input size and classes) and must match ``keras_model`` layer by layer. Overwrites
    ``out`` and its card: callers check first.
    """
    out = Path(out)
    if out.suffix != WEIGHTS_SUFFIX:
        raise OutputError(f"{out.name}: exported weights are written as '{WEIGHTS_SUFFIX}' files.")
    architecture = UNetArchitecture.from_card(card, complete=False)
    reference = architecture.build()
    arrays = matched_arrays(keras_model, reference)
    write_weights(out, arrays)
    write_card(out, export_card(card, architecture, reference, source))
    return out


def export_weights(model_path: os.PathLike, out: os.PathLike, overwrite: bool = False) -> Path:
    """Convert a ``.keras`` model with its card (from ``lungseg train``) to ``out`` (``.npz``) + card.

    Loads the checkpoint in Keras safe mode after its checksum, writes the weights, then loads the export
    back as inference would and checks every array is bit-identical. Never overwrites an existing file
    unless ``overwrite``, and never the source's own card.
    """
    model_path, out = Path(model_path), Path(out)
    if model_path.suffix != ".keras":
        raise ModelError(f"{model_path.name}: export-weights converts a '.keras' model (with its .json card).")
    if out.suffix != WEIGHTS_SUFFIX:
        raise OutputError(f"{out}: the exported weights file must end in '{WEIGHTS_SUFFIX}'.")
    if card_path(out).resolve() == card_path(model_path).resolve():
        raise OutputError(f"{out.name} would share its card {card_path(out).name} with {model_path.name}; "
                          f"choose another name (e.g. {model_path.stem}.weights{WEIGHTS_SUFFIX}).")
    existing = [p for p in (out, card_path(out)) if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{', '.join(str(p) for p in existing)} already exist(s); choose another output or "
                          "pass --overwrite.")
    if not out.parent.is_dir():
        raise OutputError(f"The output folder {out.parent} does not exist.")
    loaded = load_model(model_path)  # checksum, then Keras safe mode
    card = read_card(model_path)
    source = {"file": model_path.name, "sha256": card.get("sha256"), "keras_version": card.get("keras_version")}
    export_model(loaded.keras_model, card, out, source)
    check = read_weights(out)
    exported = load_model(out)
    original = [np.asarray(w) for w in loaded.keras_model.get_weights()]
    rebuilt = [np.asarray(w) for w in exported.keras_model.get_weights()]
    if len(original) != len(rebuilt) or len(check) != len(rebuilt) or not all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(original, rebuilt)):
        for path in (out, card_path(out)):
            path.unlink(missing_ok=True)
        raise ModelError(f"The exported {out.name} does not reproduce {model_path.name}'s weights exactly.")
    return out

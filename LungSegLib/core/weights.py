"""The shipped weights format: named float arrays in a NumPy ``.npz`` file, nothing else.

Why this format: a ``.keras`` file stores each layer's *configuration* as one Keras version serialises it,
and an older Keras refuses options a newer one wrote (Keras 3.10 rejects the ``HeNormal(input_axes=...)``
of Keras 3.15), so the bundled model could not load in 3D Slicer 5.8. Here the network is rebuilt in code
(:class:`LungSegLib.core.unet.UNetArchitecture` from the model card) and only the arrays are stored:

* ``.npz`` is a zip of ``.npy`` arrays that NumPy -- already a dependency -- reads without Keras,
  TensorFlow or an extra package (safetensors would add one); :func:`read_weights` loads it with
  ``allow_pickle=False``, so a file can hold numbers only, never code or objects;
* each array is keyed ``"<layer name>/<weight name>"`` (``"enc0_conv0/kernel"``,
  ``"enc0_bn0/moving_mean"``), the fixed names of :func:`LungSegLib.core.unet.build_unet`, so loading
  assigns by name and checks every name and shape instead of trusting an order;
* :func:`write_weights` writes the zip members in key order with a fixed timestamp, so exporting the same
  weights twice gives the same bytes and the same SHA-256 in the card.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np

from ..errors import ModelError
from .atomic import atomic_path

#: The card's ``weights_format`` for files written by :func:`write_weights`.
WEIGHTS_FORMAT = "lungseg-named-arrays-npz/1"
#: The suffix of weights files (their card is the same path with ``.json``).
WEIGHTS_SUFFIX = ".npz"
#: A fixed zip timestamp (the zip format's earliest date) so equal weights give equal files.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def weight_key(layer: Any, variable: Any) -> str:
    """``"<layer name>/<variable name>"``, e.g. ``"dec1_bn0/moving_variance"``."""
    return f"{layer.name}/{variable.name.split('/')[-1]}"


def model_variables(model: Any) -> Dict[str, Any]:
    """``{key: variable}`` of every weight of a Keras model (trainable and not), in layer order."""
    variables: Dict[str, Any] = {}
    for layer in model.layers:
        for variable in layer.weights:
            key = weight_key(layer, variable)
            if key in variables:
                raise ModelError(f"The network has two weights named {key}: it cannot be saved by name.")
            variables[key] = variable
    return variables


def model_arrays(model: Any) -> Dict[str, np.ndarray]:
    """``{key: float array}`` of a Keras model's weights (see :func:`weight_key`)."""
    return {key: np.asarray(variable.numpy()) for key, variable in model_variables(model).items()}


def write_weights(path: os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an ``.npz`` (deterministic bytes), atomically; returns the path.

    Overwrites ``path`` if it exists: callers decide whether that is allowed.
    """
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            array = np.ascontiguousarray(arrays[key])
            if array.dtype.kind != "f":
                raise ModelError(f"Weight {key} is {array.dtype}, not a float array.")
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return path


def read_weights(path: os.PathLike) -> Dict[str, np.ndarray]:
    """The named arrays of a weights file, read without pickle; :class:`ModelError` if it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ModelError(f"{path.name} is a single array, not a LungSeg weights file (.npz of named "
                                 "arrays).")
            arrays = {key: archive[key] for key in archive.files}
    except ModelError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        # ValueError also covers pickled object arrays, which allow_pickle=False refuses
        raise ModelError(f"{path.name} is not a readable LungSeg weights file (.npz of named float arrays): "
                         f"{exc}") from exc
    for key, array in arrays.items():
        if array.dtype.kind != "f":
            raise ModelError(f"{path.name}: weight {key} is {array.dtype}, not a float array.")
        if not np.all(np.isfinite(array)):
            raise ModelError(f"{path.name}: weight {key} holds NaN or infinite values; the file is damaged.")
    return arrays


def _listed(keys: List[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def assign_weights(model: Any, arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Set every weight of ``model`` from ``arrays`` by name.

    Raises :class:`ModelError` (naming the weights) unless the names are exactly the model's and every
    shape matches, so a file for another architecture never half-loads.
    """
    variables = model_variables(model)
    missing = [k for k in variables if k not in arrays]
    extra = sorted(k for k in arrays if k not in variables)
    wrong = [f"{k} {tuple(arrays[k].shape)} (network: {tuple(v.shape)})"
             for k, v in variables.items() if k in arrays and tuple(arrays[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} weight(s) the network has: {_listed(missing)}")
    if extra:
        problems.append(f"has {len(extra)} weight(s) the network does not: {_listed(extra)}")
    if wrong:
        problems.append(f"has weights of the wrong shape: {_listed(wrong)}")
    if problems:
        raise ModelError(f"{source} does not match the network its card describes: it " + "; it ".join(problems)
                         + ". The weights and the card belong to different models; re-export them together "
                         "(`lungseg export-weights`).")
    for key, variable in variables.items():
        variable.assign(np.asarray(arrays[key], dtype=variable.dtype))


def matched_arrays(source_model: Any, reference_model: Any) -> Dict[str, np.ndarray]:
    """``source_model``'s weights under ``reference_model``'s names.

    For checkpoints whose layers carry Keras' automatic names (``conv2d_7``): the layers that hold
    weights are paired in graph order and must agree in type and in every weight's shape, so only the
    same network (rebuilt from its card) matches. Raises :class:`ModelError` otherwise.
    """
    def weighted(model):
        return [layer for layer in model.layers if layer.weights]

    source, reference = weighted(source_model), weighted(reference_model)
    if len(source) != len(reference):
        raise ModelError(f"The model has {len(source)} layers with weights but the network its card describes "
                         f"has {len(reference)}: it was not made by LungSeg's build_unet with these settings.")
    arrays: Dict[str, np.ndarray] = {}
    for src, ref in zip(source, reference):
        shapes = [tuple(v.shape) for v in src.weights]
        expected = [tuple(v.shape) for v in ref.weights]
        if type(src).__name__ != type(ref).__name__ or shapes != expected:
            raise ModelError(f"Layer {src.name} ({type(src).__name__}, weights {shapes}) does not match "
                             f"{ref.name} ({type(ref).__name__}, weights {expected}) of the network the card "
                             "describes.")
        for src_var, ref_var in zip(src.weights, ref.weights):
            if src_var.name.split("/")[-1] != ref_var.name.split("/")[-1]:
                raise ModelError(f"Layer {src.name}'s weight {src_var.name} is not {ref_var.name}.")
            arrays[weight_key(ref, ref_var)] = np.asarray(src_var.numpy())
    return arrays

"""Counting voxels per label value in bounded memory.

``np.bincount`` converts its whole input to 64-bit integers first: 8 bytes per voxel, 2 GB for the labels of
a 512 x 512 x 1000 CT. :func:`label_counts` counts slab by slab, so the temporaries stay a few MB whatever
the volume's size.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

#: Voxels counted per step (a 64-bit copy of this many is 8 MB).
_CHUNK = 1 << 20


def label_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount(labels.ravel(), minlength=minlength)`` for non-negative integer ``labels`` of any
    shape, computed in chunks along the first axis (int64 counts)."""
    labels = np.asarray(labels)
    if labels.ndim == 0 or labels.size == 0:
        return np.bincount(labels.ravel(), minlength=minlength)
    per_step = max(1, _CHUNK // max(1, labels[0].size))
    counts = np.zeros(max(minlength, 1), np.int64)
    for start in range(0, labels.shape[0], per_step):
        part = np.bincount(labels[start:start + per_step].ravel(), minlength=minlength)
        if part.size > counts.size:
            part[:counts.size] += counts
            counts = part.astype(np.int64)
        else:
            counts[:part.size] += part
    return counts[:max(minlength, int(counts.size))] if minlength else counts[:_last_nonzero(counts) + 1]


def _last_nonzero(counts: np.ndarray) -> int:
    nonzero = np.flatnonzero(counts)
    return int(nonzero[-1]) if nonzero.size else 0


def lookup(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for an integer ``index`` array of any shape, in chunks along its first axis.

    NumPy converts an index array to 64-bit integers before indexing (8 bytes per voxel); chunking keeps
    that copy small. The result has ``index``'s shape and ``table``'s dtype.
    """
    index = np.asarray(index)
    if index.ndim == 0:
        return table[index]
    out = np.empty(index.shape, dtype=table.dtype)
    per_step = max(1, _CHUNK // max(1, index[0].size))
    for start in range(0, index.shape[0], per_step):
        out[start:start + per_step] = table[index[start:start + per_step]]
    return out


def label_components(mask: np.ndarray, structure: np.ndarray):
    """``scipy.ndimage.label(mask, structure)`` with 16-bit labels when they suffice (half the memory of
    scipy's default 32-bit ones), else 32-bit ones.

    Not 8 bits: scipy's provisional labels during the scan overflow 8 bits even for a few components,
    and it then labels into a 32-bit temporary and compares (6 bytes per voxel instead of 2).
    """
    from scipy import ndimage

    try:
        return ndimage.label(mask, structure=structure, output=np.uint16)
    except RuntimeError:  # "insufficient bit-depth in requested output type"
        return ndimage.label(mask, structure=structure)



def value_components(labels: np.ndarray, value: int, structure: np.ndarray):
    """:func:`label_components` of ``labels == value`` without a separate mask: the 16-bit buffer that
    receives the labels first holds the mask (filled slab by slab) and is labelled in place (2 bytes per
    voxel instead of 3; scipy reads each line before writing it). Returns (labels, count)."""
    from scipy import ndimage

    comp = np.empty(labels.shape, np.uint16)
    per_step = max(1, _CHUNK // max(1, labels[0].size)) if labels.ndim and labels.size else 1
    for start in range(0, labels.shape[0] if labels.ndim else 0, per_step):
        np.equal(labels[start:start + per_step], value, out=comp[start:start + per_step], casting="unsafe")
    try:
        n = ndimage.label(comp, structure=structure, output=comp)
    except RuntimeError:  # over 65535 components: the buffer is spoilt, start again at 32 bits
        del comp
        return ndimage.label(labels == value, structure=structure)
    return comp, int(n)


def label_extents(labels: np.ndarray, values, slab: int = 16) -> Dict[int, Optional[tuple]]:
    """Inclusive ``((k0, k1), (j0, j1), (i0, i1))`` bounding box of each label value (None if absent).

    Computed slab by slab (``slab`` slices): a whole-volume mask per label would cost one byte per voxel
    (0.26 GB each for 512 x 512 x 1000), here the temporaries are a few MB whatever the slice count.
    """
    boxes: Dict[int, list] = {v: [None, None, None] for v in values}
    for k0 in range(0, labels.shape[0], slab):
        block = labels[k0:k0 + slab]
        for value in values:
            mask = block == value
            ks = np.flatnonzero(mask.any(axis=(1, 2)))
            if ks.size == 0:
                continue
            js = np.flatnonzero(mask.any(axis=(0, 2)))
            is_ = np.flatnonzero(mask.any(axis=(0, 1)))
            found = ((k0 + ks[0], k0 + ks[-1]), (js[0], js[-1]), (is_[0], is_[-1]))
            box = boxes[value]
            for axis, (lo, hi) in enumerate(found):
                box[axis] = (lo, hi) if box[axis] is None else (min(box[axis][0], lo), max(box[axis][1], hi))
    return {v: (tuple((int(lo), int(hi)) for lo, hi in b) if b[0] is not None else None)
            for v, b in boxes.items()}

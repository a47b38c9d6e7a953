"""Image geometry: voxel grids, patient orientation and the canonical axial stack.

Conventions
-----------
* Arrays are indexed ``[k, j, i]`` (slice, row, column), as ``SimpleITK.GetArrayFromImage`` and
  Slicer's ``arrayFromVolume`` return them.
* Physical coordinates are **LPS** millimetres (DICOM / ITK): +x towards the patient's Left,
  +y Posterior, +z Superior. A voxel ``(i, j, k)`` sits at ``origin + direction @ (spacing * (i, j, k))``;
  the columns of ``direction`` are the directions of the i, j and k axes.
* The **canonical** stack is the same voxels, only permuted and flipped (no resampling), so that array
  axis 2 runs towards patient Left, axis 1 towards Posterior and axis 0 towards Superior. In a canonical
  slice the patient's right lung therefore has the smaller column index — whatever the file's header.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

# LPS <-> RAS flips the first two axes.
_LPS_RAS = np.diag([-1.0, -1.0, 1.0])


class GeometryError(InputError, ValueError):
    """A voxel grid LungSeg cannot work on (spacing not positive, direction not orthonormal): bad input
    (exit code 3) for the command line, and a ``ValueError`` for Python callers."""


def direction_problem(direction: np.ndarray) -> Optional[str]:
    """Why a 3x3 direction matrix (columns = axis directions) is not an orthonormal grid, or None.

    A sheared grid (axes not perpendicular) or scaled axes would make voxels other than boxes, which
    the slice-by-slice segmentation and the volumes in mL assume.
    """
    d = np.asarray(direction, dtype=float)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)):
        return (f"an invalid direction matrix ({d.ravel().tolist()}): it needs three finite axis "
                "directions. Fix the header (space directions / TransformMatrix)")
    if np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        return None
    norms = np.linalg.norm(d, axis=0)
    unit = d / np.where(norms > 0, norms, 1.0)
    cosines = np.abs(unit.T @ unit - np.eye(3))
    shear = float(np.degrees(np.arcsin(np.clip(cosines.max(), 0.0, 1.0))))
    return (f"a non-orthogonal direction matrix: its image axes are sheared by {shear:.1f} degrees (axis "
            "lengths " + ", ".join(f"{n:.3g}" for n in norms) + "), so its voxels are not boxes. LungSeg "
            "needs an orthogonal grid: resample the image onto one (e.g. 3D Slicer's Resample Scalar Volume) "
            "or fix the header's space directions")


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in patient space.

    Attributes:
        spacing: voxel size along i, j, k in mm.
        origin: LPS position (mm) of the centre of voxel (0, 0, 0).
        direction: 3x3 matrix whose columns are the LPS unit vectors of the i, j, k axes.
    """

    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if len(spacing) != 3 or len(origin) != 3:
            raise ValueError("spacing and origin need 3 values (i, j, k / x, y, z)")
        if not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise GeometryError(f"The voxel spacing must be positive and finite, got {spacing} mm.")
        problem = direction_problem(direction)
        if problem:
            raise GeometryError(f"The image has {problem}.")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> "Geometry":
        """Geometry of a SimpleITK image (SimpleITK is always LPS)."""
        return cls(image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3))

    @classmethod
    def from_ras(cls, spacing: Sequence[float], origin_ras: Sequence[float],
                 direction_ras: np.ndarray) -> "Geometry":
        """Geometry given in RAS (NIfTI, Slicer) coordinates."""
        return cls(spacing, _LPS_RAS @ np.asarray(origin_ras, float),
                   _LPS_RAS @ np.asarray(direction_ras, float).reshape(3, 3))

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> "Geometry":
        """Geometry from a 4x4 IJK-to-RAS matrix, as Slicer's volume nodes hold it."""
        m = np.asarray(matrix, dtype=float).reshape(4, 4)
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        return cls.from_ras(spacing, m[:3, 3], m[:3, :3] / spacing)

    # --- conversions --------------------------------------------------------------------------
    def apply_to_sitk(self, image) -> None:
        """Copy this geometry onto a SimpleITK image (in place)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * np.asarray(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to RAS mm (Slicer's IJKToRAS)."""
        m = self.ijk_to_lps()
        m[:3, :] = _LPS_RAS @ m[:3, :]
        return m

    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class CanonicalOrientation:
    """Axis permutation and flips that take an array ``[k, j, i]`` to the canonical stack.

    ``axes[c]`` is the input array axis that becomes canonical axis ``c`` (0 = S, 1 = P, 2 = L);
    ``flips[c]`` says whether it is reversed. Only a permutation and flips: the mapping is exact.
    """

    axes: Tuple[int, int, int]
    flips: Tuple[bool, bool, bool]
    spacing_zyx: Tuple[float, float, float]
    obliquity_deg: float

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """A canonical view (no copy) of an input-grid array; extra trailing axes are kept."""
        view = np.transpose(array, self.axes + tuple(range(3, array.ndim)))
        for c, flip in enumerate(self.flips):
            if flip:
                view = np.flip(view, axis=c)
        return view

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical` (a view)."""
        for c, flip in enumerate(self.flips):
            if flip:
                array = np.flip(array, axis=c)
        inverse = tuple(int(a) for a in np.argsort(self.axes))
        return np.transpose(array, inverse + tuple(range(3, array.ndim)))

    @property
    def pixel_spacing_mm(self) -> Tuple[float, float]:
        """In-plane spacing of canonical slices: (row = posterior, column = left) in mm."""
        return self.spacing_zyx[1], self.spacing_zyx[2]

    @property
    def slice_spacing_mm(self) -> float:
        """Distance between canonical slices (superior direction) in mm."""
        return self.spacing_zyx[0]


def canonical_orientation(geometry: Geometry) -> CanonicalOrientation:
    """Find the permutation/flips that make the closest-to-axial canonical stack.

    For oblique grids the patient axis closest to each image axis is chosen (maximising the total
    alignment over all 6 permutations), so a gantry tilt or a slightly rotated volume stays a stack
    of near-axial slices. ``obliquity_deg`` reports the largest angle between an image axis and the
    patient axis it was assigned to.
    """
    d = geometry.direction
    # lps_axis_of[a] = which LPS axis (0=L, 1=P, 2=S) image axis a (0=i, 1=j, 2=k) follows.
    best = max(itertools.permutations(range(3)),
               key=lambda p: sum(abs(d[p[a], a]) for a in range(3)))
    lps_axis_of = best
    array_axis_of_image_axis = {0: 2, 1: 1, 2: 0}
    axes = [0, 0, 0]
    flips = [False, False, False]
    spacing = [0.0, 0.0, 0.0]
    cos_min = 1.0
    for a in range(3):
        lps = lps_axis_of[a]
        canonical_axis = 2 - lps  # L -> 2, P -> 1, S -> 0
        axes[canonical_axis] = array_axis_of_image_axis[a]
        flips[canonical_axis] = bool(d[lps, a] < 0)
        spacing[canonical_axis] = geometry.spacing[a]
        cos_min = min(cos_min, abs(d[lps, a]))
    obliquity = float(np.degrees(np.arccos(np.clip(cos_min, -1.0, 1.0))))
    return CanonicalOrientation(tuple(axes), tuple(flips), tuple(spacing), obliquity)


def interpolation_matrix(n_in: int, spacing_in: float, n_out: int, spacing_out: float,
                         offset_mm: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Linear resampling weights between two 1-D grids, anti-aliased when shrinking.

    Input sample ``n`` sits at ``n * spacing_in`` mm, output sample ``m`` at
    ``offset_mm + m * spacing_out`` mm. Returns ``(weights, coverage)``: ``weights`` is
    ``(n_out, n_in)`` float32 and ``coverage`` (``n_out``) is the share of each output sample's kernel
    that falls inside the input, so ``weights @ x + (1 - coverage) * fill`` resamples ``x`` with
    ``fill`` outside the input. The kernel is a triangle as wide as the coarser of the two spacings:
    plain linear interpolation when enlarging, area-weighted averaging when shrinking.
    """
    half = max(spacing_in, spacing_out)
    pad = int(np.ceil(half / spacing_in)) + 1
    x_out = offset_mm + np.arange(n_out) * spacing_out
    n = np.arange(-pad, n_in + pad)
    w = np.clip(1.0 - np.abs(x_out[:, None] - n[None, :] * spacing_in) / half, 0.0, None)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    inside = w[:, pad:pad + n_in]
    return inside.astype(np.float32), inside.sum(axis=1).astype(np.float32)


def support(weights: np.ndarray) -> Tuple[int, int]:
    """[start, stop) range of input samples with a non-zero weight (the rest can be skipped)."""
    used = np.flatnonzero(weights.any(axis=0))
    if used.size == 0:
        return 0, 0
    return int(used[0]), int(used[-1]) + 1


def centroid_lps(mask: np.ndarray, geometry: Geometry) -> Optional[np.ndarray]:
    """LPS centroid (mm) of a boolean mask on ``geometry``'s grid, or None when empty."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    kji = idx.mean(axis=0)
    ijk = kji[::-1]
    return geometry.ijk_to_lps()[:3] @ np.append(ijk, 1.0)

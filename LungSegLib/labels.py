"""The label table: the one place that says what each label value of a LungSeg labelmap means.

Dependency-free (standard library only) so that 3D Slicer's logic, the writers, metrics, training and
the DICOM SEG export all read the same names, sides, colours and codes without importing NumPy,
SciPy or TensorFlow.

Label values: ``0`` background, ``1`` right lung, ``2`` left lung -- *patient* right and left, taken
from the image geometry, never from array order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

#: (coding scheme, code value, code meaning) of a coded concept.
Code = Tuple[str, str, str]

#: SNOMED CT concepts shared by the lung labels.
ANATOMICAL_STRUCTURE: Code = ("SCT", "123037004", "Anatomical Structure")
LUNG: Code = ("SCT", "39607008", "Lung")
RIGHT_SIDE: Code = ("SCT", "24028007", "Right")
LEFT_SIDE: Code = ("SCT", "7771000", "Left")


@dataclass(frozen=True)
class Label:
    """One label of the labelmap.

    Attributes:
        value: the voxel value in the labelmap.
        name: the segment name shown to users ("Right lung").
        key: a short identifier for tables, JSON and CSV columns ("right").
        side: ``"right"``/``"left"`` (patient side) or None.
        color: display colour, RGB in 0..1.
        color_name: that colour in a word, for legends ("green").
        category, type, modifier: the segment's coded terminology (SNOMED CT).
    """

    value: int
    name: str
    key: str
    side: Optional[str]
    color: Tuple[float, float, float]
    color_name: str = ""
    category: Code = ANATOMICAL_STRUCTURE
    type: Code = LUNG
    modifier: Optional[Code] = None

    @property
    def color_255(self) -> Tuple[int, int, int]:
        """The colour as 0..255 integers (PNG overlays)."""
        return tuple(int(round(c * 255)) for c in self.color)  # type: ignore[return-value]

    def slicer_terminology(self) -> str:
        """3D Slicer's terminology entry string (category~type~modifier~anatomic context~region~region
        modifier), as stored in ``.seg.nrrd`` files and segment tags."""
        def code(c: Optional[Code]) -> str:
            return "^".join(c) if c else "^^"

        return ("Segmentation category and type - 3D Slicer General Anatomy list"
                f"~{code(self.category)}~{code(self.type)}~{code(self.modifier)}"
                "~Anatomic codes - DICOM master list~^^~^^")


BACKGROUND = 0
RIGHT = 1
LEFT = 2

#: The labels a LungSeg labelmap holds besides background, in label order.
LUNG_LABELS: Tuple[Label, ...] = (
    Label(RIGHT, "Right lung", "right", "right", (0.502, 0.682, 0.502), "green", modifier=RIGHT_SIDE),
    Label(LEFT, "Left lung", "left", "left", (0.502, 0.502, 0.855), "blue", modifier=LEFT_SIDE),
)

#: Class names in network output order (channel 0 is background); a model card's ``classes`` must
#: equal this for a 3-class model.
CLASS_NAMES: Tuple[str, ...] = ("background",) + tuple(label.name.lower() for label in LUNG_LABELS)
#: The class names of a binary (lung / not lung) model; its sides are split by patient position.
BINARY_CLASS_NAMES: Tuple[str, ...] = ("background", "lung")
#: The output channels a model may have: one (sigmoid lung, binary model) or one per class (softmax).
MODEL_CHANNELS: Tuple[int, ...] = (1, len(CLASS_NAMES))

#: Segment names LungSeg owns in a segmentation (label 1 then 2).
SEGMENT_NAMES: Tuple[str, ...] = tuple(label.name for label in LUNG_LABELS)
#: The largest label value.
MAX_LABEL = max(label.value for label in LUNG_LABELS)


def by_value(value: int) -> Label:
    """The label with this voxel value (KeyError for background or an unknown value)."""
    for label in LUNG_LABELS:
        if label.value == value:
            return label
    raise KeyError(f"No lung label has the value {value}.")


def by_side(side: str) -> Label:
    """The lung label of a patient side, ``"right"`` or ``"left"``."""
    for label in LUNG_LABELS:
        if label.side == side:
            return label
    raise KeyError(f"No lung label for side {side!r}.")


def volume_names() -> Dict[int, str]:
    """``{value: name in lower case}``, the keys of volume dictionaries (``{'right lung': mL, ...}``)."""
    return {label.value: label.name.lower() for label in LUNG_LABELS}


def legend() -> str:
    """``"green = right lung, blue = left lung"``: the colours of the labels in words."""
    return ", ".join(f"{label.color_name} = {label.name.lower()}" for label in LUNG_LABELS)


def check_classes(classes) -> None:
    """Raise ValueError unless ``classes`` (a model card's list) is a label set LungSeg knows: the
    3-class (background, right lung, left lung) or the binary (background, lung) set."""
    classes = tuple(str(c).lower() for c in classes)
    if classes not in (CLASS_NAMES, BINARY_CLASS_NAMES):
        raise ValueError(f"the model's classes {list(classes)} are not LungSeg's label set "
                         f"{list(CLASS_NAMES)} (or the binary {list(BINARY_CLASS_NAMES)})")

"""LungSeg: right/left lung segmentation of chest CT with a 2-D U-Net.

Importable with plain Python (no Qt, no Slicer). Start with :class:`LungSegmenter`.
"""
__version__ = "0.1.0"

from .errors import (Cancelled, InputError, LungSegError, ModelError, OutputError,  # noqa: E402
                     PlausibilityError)


def __getattr__(name):
    # Import TensorFlow-dependent parts lazily so `import LungSegLib` (and `lungseg --help`) stay fast.
    if name == "LungSegmenter":
        from .api import LungSegmenter

        return LungSegmenter
    raise AttributeError(name)


__all__ = ["LungSegmenter", "LungSegError", "InputError", "OutputError", "ModelError", "Cancelled",
           "PlausibilityError", "__version__"]

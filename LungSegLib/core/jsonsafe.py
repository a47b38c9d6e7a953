"""JSON that every reader accepts: NaN and infinite floats (an empty mask's distance, an undefined
percentage) become ``null`` instead of the non-standard ``NaN``/``Infinity`` tokens."""
from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float, also inside dicts, lists and tuples, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value

"""Checks of plain values (from YAML, JSON or metrics), shared by the spec, the recipe's configs
and the reports. bool is not a number here, though Python says it is an int."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_num(value: Any) -> bool:
    """A finite int or float."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


def is_non_negative_int(value: Any) -> bool:
    return is_int(value) and value >= 0

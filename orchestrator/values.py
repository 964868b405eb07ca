"""Checks of plain values (from YAML, JSON or metrics), shared by the spec, the recipe's configs
and the reports. bool is not a number here, though Python says it is an int."""

from __future__ import annotations

import math
import reprlib
from typing import Any

_SHOWN = reprlib.Repr()  # Python 3.10's Repr takes no keyword arguments
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 3, 60, 60, 40
_SHOWN.maxdict = _SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxset = 6


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_num(value: Any) -> bool:
    """A finite int or float."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


def is_non_negative_int(value: Any) -> bool:
    return is_int(value) and value >= 0


def shown(value: Any, limit: int = 100) -> str:
    """repr(value) for an error message, bounded: a few items of a container, the ends of a long
    string, never more than `limit` characters (a value may be megabytes)."""
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

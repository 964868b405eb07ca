"""Lazy package attributes (PEP 562): a package names what lives in which submodule, and a
submodule is imported on first use, so importing the package costs only what it needs at once."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str], into: dict) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: attribute `name` is `package.<where[name]>.name`,
    imported on first access and then kept in `into` (the package's globals())."""

    def attribute(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        into[name] = value
        return value

    return attribute

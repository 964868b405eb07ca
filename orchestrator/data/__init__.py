"""Training clips: moving handwritten digits (built in) or a folder of the user's clips.

The names below are imported from their submodules on first use (PEP 562), so that a light
submodule (prompts, captions' checks) is imported without torch, which `build` and the datasets
need: the CLI checks a spec without importing torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "DigitsClips": "digits_clips", "FolderClips": "folder", "FolderDataError": "folder",
    "StepSampler": "sampling", "build_datasets": "build", "collate": "build",
}  # fmt: skip

if TYPE_CHECKING:
    from .build import build_datasets, collate
    from .digits_clips import DigitsClips
    from .folder import FolderClips, FolderDataError
    from .sampling import StepSampler

__all__ = [
    "DigitsClips",
    "FolderClips",
    "FolderDataError",
    "StepSampler",
    "build_datasets",
    "collate",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value

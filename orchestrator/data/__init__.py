"""Training clips: moving handwritten digits (built in) or a folder of the user's clips."""

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

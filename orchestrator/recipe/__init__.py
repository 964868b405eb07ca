"""The training recipe: one trial (fine-tune with SLA or dense) runnable without Ray.

from orchestrator.recipe import TrainConfig, run_trial
metrics = run_trial(TrainConfig(model="tiny", steps=30), SLAConfig(topk=0.25), Path("out"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sla_kernel_glue.lazy import lazy_attributes

from .config import DataConfig, TrainConfig  # no torch: what a spec check needs

# The recipe itself imports torch, accelerate and diffusers: loaded on first use.
_LAZY = {
    "Callback": "callbacks", "CallbackList": "callbacks", "PrintCallback": "callbacks",
    "RecordingCallback": "callbacks", "TrialRecipe": "train", "run_trial": "train",
}  # fmt: skip

if TYPE_CHECKING:
    from .callbacks import Callback, CallbackList, PrintCallback, RecordingCallback
    from .train import TrialRecipe, run_trial

__getattr__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "Callback",
    "CallbackList",
    "DataConfig",
    "PrintCallback",
    "RecordingCallback",
    "TrainConfig",
    "TrialRecipe",
    "run_trial",
]

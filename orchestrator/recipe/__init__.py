"""The training recipe: one trial (fine-tune with SLA or dense) runnable without Ray.

from orchestrator.recipe import TrainConfig, run_trial
metrics = run_trial(TrainConfig(model="tiny", steps=30), SLAConfig(topk=0.25), Path("out"))
"""

from .callbacks import Callback, CallbackList, PrintCallback, RecordingCallback
from .config import DataConfig, TrainConfig
from .train import TrialRecipe, run_trial

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

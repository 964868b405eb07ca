"""The validated ExperimentSpec: frozen dataclasses, built only by orchestrator.spec.load_spec."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

# Metric names every trial reports (design.md); "best", the scheduler and Optuna pick from these.
METRIC_NAMES = (
    "train/loss",
    "val/loss",
    "val/loss_gap",
    "val/distill_loss",
    "val/attn_rel_err",
    "val/sample_psnr",
    "val/video_psnr",
    "val/video_ssim",
    "flops/attention",
    "flops/attention_ratio",
    "flops/attention_mean",
    "flops/step",
    "perf/step_s",
    "perf/tokens_per_s",
    "sla/fallback_calls",
    "sla/topk",
)
MODES = ("min", "max")
ALGORITHMS = ("grid", "random", "optuna")
SCHEDULERS = ("none", "asha")
SEARCH_KINDS = ("grid", "choice", "uniform", "loguniform")

DEFAULT_RESULTS_DIR = "sla_runs"  # storage.results_dir, relative to the working directory
MLFLOW_DB = "mlflow.db"  # the default tracking store: a sqlite file in the results directory


def sqlite_store(directory: Path) -> str:
    """The tracking URI of the default store in `directory` (absolute: Ray moves trials' cwd)."""
    return f"sqlite:///{Path(directory).resolve() / MLFLOW_DB}"


SearchKind = Literal["fixed", "grid", "choice", "uniform", "loguniform"]


@dataclasses.dataclass(frozen=True)
class SearchParam:
    """One field of the search space: a fixed value, a list (grid/choice) or a range. An SLAConfig
    field by name ("topk"), a training setting by its dotted key ("train.lr", "train.lora.rank")."""

    field: str
    kind: SearchKind
    values: tuple[Any, ...]  # fixed: (v,); grid/choice: the values; uniform/loguniform: (lo, hi)


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    mode: str


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    algorithm: str = "grid"
    num_samples: int = 1
    seed: int = 0
    objectives: tuple[Objective, ...] = ()


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    name: str = "none"
    metric: str = "val/loss"
    mode: str = "min"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int = 100


@dataclasses.dataclass(frozen=True)
class ResourcesSpec:
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    # Ray custom resources each Train worker asks for besides CPUs and GPUs ({"trial_node": 1}):
    # a trial's workers go only to nodes started with them (ray start --resources).
    custom_per_worker: Mapping[str, float] = dataclasses.field(default_factory=dict)
    # Each GPU's memory for the memory plan when the driver cannot see the trials' GPUs (none
    # here, or a joined cluster's); None: torch.cuda's first GPU, when there is one.
    gpu_memory_gib: float | None = None


@dataclasses.dataclass(frozen=True)
class StorageSpec:
    # An absolute local (or shared mounted) directory, or a URI (s3://bucket/prefix, gs://...)
    # that orchestrator.storage opens: Ray Train's storage, where every file of a sweep lives.
    results_dir: Path | str
    tracking_uri: str

    @property
    def remote(self) -> bool:
        """Whether results_dir is a URI (a bucket), not a directory of this machine."""
        return isinstance(self.results_dir, str)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    num_to_keep: int = 2


@dataclasses.dataclass(frozen=True)
class FailureSpec:
    max_failures: int = 0


@dataclasses.dataclass(frozen=True)
class VerdictSpec:
    """What "holds quality" means for the sweep's verdict (orchestrator.report.findings)."""

    metric: str = "val/loss"
    mode: str = "min"
    tolerance: float | None = None  # how much worse than the control's mean still holds
    confidence: float = 0.95  # of the one-sided Welch test over repeats


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    """A whole sweep, validated. `train` holds the recipe's TrainConfig keyword arguments."""

    name: str
    train: dict[str, Any]
    sla: tuple[SearchParam, ...]
    control: bool
    search: SearchSpec
    scheduler: SchedulerSpec
    resources: ResourcesSpec
    max_concurrent_trials: int | None
    metric: str
    mode: str
    storage: StorageSpec
    checkpoint: CheckpointSpec
    failure: FailureSpec
    source: dict[str, Any]  # the YAML after profile and overrides, as logged to MLflow
    extra_trials: tuple[dict[str, Any], ...] = ()  # SLA settings run besides the search space
    # Training settings searched too ("train.lr", ...); `train` holds their control values.
    train_space: tuple[SearchParam, ...] = ()
    # Seeds every config and the control run with (`repeats`/`seeds`); () runs each once.
    seeds: tuple[int, ...] = ()
    verdict: VerdictSpec = VerdictSpec()

    @property
    def repeats(self) -> int:
        return max(1, len(self.seeds))

    @property
    def varying(self) -> tuple[SearchParam, ...]:
        """The search-space entries that are not fixed values: SLA's, then training settings'."""
        return tuple(p for p in self.sla if p.kind != "fixed") + self.train_space

    @property
    def fixed_sla(self) -> dict[str, Any]:
        return {p.field: p.values[0] for p in self.sla if p.kind == "fixed"}

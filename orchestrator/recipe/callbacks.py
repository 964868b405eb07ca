"""The recipe's only way out: a small callback interface (Ray and MLflow stay out of the recipe).

Both methods are called on every process (rank) of a run, at the same points, so a Ray Train
worker can call ray.train.report (a barrier) from them on every rank. Exactly one call per
reporting step: on_checkpoint at steps that write a checkpoint (with that step's metrics),
on_metrics at the others (log/eval steps, and step 0 with the evaluation before training).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol, runtime_checkable


@runtime_checkable
class Callback(Protocol):
    """Receives metrics and checkpoints from run_trial."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics at optimizer step `step` (train metrics every log_every, eval metrics too)."""

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float]) -> None:
        """A complete checkpoint directory was written (every rank has finished writing).

        The directory is not deleted before this returns; a callback may copy or upload it.
        """


class CallbackList:
    """Calls several callbacks in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_metrics(step, metrics)

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(step, directory, metrics)


class PrintCallback:
    """Progress lines on the main process: step, loss, step time, throughput, eval metrics."""

    def __init__(
        self, total_steps: int, *, is_main: bool = True, stream: IO[str] | None = None
    ) -> None:
        self.total_steps = total_steps
        self.is_main = is_main
        self.stream = stream if stream is not None else sys.stdout

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        parts = [f"step {step:>6d}/{self.total_steps}"]
        if "train/loss" in metrics:
            parts.append(f"loss {metrics['train/loss']:.4f}")
        if "perf/step_s" in metrics:
            parts.append(f"{metrics['perf/step_s'] * 1000:.0f} ms/step")
        if "perf/tokens_per_s" in metrics:
            parts.append(f"{metrics['perf/tokens_per_s']:,.0f} tok/s")
        for key in (
            "val/loss",
            "val/loss_gap",
            "val/attn_rel_err",
            "val/sample_psnr",
            "flops/attention_ratio",
        ):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4g}")
        if metrics.get("sla/fallback_calls"):
            parts.append(f"fallbacks {metrics['sla/fallback_calls']:.0f}")
        print("  ".join(parts), file=self.stream, flush=True)

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float]) -> None:
        self.on_metrics(step, metrics)
        if self.is_main:
            print(
                f"step {step:>6d}/{self.total_steps}  checkpoint {directory}",
                file=self.stream,
                flush=True,
            )


class RecordingCallback:
    """Keeps every call in memory (for tests and for programmatic callers).

    `metrics` lists every report, checkpoint steps included; `checkpoints` only the latter.
    """

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: list[tuple[int, Path, dict[str, float]]] = []

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, dict(metrics)))

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float]) -> None:
        self.metrics.append((step, dict(metrics)))
        self.checkpoints.append((step, Path(directory), dict(metrics)))

    def series(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of one metric, in call order."""
        return [(step, m[name]) for step, m in self.metrics if name in m]

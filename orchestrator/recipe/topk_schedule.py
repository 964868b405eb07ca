"""Whether a trial is long enough for its topk schedule: the one check of a schedule against
train.steps. The recipe runs it when a trial is constructed; the spec loader runs it before Ray
starts, against the fewest steps any trial of the sweep trains. Plain Python (no torch)."""

from __future__ import annotations

from sla_kernel_glue import TopkSchedule


def schedule_error(schedule: TopkSchedule | None, steps: int) -> str | None:
    """Why `steps` optimizer steps cannot run `schedule` to its end (the topk inference runs
    at); None when they can, or when there is no schedule."""
    if schedule is None or schedule.warmup_steps <= steps:
        return None
    return (
        f"sla.topk_schedule.warmup_steps ({schedule.warmup_steps}) is more than "
        f"train.steps ({steps}): training would stop at topk {schedule.topk(steps):.4g}, "
        f"short of the end ({schedule.end}) that inference runs at; lower warmup_steps or "
        "raise steps"
    )

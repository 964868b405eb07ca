"""Which timesteps a training step draws: the whole range for one transformer, and for a
two-expert pipeline (orchestrator.models.experts) only the range of the expert the step trains.

With two experts every step trains one of them, chosen from a stream of (seed, step, micro) that
is the same on every process (so all ranks run the same expert: DDP and FSDP collectives stay in
step), with the probability of its share of the timestep distribution when both train. Its
timesteps are then drawn from the distribution restricted to its range (inverse CDF), so over
many steps the timesteps are distributed as for one transformer, and each expert sees only its
own: `transformer` t >= boundary, `transformer_2` t < boundary (with a margin of MARGIN, so that
the 0-1000 scale's rounding cannot send a sample across).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.models.experts import ExpertPair, pipeline_experts, trained_experts

from .flow_matching import sample_timesteps, shift_timesteps

MARGIN = 1e-5  # timesteps keep this far from the boundary, on their expert's side
_CHOICE_STREAM = 3  # SeedSequence([seed, step, micro, 3]): the step's expert, the same on all ranks


@dataclasses.dataclass(frozen=True)
class Span:
    """An expert's timesteps: t in [low, high), drawn with probability `share` per step."""

    expert: str
    low: float
    high: float
    share: float


@dataclasses.dataclass(frozen=True)
class TimestepPlan:
    """How a trial draws its training timesteps (see the module docstring)."""

    sampling: str
    shift: float
    seed: int
    spans: tuple[Span, ...] = ()  # empty: one transformer, the whole range

    @classmethod
    def of(
        cls, model: nn.Module, choice: str, *, sampling: str, shift: float, seed: int
    ) -> TimestepPlan:
        if not isinstance(model, ExpertPair):
            return cls(sampling, shift, seed)
        boundary = model.boundary_ratio
        below = timestep_cdf(boundary, sampling=sampling, shift=shift)
        ranges = {
            "transformer": (boundary, 1.0, 1.0 - below),
            "transformer_2": (0.0, boundary, below),
        }
        trained = trained_experts(choice)
        total = sum(ranges[name][2] for name in trained)
        spans = tuple(
            Span(name, ranges[name][0], ranges[name][1], ranges[name][2] / total)
            for name in trained
        )
        return cls(sampling, shift, seed, spans)

    def expert(self, step: int, micro: int) -> Span | None:
        """The span the micro-batch (step, micro) trains (None: one transformer)."""
        if not self.spans:
            return None
        if len(self.spans) == 1:
            return self.spans[0]
        state = np.random.SeedSequence([self.seed, step, micro, _CHOICE_STREAM]).generate_state(1)
        draw = float(np.random.default_rng(int(state[0])).random())
        return self.spans[0] if draw < self.spans[0].share else self.spans[1]

    def draw(self, n: int, generator: torch.Generator, step: int, micro: int) -> torch.Tensor:
        """(n,) timesteps in (0, 1) for micro-batch (step, micro), from `generator`."""
        span = self.expert(step, micro)
        if span is None:
            return sample_timesteps(
                n, generator=generator, sampling=self.sampling, shift=self.shift
            )
        low = timestep_cdf(span.low, sampling=self.sampling, shift=self.shift)
        high = timestep_cdf(span.high, sampling=self.sampling, shift=self.shift)
        u = low + torch.rand(n, generator=generator, dtype=torch.float64) * (high - low)
        if self.sampling == "logit_normal":
            base = torch.sigmoid(torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12)))
        else:
            base = u
        t = shift_timesteps(base, self.shift).clamp(1e-4, 1 - 1e-4)
        floor = span.low + MARGIN if span.low > 0 else 1e-4
        ceiling = span.high - MARGIN if span.high < 1 else 1 - 1e-4
        return t.clamp(floor, ceiling).float()


def ddp_kwargs(train: Any) -> list[Any]:
    """accelerate's kwargs handlers for a trial: DDP must allow unused parameters when a step
    trains one of two experts (the other's get no gradient that step)."""
    if train.experts != "both" or not train.is_pipeline:
        return []
    if len(pipeline_experts(train.model)) != 2:
        return []
    from accelerate.utils import DistributedDataParallelKwargs

    return [DistributedDataParallelKwargs(find_unused_parameters=True)]


def timestep_cdf(t: float, *, sampling: str, shift: float) -> float:
    """P(T < t) for the shifted training distribution (t in [0, 1])."""
    if t <= 0:
        return 0.0
    if t >= 1:
        return 1.0
    base = t / (shift - (shift - 1) * t)  # the shift's inverse
    if sampling == "uniform":
        return base
    if sampling == "logit_normal":
        z = math.log(base / (1 - base))
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))
    raise ValueError(f"timestep sampling ({sampling!r}) must be 'logit_normal' or 'uniform'")

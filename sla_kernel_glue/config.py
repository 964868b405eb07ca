"""SLAConfig: the settings of one Sparse-Linear Attention layer, validated once at the boundary."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

FEATURE_MAPS = ("softmax", "elu", "relu")
LINEAR_SCOPES = ("marginal", "all", "none")
BACKENDS = ("auto", "torch", "triton")
TOPK_SHAPES = ("linear", "cosine")
ROUTERS = ("fixed", "learned")
MIXES = ("add", "alpha")

FeatureMap = Literal["softmax", "elu", "relu"]
LinearScope = Literal["marginal", "all", "none"]
Backend = Literal["auto", "torch", "triton"]
TopkShape = Literal["linear", "cosine"]
Router = Literal["fixed", "learned"]
Mix = Literal["add", "alpha"]


@dataclasses.dataclass(frozen=True)
class TopkSchedule:
    """topk annealed over fine-tuning: from `start` at step 0 to `end` at step `warmup_steps`, a
    straight line ("linear") or half a cosine ("cosine"), then `end` for good.

    `step` counts optimizer steps done, as the recipe reports them: training step s (1-based)
    runs at topk(s), as the learning-rate warmup counts; the evaluation before training runs at
    topk(0) = start; from step warmup_steps on everything, inference too, runs at `end`.
    warmup_steps 0: `end` throughout.
    """

    start: float
    end: float
    warmup_steps: int
    shape: TopkShape = "linear"

    def __post_init__(self) -> None:
        errors = _schedule_errors(dataclasses.asdict(self))
        if errors:
            raise ValueError("; ".join(errors))

    @classmethod
    def from_value(cls, value: Any) -> TopkSchedule:
        """From a mapping {start, end, warmup_steps, shape (default linear)}; every problem at once."""
        if isinstance(value, TopkSchedule):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                f"topk_schedule ({_short(repr(value))}) must be a mapping "
                "{start, end, warmup_steps, shape} or null"
            )
        known = [f.name for f in dataclasses.fields(cls)]
        errors = [
            f"unknown topk_schedule key {k!r}; allowed: {', '.join(known)}"
            for k in value
            if k not in known
        ]
        missing = [k for k in known[:3] if k not in value]
        if missing:
            errors.append(
                f"topk_schedule needs start, end and warmup_steps (missing: {', '.join(missing)})"
            )
        errors += _schedule_errors(value)
        if errors:
            raise ValueError("; ".join(errors))
        return cls(**{k: v for k, v in value.items() if k in known})

    def topk(self, step: int) -> float:
        """topk after `step` optimizer steps: exactly `start` at 0, exactly `end` from warmup_steps."""
        if not _is_int(step) or step < 0:
            raise ValueError(f"step ({step!r}) must be a non-negative integer")
        if step >= self.warmup_steps:
            return self.end
        progress = step / self.warmup_steps
        if self.shape == "cosine":
            progress = (1.0 - math.cos(math.pi * progress)) / 2.0
        return self.start + (self.end - self.start) * progress


@dataclasses.dataclass(frozen=True)
class SLAConfig:
    """Settings of Sparse-Linear Attention.

    topk: fraction of key blocks per query-block row that get exact (sparse) attention, in (0, 1].
    blkq, blkk: query and key block sizes in tokens.
    feature_map: phi of the linear branch ("softmax" over the head dim, "elu" (elu+1), "relu").
    tie_feature_map_qk: share q's feature map with k (only matters for maps with parameters).
    kl: fraction of key blocks per row that are negligible (skipped entirely), in [0, 1).
    linear_scope: what the linear branch covers. "all" (the default): global linear attention over
        every key, as thu-ml/SLA's main branch computes it; the fused kernel then runs the sparse
        loop alone (docs/benchmarks.md has the timings). "marginal": SLA-1, only the non-critical,
        non-negligible blocks (the paper's fused kernel; slower here, it subtracts each critical
        block's linear term in the loop). "none": no linear branch, sparse-only attention (the
        ablation of the paper's Table 2; proj_l is then frozen at 0).
    backend: "triton" (fused kernels, CUDA only; unsupported shapes are an error), "torch" (the
        PyTorch reference, any device) or "auto" (triton where supported, else torch, counted).
    topk_schedule: None (topk fixed), or a TopkSchedule (a mapping in from_dict) that anneals
        topk during fine-tuning. `topk` is then the schedule's end, the value inference runs at:
        from_dict fills it in when it is left out, and any other value is an error.
        ``topk_at(step)`` is the value at a step; an SLA layer runs at ``at_step(step)``.
    router: "fixed" (the top-k of pooled q.k block scores) or "learned" (SLA2: the pooled q and k
        pass through learnable d x d projections first, identity at init; a soft top-k while
        training, the hard top-k otherwise; learned_router.py).
    mix: "add" (o_sparse + proj_l(o_linear)) or "alpha" (alpha * o_sparse + (1 - alpha) *
        proj_l(o_linear), alpha learnable per head-dim channel, 1 at init); "alpha" needs a
        linear branch (linear_scope "all" or "marginal").
    """

    topk: float = 0.2
    blkq: int = 64
    blkk: int = 64
    feature_map: FeatureMap = "softmax"
    tie_feature_map_qk: bool = True
    kl: float = 0.0
    linear_scope: LinearScope = "all"
    backend: Backend = "auto"
    topk_schedule: TopkSchedule | None = None
    router: Router = "fixed"
    mix: Mix = "add"

    def __post_init__(self) -> None:
        errors = []
        if self.topk_schedule is not None:
            try:
                object.__setattr__(
                    self, "topk_schedule", TopkSchedule.from_value(self.topk_schedule)
                )
            except ValueError as exc:
                errors.append(str(exc))
        errors += _validate(self)
        if errors:
            raise ValueError("; ".join(errors))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SLAConfig:
        """Build from a mapping; unknown keys and bad values are refused, all at once."""
        if not isinstance(values, Mapping):
            raise ValueError(
                f"SLA config must be a mapping of settings, got {type(values).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        errors = [
            f"unknown SLA config key {k!r}; allowed keys: {', '.join(sorted(known))}"
            for k in unknown
        ]
        kwargs = {k: v for k, v in values.items() if k in known}
        end = _schedule_end(values.get("topk_schedule"))
        if end is not None and "topk" not in values:
            kwargs["topk"] = end  # with a schedule, topk is its end
        try:
            config = cls(**kwargs)
        except ValueError as exc:
            errors.append(str(exc))
            config = None
        if errors:
            raise ValueError("; ".join(errors))
        assert config is not None
        return config

    @classmethod
    def parse(
        cls, value: SLAConfig | Mapping[str, Any] | str | None, *, over: SLAConfig | None = None
    ) -> SLAConfig:
        """Accept an SLAConfig, a dict, a JSON object string or a Python dict literal string.

        Strings are parsed (json, then ast.literal_eval), never evaluated as code. With `over`,
        a dict or string sets only the keys it names on top of that config.
        """
        if value is None:
            return cls()
        if isinstance(value, SLAConfig):
            return value
        if isinstance(value, str):
            text = value.strip()
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                try:
                    parsed = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise ValueError(
                        f"SLA config string {_short(text)!r} is neither a JSON object nor a Python "
                        "dict literal such as {'topk': 0.15, 'blkq': 32}"
                    ) from None
            if not isinstance(parsed, dict):
                raise ValueError(
                    f"SLA config string {_short(text)!r} must hold a dict, got {type(parsed).__name__}"
                )
            value = parsed
        if isinstance(value, Mapping):
            if over is None:
                return cls.from_dict(value)
            merged = {**over.to_dict(), **value}
            if "topk_schedule" in value and "topk" not in value:
                merged.pop("topk")  # the new schedule's end, not the old topk
            return cls.from_dict(merged)
        raise ValueError(
            f"SLA config must be an SLAConfig, dict or string, got {type(value).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values; the schedule as a nested dict, left out when there is none, and router
        and mix left out at their defaults (so a config without them, and every file written
        from it, is the same as before they existed)."""
        values = dataclasses.asdict(self)
        for key, default in OMITTED_DEFAULTS.items():
            if values[key] == default:
                del values[key]
        return values

    @property
    def learned(self) -> bool:
        """Whether the layers hold learned parts besides proj_l (a learned router or alpha)."""
        return self.router == "learned" or self.mix == "alpha"

    def replace(self, **changes: Any) -> SLAConfig:
        return dataclasses.replace(self, **changes)

    # ---- derived quantities -------------------------------------------------------------------
    def topk_at(self, step: int) -> float:
        """topk after `step` optimizer steps (TopkSchedule.topk); `topk` without a schedule."""
        return self.topk if self.topk_schedule is None else self.topk_schedule.topk(step)

    def at_step(self, step: int) -> SLAConfig:
        """The fixed config an SLA layer runs at after `step` optimizer steps (no schedule)."""
        if self.topk_schedule is None:
            return self
        return self.replace(topk=self.topk_at(step), topk_schedule=None)

    def critical_blocks(self, n_key_blocks: int) -> int:
        """Critical key blocks per query-block row: max(1, min(T_n, floor(topk * T_n)))."""
        return critical_blocks(self.topk, n_key_blocks)

    def negligible_blocks(self, n_key_blocks: int) -> int:
        """Negligible key blocks per row: floor(kl * T_n), never eating into the critical ones."""
        k = self.critical_blocks(n_key_blocks)
        return min(n_key_blocks - k, math.floor(self.kl * n_key_blocks + 1e-9))


# to_dict leaves these keys out at these values
OMITTED_DEFAULTS: dict[str, Any] = {"topk_schedule": None, "router": "fixed", "mix": "add"}


def require_config(value: Any, name: str = "config") -> SLAConfig:
    """`value` when it is an SLAConfig. Strings and dicts are parsed once, where they come in
    (SLAConfig.parse, from_dict); past that boundary the object travels as it is."""
    if not isinstance(value, SLAConfig):
        raise TypeError(
            f"{name} must be an SLAConfig, got {type(value).__name__}; build one with "
            "SLAConfig.parse(...)"
        )
    return value


def critical_blocks(topk: float, n_key_blocks: int) -> int:
    # The 1e-9 keeps floor(0.1 * 30) == 3 despite binary rounding (0.1 * 30 = 3.0000000000000004
    # is fine, but 0.29 * 100 = 28.999999999999996 is not).
    return max(1, min(n_key_blocks, math.floor(topk * n_key_blocks + 1e-9)))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value: Any) -> bool:
    """A number in (0, 1], as topk takes."""
    return _is_number(value) and math.isfinite(value) and 0 < value <= 1


def _schedule_errors(values: Mapping[str, Any]) -> list[str]:
    """The values of a topk schedule (those present), each alone."""
    errors = []
    for key in ("start", "end"):
        if key in values and not _is_fraction(values[key]):
            errors.append(f"topk_schedule.{key} ({values[key]!r}) must be a number in (0, 1]")
    warmup = values.get("warmup_steps", 0)
    if not _is_int(warmup) or warmup < 0:
        errors.append(f"topk_schedule.warmup_steps ({warmup!r}) must be a non-negative integer")
    shape = values.get("shape", "linear")
    if shape not in TOPK_SHAPES:
        errors.append(f"topk_schedule.shape ({shape!r}) must be one of {', '.join(TOPK_SHAPES)}")
    return errors


def _schedule_end(value: Any) -> float | None:
    """A schedule's end, when it is a valid topk (from_dict fills topk with it)."""
    end = value.end if isinstance(value, TopkSchedule) else None
    if isinstance(value, Mapping):
        end = value.get("end")
    return end if _is_fraction(end) else None


def _validate(c: SLAConfig) -> list[str]:
    errors: list[str] = []
    if not _is_fraction(c.topk):
        errors.append(f"topk ({c.topk!r}) must be a number in (0, 1]")
    for key in ("blkq", "blkk"):
        value = getattr(c, key)
        if not _is_int(value) or value <= 0:
            errors.append(f"{key} ({value!r}) must be a positive integer")
    if c.feature_map not in FEATURE_MAPS:
        errors.append(f"feature_map ({c.feature_map!r}) must be one of {', '.join(FEATURE_MAPS)}")
    if not isinstance(c.tie_feature_map_qk, bool):
        errors.append(f"tie_feature_map_qk ({c.tie_feature_map_qk!r}) must be true or false")
    if not _is_number(c.kl) or not math.isfinite(c.kl) or not 0 <= c.kl < 1:
        errors.append(f"kl ({c.kl!r}) must be a number in [0, 1)")
    elif _is_fraction(c.topk) and c.topk + c.kl > 1:
        errors.append(f"topk + kl ({c.topk!r} + {c.kl!r}) must not exceed 1")
    errors += _topk_schedule_errors(c)
    if c.linear_scope not in LINEAR_SCOPES:
        errors.append(
            f"linear_scope ({c.linear_scope!r}) must be one of {', '.join(LINEAR_SCOPES)}"
        )
    if c.backend not in BACKENDS:
        errors.append(f"backend ({c.backend!r}) must be one of {', '.join(BACKENDS)}")
    if c.router not in ROUTERS:
        errors.append(f"router ({c.router!r}) must be one of {', '.join(ROUTERS)}")
    if c.mix not in MIXES:
        errors.append(f"mix ({c.mix!r}) must be one of {', '.join(MIXES)}")
    elif c.mix == "alpha" and c.linear_scope == "none":
        errors.append(
            "mix 'alpha' mixes the sparse and linear branches; linear_scope 'none' has no linear "
            "branch (use mix 'add', or linear_scope 'all' or 'marginal')"
        )
    return errors


def _topk_schedule_errors(c: SLAConfig) -> list[str]:
    """A valid schedule against topk (its end) and kl (every topk it passes, plus kl, <= 1)."""
    s = c.topk_schedule
    if not isinstance(s, TopkSchedule):
        return []  # None, or a bad value (from_value has said why)
    errors = []
    if _is_fraction(c.topk) and c.topk != s.end:
        errors.append(
            f"topk ({c.topk!r}) must equal topk_schedule.end ({s.end!r}) or be left out: "
            "with a schedule, topk is its final value"
        )
    if _is_number(c.kl) and 0 <= c.kl < 1 and max(s.start, s.end) + c.kl > 1:
        errors.append(
            f"topk_schedule's largest topk + kl ({max(s.start, s.end)!r} + {c.kl!r}) must not exceed 1"
        )
    return errors

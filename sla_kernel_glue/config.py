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

FeatureMap = Literal["softmax", "elu", "relu"]
LinearScope = Literal["marginal", "all", "none"]
Backend = Literal["auto", "torch", "triton"]


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
    """

    topk: float = 0.2
    blkq: int = 64
    blkk: int = 64
    feature_map: FeatureMap = "softmax"
    tie_feature_map_qk: bool = True
    kl: float = 0.0
    linear_scope: LinearScope = "all"
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        errors = _validate(self)
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
            return cls.from_dict(value if over is None else {**over.to_dict(), **value})
        raise ValueError(
            f"SLA config must be an SLAConfig, dict or string, got {type(value).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SLAConfig:
        return dataclasses.replace(self, **changes)

    # ---- derived quantities -------------------------------------------------------------------
    def critical_blocks(self, n_key_blocks: int) -> int:
        """Critical key blocks per query-block row: max(1, min(T_n, floor(topk * T_n)))."""
        return critical_blocks(self.topk, n_key_blocks)

    def negligible_blocks(self, n_key_blocks: int) -> int:
        """Negligible key blocks per row: floor(kl * T_n), never eating into the critical ones."""
        k = self.critical_blocks(n_key_blocks)
        return min(n_key_blocks - k, math.floor(self.kl * n_key_blocks + 1e-9))


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


def _validate(c: SLAConfig) -> list[str]:
    errors: list[str] = []
    if not _is_number(c.topk) or not math.isfinite(c.topk) or not 0 < c.topk <= 1:
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
    elif _is_number(c.topk) and 0 < c.topk <= 1 and c.topk + c.kl > 1:
        errors.append(f"topk + kl ({c.topk!r} + {c.kl!r}) must not exceed 1")
    if c.linear_scope not in LINEAR_SCOPES:
        errors.append(
            f"linear_scope ({c.linear_scope!r}) must be one of {', '.join(LINEAR_SCOPES)}"
        )
    if c.backend not in BACKENDS:
        errors.append(f"backend ({c.backend!r}) must be one of {', '.join(BACKENDS)}")
    return errors

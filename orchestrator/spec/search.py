"""The `sla:` section of an experiment YAML: a search space over SLAConfig fields."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

from orchestrator.spec.schema import SEARCH_KINDS, SearchParam
from orchestrator.values import is_num
from sla_kernel_glue import SLAConfig

SLA_FIELDS = tuple(f.name for f in dataclasses.fields(SLAConfig))
NUMERIC_FIELDS = ("topk", "kl", "blkq", "blkk")
INT_FIELDS = ("blkq", "blkk")


def parse_sla_space(value: Any, errors: list[str]) -> tuple[SearchParam, ...] | None:
    """Parse `sla:`; append one line per problem to `errors` (returns None when unusable)."""
    if not isinstance(value, Mapping) or not value:
        errors.append(
            "sla: empty search space; give at least one SLAConfig field as a value, "
            f"{{grid: [...]}}, {{choice: [...]}}, {{uniform: [lo, hi]}} or {{loguniform: [lo, hi]}}; "
            f"fields: {', '.join(SLA_FIELDS)}"
        )
        return None
    params: list[SearchParam] = []
    n_before = len(errors)
    for field, entry in value.items():
        key = f"sla.{field}"
        if field not in SLA_FIELDS:
            errors.append(f"unknown key {key}; allowed: {', '.join(SLA_FIELDS)}")
            continue
        param = _parse_entry(key, field, entry, errors)
        if param is not None:
            params.append(param)
    if len(errors) == n_before:
        _check_combinations(params, errors)
    return tuple(params) if len(errors) == n_before else None


def _parse_entry(key: str, field: str, entry: Any, errors: list[str]) -> SearchParam | None:
    if not isinstance(entry, Mapping):
        if isinstance(entry, list):
            errors.append(f"{key}: a list needs a kind, e.g. {{grid: {entry!r}}}")
            return None
        return _checked(key, SearchParam(field, "fixed", (entry,)), errors)
    if len(entry) != 1 or next(iter(entry)) not in SEARCH_KINDS:
        errors.append(f"{key} ({dict(entry)!r}) must have exactly one of {', '.join(SEARCH_KINDS)}")
        return None
    kind, values = next(iter(entry.items()))
    if not isinstance(values, list) or not values:
        errors.append(f"{key}.{kind} must be a non-empty list (empty search space)")
        return None
    if kind in ("uniform", "loguniform"):
        if field not in NUMERIC_FIELDS:
            errors.append(
                f"{key}.{kind}: ranges need a numeric field ({', '.join(NUMERIC_FIELDS)})"
            )
            return None
        if len(values) != 2 or not all(is_num(v) for v in values) or not values[0] < values[1]:
            errors.append(f"{key}.{kind} ({values!r}) must be [lo, hi] numbers with lo < hi")
            return None
        if kind == "loguniform" and values[0] <= 0:
            errors.append(f"{key}.loguniform ({values!r}) needs lo > 0")
            return None
        if field in INT_FIELDS:
            errors.append(
                f"{key}.{kind}: {field} is an integer; use {{grid: [...]}} or {{choice: [...]}}"
            )
            return None
    elif len(set(map(repr, values))) != len(values):
        errors.append(f"{key}.{kind} ({values!r}) has repeated values")
        return None
    return _checked(key, SearchParam(field, kind, tuple(values)), errors)


def _checked(key: str, param: SearchParam, errors: list[str]) -> SearchParam | None:
    """Each value alone must make a valid SLAConfig (e.g. topk in (0, 1])."""
    bad = []
    for v in param.values:
        try:
            SLAConfig.from_dict({param.field: v})
        except ValueError as exc:
            bad.append(str(exc))
    if bad:
        errors.append(f"{key}: " + "; ".join(dict.fromkeys(bad)))
        return None
    return param


def _check_combinations(params: list[SearchParam], errors: list[str]) -> None:
    """Joint constraints (topk + kl <= 1) over grid/choice values and range endpoints."""
    axes = [[(p.field, v) for v in p.values] for p in params]
    seen = set()
    for combo in itertools.islice(itertools.product(*axes), 10_000):
        try:
            SLAConfig.from_dict(dict(combo))
        except ValueError as exc:
            msg = str(exc)
            if msg not in seen:
                seen.add(msg)
                errors.append(f"sla: the combination {dict(combo)!r} is invalid: {msg}")


def parse_extra_trials(
    value: Any, params: tuple[SearchParam, ...] | None, algorithm: str, errors: list[str]
) -> tuple[dict[str, Any], ...]:
    """Parse `extra_trials:`, a list of SLA settings run as trials besides the search space.

    Each entry overrides the `sla:` values for one trial (e.g. a sparse-only ablation,
    {topk: 0.05, linear_scope: none}); with the fixed values it must make a valid SLAConfig.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        errors.append(
            f"extra_trials ({value!r}) must be a list of SLA settings, e.g. [{{topk: 0.05, linear_scope: none}}]"
        )
        return ()
    if value and algorithm not in ("grid", "random"):
        errors.append(f"extra_trials need search.algorithm grid or random, not {algorithm}")
        return ()
    fixed = {p.field: p.values[0] for p in params or () if p.kind == "fixed"}
    out = []
    for i, entry in enumerate(value):
        key = f"extra_trials[{i}]"
        if not isinstance(entry, Mapping) or not entry:
            errors.append(f"{key} ({entry!r}) must be a non-empty mapping of SLA settings")
            continue
        unknown = [str(f) for f in entry if f not in SLA_FIELDS]
        if unknown:
            errors.append(
                f"{key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SLA_FIELDS)}"
            )
            continue
        try:
            SLAConfig.from_dict({**fixed, **entry})
        except ValueError as exc:
            errors.append(f"{key}: {exc}")
            continue
        out.append(dict(entry))
    return tuple(out)

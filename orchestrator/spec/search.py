"""The search space of an experiment YAML: SLAConfig fields in `sla:`, and training settings
marked with a search kind inside `train:` (the study can vary learning rate and sparsity together):

    sla:   {topk: {grid: [0.05, 0.1]}}
    train: {lr: {grid: [1.0e-4, 3.0e-4]}, lora: {rank: {grid: [4, 16]}}}

A training entry's field is its dotted key (`train.lr`, `train.lora.rank`); a trial's config holds
it under "train" without the prefix (records.trial_train applies it).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.recipe.config import TrainConfig
from orchestrator.recipe.config_fields import searchable_fields
from orchestrator.recipe.topk_schedule import schedule_error
from orchestrator.spec.schema import METRIC_NAMES, MODES, SEARCH_KINDS, SearchParam
from orchestrator.values import is_int, is_num
from sla_kernel_glue import SLAConfig, TopkSchedule

SLA_FIELDS = tuple(f.name for f in dataclasses.fields(SLAConfig))
NUMERIC_FIELDS = ("topk", "kl", "blkq", "blkk")
INT_FIELDS = ("blkq", "blkk")
MAPPING_FIELDS = ("topk_schedule",)  # a mapping without a search kind is their fixed value

# Training settings a search may vary and their type, as TrainConfig declares them (lora.* inside
# train.lora): ranges for the float ones, grid/choice for all.
TRAIN_SEARCH = searchable_fields(TrainConfig)
TRAIN_PREFIX = "train."
MAX_TRAIN_COMBINATIONS = 256  # the joint check over training values builds a TrainConfig each


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
        param = _parse_entry(key, field, entry, errors, _sla_rules(field))
        if param is not None:
            params.append(param)
    if len(errors) == n_before:
        _check_combinations(params, errors)
    return tuple(params) if len(errors) == n_before else None


@dataclasses.dataclass(frozen=True)
class _Rules:
    """What one searchable field takes: ranges (numeric), only grid/choice (integer), and a check
    of one value alone (an error message or None)."""

    numeric: bool
    integer: bool
    check: Callable[[Any], str | None]
    numeric_fields: tuple[str, ...]  # named when a range is asked of another field


def _sla_rules(field: str) -> _Rules:
    def check(value: Any) -> str | None:
        try:
            SLAConfig.from_dict({field: value})
        except ValueError as exc:
            return str(exc)
        return None

    return _Rules(field in NUMERIC_FIELDS, field in INT_FIELDS, check, NUMERIC_FIELDS)


def _parse_entry(key: str, field: str, entry: Any, errors: list[str], rules: _Rules):
    if not isinstance(entry, Mapping) or (
        field in MAPPING_FIELDS and not set(entry) & set(SEARCH_KINDS)
    ):
        if isinstance(entry, list):
            errors.append(f"{key}: a list needs a kind, e.g. {{grid: {entry!r}}}")
            return None
        return _checked(key, SearchParam(field, "fixed", (entry,)), errors, rules)
    if len(entry) != 1 or next(iter(entry)) not in SEARCH_KINDS:
        errors.append(f"{key} ({dict(entry)!r}) must have exactly one of {', '.join(SEARCH_KINDS)}")
        return None
    kind, values = next(iter(entry.items()))
    if not isinstance(values, list) or not values:
        errors.append(f"{key}.{kind} must be a non-empty list (empty search space)")
        return None
    if kind in ("uniform", "loguniform"):
        if not rules.numeric:
            names = ", ".join(rules.numeric_fields)
            errors.append(f"{key}.{kind}: ranges need a numeric field ({names})")
            return None
        if len(values) != 2 or not all(is_num(v) for v in values) or not values[0] < values[1]:
            errors.append(f"{key}.{kind} ({values!r}) must be [lo, hi] numbers with lo < hi")
            return None
        if kind == "loguniform" and values[0] <= 0:
            errors.append(f"{key}.loguniform ({values!r}) needs lo > 0")
            return None
        if rules.integer:
            errors.append(
                f"{key}.{kind}: {key} is an integer; use {{grid: [...]}} or {{choice: [...]}}"
            )
            return None
    elif len(set(map(repr, values))) != len(values):
        errors.append(f"{key}.{kind} ({values!r}) has repeated values")
        return None
    return _checked(key, SearchParam(field, kind, tuple(values)), errors, rules)


def _checked(key: str, param: SearchParam, errors: list[str], rules: _Rules):
    """Each value alone must be valid (e.g. topk in (0, 1])."""
    bad = [msg for v in param.values if (msg := rules.check(v)) is not None]
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


# ---- training settings ----------------------------------------------------------------------


def split_train_space(train: Any, errors: list[str]) -> tuple[Any, tuple[SearchParam, ...]]:
    """Take the search entries ({grid: [...]}, ...) out of the `train:` section.

    Returns the section with each searched key set to its control value (what the full-attention
    control runs with, and what the other keys are checked against) and the entries.
    """
    if not isinstance(train, Mapping):
        return train, ()
    out = dict(train)
    if isinstance(train.get("lora"), Mapping):
        out["lora"] = dict(train["lora"])
    params = []
    for key, value in _train_items(train):
        if not (isinstance(value, Mapping) and any(k in SEARCH_KINDS for k in value)):
            if not (isinstance(value, list) and key in TRAIN_SEARCH):
                continue
        full = TRAIN_PREFIX + key
        param = None
        if key in TRAIN_SEARCH:
            param = _parse_entry(full, full, value, errors, _train_rules(key))
        else:
            allowed = ", ".join(TRAIN_PREFIX + k for k in TRAIN_SEARCH)
            errors.append(f"{full} cannot be searched; searchable training settings: {allowed}")
        _set_dotted(out, key, None if param is None else control_value(param))
        if param is not None and param.kind != "fixed":
            params.append(param)
    return out, tuple(params)


def check_train_space(
    train: Mapping[str, Any], params: tuple[SearchParam, ...], errors: list[str]
) -> None:
    """Every searched value (range ends included), with the rest of `train` at its control
    values, must make a valid TrainConfig; then every combination of them (up to 256).

    Each bad value is reported, also when the control values themselves are invalid (reported
    by the caller): a value's problems are those its config has beyond the control's."""
    n_before = len(errors)
    control = set(_train_problems(train, ()))
    for p in params:
        for value in p.values:
            _check_train_values(train, ((p.field, value),), errors, known=control)
    if len(params) > 1 and len(errors) == n_before and not control:
        axes = [[(p.field, v) for v in p.values] for p in params]
        for combo in itertools.islice(itertools.product(*axes), MAX_TRAIN_COMBINATIONS):
            if _check_train_values(train, combo, errors):
                break  # one bad combination says what is wrong


def _check_train_values(
    train: Mapping[str, Any], combo, errors: list[str], *, known: set[str] = frozenset()
) -> bool:
    """Append an error (True) when `train` with the (field, value) pairs is no valid TrainConfig
    for reasons other than those in `known`."""
    problems = [p for p in _train_problems(train, combo) if p not in known]
    if problems:
        where = ", ".join(f"{f} = {v!r}" for f, v in combo)
        errors.append(f"{where}: {'; '.join(problems)}")
    return bool(problems)


def _train_problems(train: Mapping[str, Any], combo) -> list[str]:
    """Why `train` with the (field, value) pairs is no valid TrainConfig, one part per problem."""
    kwargs = dict(train)
    if isinstance(train.get("lora"), Mapping):
        kwargs["lora"] = dict(train["lora"])
    for field, value in combo:
        _set_dotted(kwargs, field.removeprefix(TRAIN_PREFIX), value)
    try:
        TrainConfig.from_dict(kwargs)
    except (TypeError, ValueError) as exc:
        return str(exc).removeprefix("invalid training config: ").split("; ")
    return []


def control_value(param: SearchParam) -> Any:
    """The value a search entry takes where one is needed (the control trial, Optuna's first
    suggestion): the first listed one, or a range's (geometric, for loguniform) middle."""
    if param.kind in ("fixed", "grid", "choice"):
        return param.values[0]
    lo, hi = param.values
    return (lo + hi) / 2 if param.kind == "uniform" else float((lo * hi) ** 0.5)


def _train_items(train: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items = [(str(k), v) for k, v in train.items() if k != "lora"]
    lora = train.get("lora")
    if isinstance(lora, Mapping):
        items += [(f"lora.{k}", v) for k, v in lora.items()]
    return items


def _train_rules(key: str) -> _Rules:
    kind = TRAIN_SEARCH[key]
    name = {int: "an integer", float: "a number", str: "a string"}[kind]
    test = {int: is_int, float: is_num, str: lambda v: isinstance(v, str)}[kind]

    def check(value: Any) -> str | None:
        return None if test(value) else f"{value!r} is not {name}"

    floats = tuple(TRAIN_PREFIX + k for k, t in TRAIN_SEARCH.items() if t is float)
    return _Rules(kind is not str, kind is int, check, floats)


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """values[a][b] = value for key "a.b" (the nested mapping already copied); None removes it."""
    *outer, last = key.split(".")
    target = values
    for part in outer:
        target = target[part]
    if value is None:
        target.pop(last, None)
    else:
        target[last] = value


# ---- repeats and the verdict ----------------------------------------------------------------

MAX_REPEATS = 100
VERDICT_KEYS = ("metric", "mode", "tolerance", "confidence")
HIGHER_IS_BETTER = ("val/sample_psnr", "val/video_psnr", "val/video_ssim", "perf/tokens_per_s")


def parse_seeds(repeats: Any, seeds: Any, base_seed: int, errors: list[str]) -> tuple[int, ...]:
    """`repeats: N` (seeds base_seed, base_seed + 1, ...) or `seeds: [...]`: the seeds every
    config and the control run with; () for one run each (the trial's own train.seed)."""
    if repeats is not None and seeds is not None:
        errors.append("repeats and seeds: give one of them (seeds lists the repeats' seeds)")
        return ()
    if seeds is not None:
        ok = isinstance(seeds, list) and 0 < len(seeds) <= MAX_REPEATS
        if not ok or not all(is_int(s) and s >= 0 for s in seeds) or len(set(seeds)) < len(seeds):
            errors.append(
                f"seeds ({seeds!r}) must be a list of 1 to {MAX_REPEATS} different integers >= 0"
            )
            return ()
        return tuple(seeds)
    if repeats is None or repeats == 1:
        return ()
    if not is_int(repeats) or not 1 <= repeats <= MAX_REPEATS:
        errors.append(f"repeats ({repeats!r}) must be an integer from 1 to {MAX_REPEATS}")
        return ()
    return tuple(range(base_seed, base_seed + repeats))


def parse_verdict(value: Any, metric: str, mode: str, errors: list[str]) -> dict[str, Any]:
    """`verdict: {metric, mode, tolerance, confidence}`: what "holds quality" means. Defaults:
    the sweep's metric and mode, no tolerance, 95 %; another metric's mode is its direction."""
    out = {"metric": metric, "mode": mode, "tolerance": None, "confidence": 0.95}
    if value is None:
        return out
    if not isinstance(value, Mapping):
        errors.append(f"verdict ({value!r}) must be a mapping of {', '.join(VERDICT_KEYS)}")
        return out
    errors += [f"unknown key verdict.{k}; allowed: {', '.join(VERDICT_KEYS)}"
               for k in value if k not in VERDICT_KEYS]  # fmt: skip
    out.update({k: v for k, v in value.items() if k in VERDICT_KEYS})
    if "mode" not in value and out["metric"] != metric:
        out["mode"] = "max" if out["metric"] in HIGHER_IS_BETTER else "min"
    if out["mode"] not in MODES:
        errors.append(f"verdict.mode ({out['mode']!r}) must be one of {', '.join(MODES)}")
    if out["metric"] not in METRIC_NAMES:
        errors.append(
            f"verdict.metric ({out['metric']!r}) must be one of {', '.join(METRIC_NAMES)}"
        )
    tol = out["tolerance"]
    if tol is not None and not (is_num(tol) and tol >= 0):
        errors.append(f"verdict.tolerance ({tol!r}) must be a number >= 0 or null")
    conf = out["confidence"]
    if not (is_num(conf) and 0.5 <= conf < 1):
        errors.append(f"verdict.confidence ({conf!r}) must be a number in [0.5, 1)")
    return out


def check_schedules(
    sla: tuple[SearchParam, ...] | None,
    extra: tuple[dict[str, Any], ...],
    train: Mapping[str, Any],
    train_space: tuple[SearchParam, ...],
    errors: list[str],
) -> None:
    """A topk schedule must end within the trial (before Ray starts, not in the first trial):
    the recipe's check (schedule_error) against the fewest train.steps any trial runs."""
    steps = [v for p in train_space if p.field == "train.steps" for v in p.values]
    fewest = min(steps or [train.get("steps", TrainConfig.steps)])
    schedules = [v for p in sla or () if p.field == "topk_schedule" for v in p.values]
    schedules += [e["topk_schedule"] for e in extra if "topk_schedule" in e]
    for schedule in schedules:
        # each value passed SLAConfig alone (parse_sla_space, parse_extra_trials); None: no
        # schedule. Negative steps are train.steps' own error.
        if schedule is not None and is_int(fewest) and fewest >= 0:
            error = schedule_error(TopkSchedule.from_value(schedule), fewest)
            if error is not None:
                errors.append(error)

"""Experiment YAML -> validated ExperimentSpec. Nothing starts here: no Ray, no files written.

Every problem is collected and reported at once, each naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec.bounded_yaml import load_bounded
from orchestrator.spec.recipe import train_kwargs
from orchestrator.spec.schema import (
    ALGORITHMS,
    METRIC_NAMES,
    MODES,
    SCHEDULERS,
    CheckpointSpec,
    ExperimentSpec,
    FailureSpec,
    Objective,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    VerdictSpec,
)
from orchestrator.spec.search import (
    check_schedules,
    check_train_space,
    parse_extra_trials,
    parse_seeds,
    parse_sla_space,
    parse_verdict,
    split_train_space,
)
from orchestrator.spec.storage_spec import parse_storage
from orchestrator.values import is_int, is_num, shown

__all__ = [
    "ExperimentSpec", "SpecError", "load_spec", "parse_spec", "apply_overrides", "read_yaml",
]  # fmt: skip

TOP_KEYS = (
    "name", "profile", "profiles", "model", "data", "train", "sla", "control", "search",
    "scheduler", "resources", "max_concurrent_trials", "metric", "mode", "storage", "checkpoint",
    "failure", "extra_trials", "validation", "repeats", "seeds", "verdict",
)  # fmt: skip
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch


MAX_ERRORS = 20  # problems listed in one message (then how many more)
MAX_ERROR_CHARS = 500  # one problem's text; longer ones keep their start and end
MAX_YAML_BYTES = 1 << 20  # an experiment file (or a --set value)


class SpecError(ValueError):
    """The experiment file is invalid; `errors` holds one line per problem, each bounded."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        parts = [part for e in errors for part in str(e).split("; ")]  # "a; b" from a config
        self.errors = [_bounded(part) for part in parts[:MAX_ERRORS]]
        if len(parts) > MAX_ERRORS:
            self.errors.append(f"and {len(parts) - MAX_ERRORS} more problems")
        super().__init__(f"{_bounded(str(source))}: " + "; ".join(self.errors))


def _bounded(text: str) -> str:
    """A problem's text with each line at most MAX_ERROR_CHARS (its start and end kept) and at
    most MAX_ERRORS lines (a folder's problems come one per line)."""
    lines = [
        line if len(line) <= MAX_ERROR_CHARS
        else line[: MAX_ERROR_CHARS // 2] + " ... " + line[-MAX_ERROR_CHARS // 3 :]
        for line in text.splitlines()[:MAX_ERRORS]
    ]  # fmt: skip
    more = len(text.splitlines()) - MAX_ERRORS
    return "\n".join(lines + ([f"and {more} more lines"] if more > 0 else []))


def read_yaml(text: str, source: str) -> Any:
    """YAML text -> plain values (safe tags only), bounded in size and alias expansion; a
    SpecError naming `source` and where the problem is."""
    if len(text) > MAX_YAML_BYTES:
        raise SpecError(source, [f"{len(text):,} characters of YAML; at most {MAX_YAML_BYTES:,}"])
    try:
        return load_bounded(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(source, [f"not valid YAML{where}: {problem}"]) from None


def load_spec(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    cwd: Path | None = None,
    gpus_available: int | None = None,
) -> ExperimentSpec:
    """Read an experiment YAML, apply `--set key=value` overrides and validate it.

    Relative storage paths resolve against `cwd` (default: the working directory).
    `gpus_available` (default: torch.cuda.device_count()) is checked against the GPUs asked for.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), ["no such experiment file"])
    if path.stat().st_size > MAX_YAML_BYTES:
        raise SpecError(str(path), [f"{path.stat().st_size:,} bytes; at most {MAX_YAML_BYTES:,}"])
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [f"cannot be read as text ({exc})"]) from None
    raw = read_yaml(text, str(path))
    return parse_spec(
        raw, overrides=overrides, source=str(path), cwd=cwd, gpus_available=gpus_available
    )


def apply_overrides(raw: Any, overrides: Sequence[str], *, source: str = "--set") -> Any:
    """Set dotted keys (`train.steps=20`, `sla.topk={grid: [0.1, 0.2]}`); values are YAML."""
    if not overrides:
        return raw
    if not isinstance(raw, Mapping):
        return raw  # parse_spec reports the top-level type
    out = copy.deepcopy(dict(raw))
    errors = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"--set {shown(item)}: expected key=value, e.g. train.steps=20")
            continue
        try:
            value = read_yaml(text, f"--set {key}") if text.strip() else None
        except SpecError as exc:
            errors.append(f"--set {key}: value {shown(text)} is {exc.errors[0]}")
            continue
        node = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None and not isinstance(child, Mapping):
                    errors.append(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
                    break
                child = dict(child or {})
                node[part] = child
            node = child
        else:
            node[parts[-1]] = value
    if errors:
        raise SpecError(source, errors)
    return out


def parse_spec(
    raw: Any,
    *,
    overrides: Sequence[str] = (),
    source: str = "<spec>",
    cwd: Path | None = None,
    gpus_available: int | None = None,
) -> ExperimentSpec:
    """Validate an already-loaded YAML mapping; raise SpecError listing every problem.

    `--set` overrides win over the chosen profile: they are applied before the profile is picked
    (so `--set profile=gpu` works) and again after it is merged.
    """
    raw = apply_overrides(raw, overrides, source=source)
    if not isinstance(raw, Mapping):
        raise SpecError(source, [f"top level must be a mapping of {', '.join(TOP_KEYS)}"])
    errors: list[str] = []
    raw = apply_overrides(_select_profile(dict(raw), errors), overrides, source=source)
    errors += _unknown(raw, TOP_KEYS, "")
    cwd = (cwd or Path.cwd()).resolve()

    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # no trailing newline either
        errors.append(
            f"name ({shown(name)}) is required: 1-64 characters of letters, digits, '_', '.', '-'"
        )
    train_section, train_space = split_train_space(raw.get("train"), errors)
    n_before = len(errors)
    sections = (raw.get("model"), raw.get("data"), train_section)
    train = train_kwargs(*sections, errors, cwd, validation=raw.get("validation"))
    if train_space and not any(e.startswith("unknown key") for e in errors[n_before:]):
        check_train_space(train, train_space, errors)  # each bad searched value, named
    sla = parse_sla_space(raw.get("sla"), errors)
    control = _bool(raw, "control", True, errors)
    metric = _choice(raw, "metric", "val/loss", METRIC_NAMES, errors)
    mode = _choice(raw, "mode", "min", MODES, errors)
    search = _search(_section(raw, "search", errors), errors)
    scheduler = _scheduler(raw.get("scheduler", "none"), metric, mode, errors)
    resources = _resources(_section(raw, "resources", errors), errors, gpus_available)
    max_conc = _max_concurrent(raw.get("max_concurrent_trials", "auto"), errors)
    storage_sec = _section(raw, "storage", errors)
    errors += _unknown(storage_sec, ("results_dir", "tracking_uri"), "storage.")
    storage = parse_storage(storage_sec, cwd, errors)
    errors += _size_errors(train)
    ck = _section(raw, "checkpoint", errors)
    errors += _unknown(ck, ("num_to_keep",), "checkpoint.")
    num_to_keep = _int(ck, "checkpoint.num_to_keep", "num_to_keep", 2, 1, errors)
    fail = _section(raw, "failure", errors)
    errors += _unknown(fail, ("max_failures",), "failure.")
    max_failures = _int(fail, "failure.max_failures", "max_failures", 0, -1, errors)

    extra = parse_extra_trials(raw.get("extra_trials"), sla, search.algorithm, errors)
    _check_combinations(sla, extra, search, train, errors, train_space)
    seeds = parse_seeds(raw.get("repeats"), raw.get("seeds"), train.get("seed", 0), errors)
    if seeds and search.algorithm == "optuna":
        errors.append("repeats/seeds need search.algorithm grid or random, not optuna")
    verdict = parse_verdict(raw.get("verdict"), metric, mode, errors)
    check_schedules(sla, extra, train, train_space, errors)
    if errors:
        raise SpecError(source, errors)
    return ExperimentSpec(
        name=name,
        train=train,
        sla=sla,
        control=control,
        search=search,
        scheduler=scheduler,
        resources=resources,
        max_concurrent_trials=max_conc,
        metric=metric,
        mode=mode,
        storage=storage,
        checkpoint=CheckpointSpec(num_to_keep=num_to_keep),
        failure=FailureSpec(max_failures=max_failures),
        source=_plain(raw),
        extra_trials=extra,
        train_space=train_space,
        seeds=seeds,
        verdict=VerdictSpec(**verdict),
    )


def _size_errors(train: Mapping) -> list[str]:
    """Step counts beyond any run (orchestrator.spec.sizes), once the training settings are
    valid (their own problems are listed already). Memory is the machine's: `run` checks it."""
    from orchestrator.spec import sizes
    from orchestrator.spec.recipe import build_train_config

    try:
        config = build_train_config(train)
    except (TypeError, ValueError):
        return []
    return sizes.step_errors(config)


def _max_concurrent(value: Any, errors: list[str]) -> int | None:
    if value == "auto" or value is None:
        return None
    if not is_int(value) or value < 1:
        errors.append(f"max_concurrent_trials ({shown(value)}) must be a positive integer or auto")
    return value


def _check_combinations(
    sla, extra: list, search: SearchSpec, train: Mapping | None, errors: list[str], train_space=()
) -> None:
    """What no single section can check: the SLA space against the search and the training."""
    scopes = {v for p in sla or () if p.field == "linear_scope" for v in p.values}
    scopes |= {e["linear_scope"] for e in extra if "linear_scope" in e}
    frozen = train is not None and train.get("train_base") is False and train.get("lora") is None
    if "none" in scopes and frozen:
        errors.append(
            "linear_scope none (sparse-only) has no trainable SLA weights, so it needs "
            "train.train_base true (it is false)"
        )
    entries = [(f"sla.{p.field}", p) for p in sla or ()] + [(p.field, p) for p in train_space]
    if search.algorithm == "grid":
        for key, p in entries:
            if p.kind in ("choice", "uniform", "loguniform"):
                errors.append(
                    f"{key}: {p.kind} needs search.algorithm random or optuna "
                    "(grid search takes fixed values and {grid: [...]})"
                )
    if (
        search.algorithm != "grid"
        and sla is not None
        and all(p.kind == "fixed" for _, p in entries)
    ):
        errors.append("sla: random/optuna search needs at least one grid, choice or range entry")


# ---- sections -----------------------------------------------------------------------------------
def _select_profile(raw: dict, errors: list[str]) -> dict:
    profiles = raw.get("profiles", {})
    chosen = raw.get("profile")
    if profiles is None:
        profiles = {}
    if not isinstance(profiles, Mapping):
        errors.append("profiles must be a mapping of profile name -> settings to merge")
        return raw
    if chosen is None or chosen == "none":
        return raw
    if chosen not in profiles:
        allowed = ", ".join(map(str, profiles)) or "(none defined)"
        errors.append(f"profile ({shown(chosen)}) is not defined; allowed: none, {allowed}")
        return raw
    patch = profiles[chosen]
    if not isinstance(patch, Mapping):
        errors.append(f"profiles.{chosen} must be a mapping of settings")
        return raw
    return _merge(raw, patch)


def _merge(base: Mapping, patch: Mapping) -> dict:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _search(sec: Mapping, errors: list[str]) -> SearchSpec:
    errors += _unknown(sec, ("algorithm", "num_samples", "seed", "objectives"), "search.")
    algorithm = _choice(sec, "algorithm", "grid", ALGORITHMS, errors, prefix="search.")
    num_samples = _int(sec, "search.num_samples", "num_samples", 1, 1, errors)
    seed = _int(sec, "search.seed", "seed", 0, 0, errors)
    objectives: list[Objective] = []
    raw_obj = sec.get("objectives")
    if raw_obj is not None:
        if algorithm != "optuna":
            errors.append("search.objectives needs search.algorithm optuna")
        elif not isinstance(raw_obj, list) or not raw_obj:
            errors.append("search.objectives must be a non-empty list of {metric: ..., mode: ...}")
        else:
            for i, item in enumerate(raw_obj):
                key = f"search.objectives[{i}]"
                if not isinstance(item, Mapping):
                    errors.append(f"{key} must be a mapping {{metric: ..., mode: min|max}}")
                    continue
                errors += _unknown(item, ("metric", "mode"), f"{key}.")
                m = _choice(item, "metric", None, METRIC_NAMES, errors, prefix=f"{key}.")
                mo = _choice(item, "mode", "min", MODES, errors, prefix=f"{key}.")
                objectives.append(Objective(m, mo))
    return SearchSpec(algorithm, num_samples, seed, tuple(objectives))


def _scheduler(value: Any, metric: str, mode: str, errors: list[str]) -> SchedulerSpec:
    if value is None or value == "none":
        return SchedulerSpec()
    if value == "asha":
        value = {"name": "asha"}
    if not isinstance(value, Mapping):
        errors.append(f"scheduler ({shown(value)}) must be none, asha, or {{name: asha, ...}}")
        return SchedulerSpec()
    keys = ("name", "metric", "mode", "grace_period", "reduction_factor", "max_t")
    errors += _unknown(value, keys, "scheduler.")
    name = _choice(value, "name", "asha", SCHEDULERS, errors, prefix="scheduler.")
    sched_metric = _choice(value, "metric", metric, METRIC_NAMES, errors, prefix="scheduler.")
    sched_mode = _choice(value, "mode", mode, MODES, errors, prefix="scheduler.")
    grace = _int(value, "scheduler.grace_period", "grace_period", 1, 1, errors)
    max_t = _int(value, "scheduler.max_t", "max_t", 100, 1, errors)
    rf = value.get("reduction_factor", 2.0)
    if not is_num(rf) or rf <= 1:
        errors.append(f"scheduler.reduction_factor ({shown(rf)}) must be a number > 1")
        rf = 2.0
    return SchedulerSpec(name, sched_metric, sched_mode, grace, float(rf), max_t)


def _resources(sec: Mapping, errors: list[str], gpus_available: int | None) -> ResourcesSpec:
    errors += _unknown(
        sec,
        ("workers_per_trial", "cpus_per_worker", "gpus_per_worker", "custom_per_worker"),
        "resources.",
    )
    workers = _int(sec, "resources.workers_per_trial", "workers_per_trial", 1, 1, errors)
    cpus = sec.get("cpus_per_worker", 1)
    if not is_num(cpus) or cpus <= 0:
        errors.append(f"resources.cpus_per_worker ({shown(cpus)}) must be a number > 0")
        cpus = 1
    gpus = sec.get("gpus_per_worker", 0)
    if not is_num(gpus) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        errors.append(
            f"resources.gpus_per_worker ({shown(gpus)}) must be 0, a fraction in (0, 1] or a whole number"
        )
        gpus = 0
    if gpus > 0:
        have = _gpu_count() if gpus_available is None else gpus_available
        if have == 0:
            errors.append(
                f"resources.gpus_per_worker ({gpus}) asks for GPUs but this machine has none; "
                "set resources.gpus_per_worker=0 or run with --address on a GPU cluster"
            )
    custom = _custom_resources(sec.get("custom_per_worker", {}), errors)
    return ResourcesSpec(workers, float(cpus), float(gpus), custom)


RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _custom_resources(value: Any, errors: list[str]) -> dict[str, float]:
    """resources.custom_per_worker: Ray custom resource name -> amount each worker asks for."""
    key = "resources.custom_per_worker"
    if not isinstance(value, Mapping):
        errors.append(
            f"{key} must be a mapping of Ray resource name to amount, e.g. {{trial_node: 1}}, "
            f"got {type(value).__name__} {shown(value)}"
        )
        return {}
    out = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]*", name):
            errors.append(
                f"{key} name {shown(name)} must be a Ray resource name: letters, digits, "
                "_ . : - (starting with a letter or _)"
            )
        elif name in RAY_BUILTIN_RESOURCES:
            errors.append(
                f"{key}.{name} is one of Ray's own resources, not a custom one; CPUs and GPUs "
                "are resources.cpus_per_worker and resources.gpus_per_worker"
            )
        elif not is_num(amount) or amount <= 0:
            errors.append(f"{key}.{name} ({shown(amount)}) must be a number > 0")
        else:
            out[name] = float(amount)
    return out


# ---- small helpers ------------------------------------------------------------------------------
def _section(raw: Mapping, key: str, errors: list[str]) -> Mapping:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errors.append(f"{key} must be a mapping, got {type(value).__name__} {shown(value)}")
        return {}
    return value


def _unknown(sec: Mapping, allowed: Sequence[str], prefix: str) -> list[str]:
    return [
        f"unknown key {prefix}{k if isinstance(k, str) and k.isprintable() else shown(k)}; "
        f"allowed: {', '.join(allowed)}"
        for k in sec
        if k not in allowed
    ]


def _choice(sec, key, default, allowed, errors, prefix=""):
    value = sec.get(key, default)
    if value not in allowed:
        errors.append(f"{prefix}{key} ({shown(value)}) must be one of {', '.join(allowed)}")
        return default if default in allowed else allowed[0]
    return value


def _bool(sec: Mapping, key: str, default: bool, errors: list[str]) -> bool:
    value = sec.get(key, default)
    if not isinstance(value, bool):
        errors.append(f"{key} ({shown(value)}) must be true or false")
        return default
    return value


def _int(sec: Mapping, full: str, key: str, default: int, low: int, errors: list[str]) -> int:
    value = sec.get(key, default)
    if not is_int(value) or value < low:
        errors.append(f"{full} ({shown(value)}) must be an integer >= {low}")
        return default
    return value


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

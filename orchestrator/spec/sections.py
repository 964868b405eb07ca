"""The sections of an experiment YAML that stand alone (the profile, search, scheduler,
resources, max_concurrent_trials) and the small checks every section uses (a mapping, its keys, a
choice, a bool, an int). Each appends its problems to `errors` and returns a usable value.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.spec.schema import (
    ALGORITHMS,
    METRIC_NAMES,
    MODES,
    SCHEDULERS,
    Objective,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
)
from orchestrator.values import is_int, is_num, shown


def select_profile(raw: dict, errors: list[str]) -> dict:
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


def parse_search(sec: Mapping, errors: list[str]) -> SearchSpec:
    errors += unknown_keys(sec, ("algorithm", "num_samples", "seed", "objectives"), "search.")
    algorithm = choice(sec, "algorithm", "grid", ALGORITHMS, errors, prefix="search.")
    num_samples = integer(sec, "search.num_samples", "num_samples", 1, 1, errors)
    seed = integer(sec, "search.seed", "seed", 0, 0, errors)
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
                errors += unknown_keys(item, ("metric", "mode"), f"{key}.")
                m = choice(item, "metric", None, METRIC_NAMES, errors, prefix=f"{key}.")
                mo = choice(item, "mode", "min", MODES, errors, prefix=f"{key}.")
                objectives.append(Objective(m, mo))
    return SearchSpec(algorithm, num_samples, seed, tuple(objectives))


def parse_scheduler(value: Any, metric: str, mode: str, errors: list[str]) -> SchedulerSpec:
    if value is None or value == "none":
        return SchedulerSpec()
    if value == "asha":
        value = {"name": "asha"}
    if not isinstance(value, Mapping):
        errors.append(f"scheduler ({shown(value)}) must be none, asha, or {{name: asha, ...}}")
        return SchedulerSpec()
    keys = ("name", "metric", "mode", "grace_period", "reduction_factor", "max_t")
    errors += unknown_keys(value, keys, "scheduler.")
    name = choice(value, "name", "asha", SCHEDULERS, errors, prefix="scheduler.")
    sched_metric = choice(value, "metric", metric, METRIC_NAMES, errors, prefix="scheduler.")
    sched_mode = choice(value, "mode", mode, MODES, errors, prefix="scheduler.")
    grace = integer(value, "scheduler.grace_period", "grace_period", 1, 1, errors)
    max_t = integer(value, "scheduler.max_t", "max_t", 100, 1, errors)
    rf = value.get("reduction_factor", 2.0)
    if not is_num(rf) or rf <= 1:
        errors.append(f"scheduler.reduction_factor ({shown(rf)}) must be a number > 1")
        rf = 2.0
    return SchedulerSpec(name, sched_metric, sched_mode, grace, float(rf), max_t)


def parse_resources(sec: Mapping, errors: list[str], gpus_available: int | None) -> ResourcesSpec:
    errors += unknown_keys(
        sec,
        (
            "workers_per_trial",
            "cpus_per_worker",
            "gpus_per_worker",
            "custom_per_worker",
            "gpu_memory_gib",
        ),
        "resources.",
    )
    workers = integer(sec, "resources.workers_per_trial", "workers_per_trial", 1, 1, errors)
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
    memory = sec.get("gpu_memory_gib")
    if memory is not None and (not is_num(memory) or memory <= 0):
        errors.append(f"resources.gpu_memory_gib ({shown(memory)}) must be a number > 0 (GiB)")
        memory = None
    if gpus > 0 and memory is None:  # given: the trials' GPUs are a cluster's, not this machine's
        have = _gpu_count() if gpus_available is None else gpus_available
        if have == 0:
            errors.append(
                f"resources.gpus_per_worker ({gpus}) asks for GPUs but this machine has none; "
                "set resources.gpus_per_worker=0 or run with --address on a GPU cluster "
                "(with resources.gpu_memory_gib)"
            )
    custom = _custom_resources(sec.get("custom_per_worker", {}), errors)
    gib = None if memory is None else float(memory)
    return ResourcesSpec(workers, float(cpus), float(gpus), custom, gib)


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


def parse_max_concurrent(value: Any, errors: list[str]) -> int | None:
    if value == "auto" or value is None:
        return None
    if not is_int(value) or value < 1:
        errors.append(f"max_concurrent_trials ({shown(value)}) must be a positive integer or auto")
    return value


def _gpu_count() -> int:
    import torch  # heavy: loaded only when a spec asks for GPUs, never by the CLI's start

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---- small helpers ------------------------------------------------------------------------------
def section(raw: Mapping, key: str, errors: list[str]) -> Mapping:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errors.append(f"{key} must be a mapping, got {type(value).__name__} {shown(value)}")
        return {}
    return value


def unknown_keys(sec: Mapping, allowed: Sequence[str], prefix: str) -> list[str]:
    return [
        f"unknown key {prefix}{k if isinstance(k, str) and k.isprintable() else shown(k)}; "
        f"allowed: {', '.join(allowed)}"
        for k in sec
        if k not in allowed
    ]


def choice(sec, key, default, allowed, errors, prefix=""):
    value = sec.get(key, default)
    if value not in allowed:
        errors.append(f"{prefix}{key} ({shown(value)}) must be one of {', '.join(allowed)}")
        return default if default in allowed else allowed[0]
    return value


def boolean(sec: Mapping, key: str, default: bool, errors: list[str]) -> bool:
    value = sec.get(key, default)
    if not isinstance(value, bool):
        errors.append(f"{key} ({shown(value)}) must be true or false")
        return default
    return value


def integer(sec: Mapping, full: str, key: str, default: int, low: int, errors: list[str]) -> int:
    value = sec.get(key, default)
    if not is_int(value) or value < low:
        errors.append(f"{full} ({shown(value)}) must be an integer >= {low}")
        return default
    return value

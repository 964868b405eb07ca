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

from orchestrator.spec import sizes
from orchestrator.spec.bounded_yaml import load_bounded
from orchestrator.spec.recipe import build_train_config, train_kwargs
from orchestrator.spec.schema import (
    METRIC_NAMES,
    MODES,
    CheckpointSpec,
    ExperimentSpec,
    FailureSpec,
    SearchSpec,
    StorageSpec,
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
from orchestrator.spec.sections import (
    boolean,
    choice,
    integer,
    parse_max_concurrent,
    parse_resources,
    parse_scheduler,
    parse_search,
    section,
    select_profile,
    unknown_keys,
)
from orchestrator.spec.storage_spec import parse_storage
from orchestrator.values import shown

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
    raw = apply_overrides(select_profile(dict(raw), errors), overrides, source=source)
    errors += unknown_keys(raw, TOP_KEYS, "")
    cwd = (cwd or Path.cwd()).resolve()
    # each step appends its problems to `errors`, in the order they are listed
    name = _name(raw.get("name"), errors)
    train, train_space = _training(raw, cwd, errors)
    sla = parse_sla_space(raw.get("sla"), errors)
    run = _run_settings(raw, errors, gpus_available)
    storage = _storage(raw, cwd, errors)
    errors += _size_errors(train)
    limits = _limits(raw, errors)
    trials = _trials(raw, sla, train, train_space, run, errors)
    if errors:
        raise SpecError(source, errors)
    return ExperimentSpec(name=name, train=train, sla=sla, storage=storage, source=_plain(raw),
                          train_space=train_space, **run, **limits, **trials)  # fmt: skip


def _name(name: Any, errors: list[str]) -> Any:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # no trailing newline either
        errors.append(
            f"name ({shown(name)}) is required: 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return name


def _training(raw: Mapping, cwd: Path, errors: list[str]) -> tuple[dict, tuple]:
    """`model`, `data` and `train` -> the training settings, and the searched training values."""
    train_section, train_space = split_train_space(raw.get("train"), errors)
    n_before = len(errors)
    sections = (raw.get("model"), raw.get("data"), train_section)
    train = train_kwargs(*sections, errors, cwd, validation=raw.get("validation"))
    if train_space and not any(e.startswith("unknown key") for e in errors[n_before:]):
        check_train_space(train, train_space, errors)  # each bad searched value, named
    return train, train_space


def _run_settings(raw: Mapping, errors: list[str], gpus_available: int | None) -> dict[str, Any]:
    """What the sweep optimises and how: the ExperimentSpec fields of that name."""
    control = boolean(raw, "control", True, errors)
    metric = choice(raw, "metric", "val/loss", METRIC_NAMES, errors)
    mode = choice(raw, "mode", "min", MODES, errors)
    search = parse_search(section(raw, "search", errors), errors)
    scheduler = parse_scheduler(raw.get("scheduler", "none"), metric, mode, errors)
    resources = parse_resources(section(raw, "resources", errors), errors, gpus_available)
    max_conc = parse_max_concurrent(raw.get("max_concurrent_trials", "auto"), errors)
    return {"control": control, "metric": metric, "mode": mode, "search": search,
            "scheduler": scheduler, "resources": resources,
            "max_concurrent_trials": max_conc}  # fmt: skip


def _storage(raw: Mapping, cwd: Path, errors: list[str]) -> StorageSpec:
    storage_sec = section(raw, "storage", errors)
    errors += unknown_keys(storage_sec, ("results_dir", "tracking_uri"), "storage.")
    return parse_storage(storage_sec, cwd, errors)


def _limits(raw: Mapping, errors: list[str]) -> dict[str, Any]:
    """`checkpoint` and `failure`: the ExperimentSpec fields of that name."""
    ck = section(raw, "checkpoint", errors)
    errors += unknown_keys(ck, ("num_to_keep",), "checkpoint.")
    num_to_keep = integer(ck, "checkpoint.num_to_keep", "num_to_keep", 2, 1, errors)
    fail = section(raw, "failure", errors)
    errors += unknown_keys(fail, ("max_failures",), "failure.")
    max_failures = integer(fail, "failure.max_failures", "max_failures", 0, -1, errors)
    return {"checkpoint": CheckpointSpec(num_to_keep=num_to_keep),
            "failure": FailureSpec(max_failures=max_failures)}  # fmt: skip


def _trials(
    raw: Mapping, sla, train: Mapping, train_space: tuple, run: Mapping, errors: list[str]
) -> dict[str, Any]:
    """The trials beyond the search (extra_trials, repeats/seeds) and the verdict, checked
    against the rest: the ExperimentSpec fields extra_trials, seeds and verdict."""
    search = run["search"]
    extra = parse_extra_trials(raw.get("extra_trials"), sla, search.algorithm, errors)
    _check_combinations(sla, extra, search, train, errors, train_space)
    seeds = parse_seeds(raw.get("repeats"), raw.get("seeds"), train.get("seed", 0), errors)
    if seeds and search.algorithm == "optuna":
        errors.append("repeats/seeds need search.algorithm grid or random, not optuna")
    verdict = parse_verdict(raw.get("verdict"), run["metric"], run["mode"], errors)
    check_schedules(sla, extra, train, train_space, errors)
    return {"extra_trials": extra, "seeds": seeds, "verdict": VerdictSpec(**verdict)}


def _size_errors(train: Mapping) -> list[str]:
    """Step counts beyond any run (orchestrator.spec.sizes), once the training settings are
    valid (their own problems are listed already). Memory is the machine's: `run` checks it."""
    try:
        config = build_train_config(train)
    except (TypeError, ValueError):
        return []
    return sizes.step_errors(config)


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


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

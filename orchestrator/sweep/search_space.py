"""ExperimentSpec -> Ray Tune param_space, search algorithm and scheduler.

A trial's config is orchestrator.storage.records' {"sla": ..., "train": ..., "control": ...}.
Grid and random search are expanded here into an explicit list (random draws from a seeded
generator, so a sweep is reproducible and the control trial is simply one more entry); Optuna
samples the space itself and gets the control trial first through ControlFirst. Searched
training settings vary with the SLA fields; the control runs with their control values.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from orchestrator.spec.schema import ExperimentSpec, SearchParam
from orchestrator.spec.search import TRAIN_PREFIX, control_value
from orchestrator.storage.records import CONTROL


def expand_trials(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Grid: the cartesian product of the grid entries. Random: num_samples seeded draws.
    Then the spec's extra_trials, then the control."""
    varying = spec.varying
    if spec.search.algorithm == "grid":
        axes = [[(p.field, v) for v in p.values] for p in varying]
        trials = [_trial(dict(combo)) for combo in itertools.product(*axes)]
    elif spec.search.algorithm == "random":
        rng = np.random.default_rng(spec.search.seed)
        trials = [
            _trial({p.field: _draw(p, rng) for p in varying})
            for _ in range(spec.search.num_samples)
        ]
    else:
        raise ValueError("expand_trials is for grid and random search")
    # extra trials and the control run with the control values of searched training settings
    default_train = {k: v for k, v in _trial(control_train(spec)).items() if k == "train"}
    trials += [
        {"sla": dict(extra), "control": False, **default_train} for extra in spec.extra_trials
    ]
    if spec.control:
        trials.append({**CONTROL, **default_train})
    return [repeat for trial in trials for repeat in _repeats(spec, trial)]


def _repeats(spec: ExperimentSpec, trial: dict[str, Any]) -> list[dict[str, Any]]:
    """The trial once per seed of `repeats`/`seeds`: train.seed varies (data order, noise, proj_l
    init), train.base_seed stays (the base model and the clips every repeat shares)."""
    if not spec.seeds:
        return [trial]
    base_seed = spec.train.get("base_seed")
    base_seed = spec.train.get("seed", 0) if base_seed is None else base_seed
    return [
        {**trial, "train": {**trial.get("train", {}), "seed": seed, "base_seed": base_seed}}
        for seed in spec.seeds
    ]


def control_train(spec: ExperimentSpec) -> dict[str, Any]:
    """The searched training settings' control values, by field ("train.lr": ...)."""
    return {p.field: control_value(p) for p in spec.train_space}


def _trial(chosen: dict[str, Any]) -> dict[str, Any]:
    """A trial config from chosen values: SLA fields under "sla", training settings under
    "train" (without the prefix; only when the search has any)."""
    sla = {k: v for k, v in chosen.items() if not k.startswith(TRAIN_PREFIX)}
    train = {
        k.removeprefix(TRAIN_PREFIX): v for k, v in chosen.items() if k.startswith(TRAIN_PREFIX)
    }
    return {"sla": sla, "control": False, **({"train": train} if train else {})}


def param_space(spec: ExperimentSpec) -> dict[str, Any]:
    if spec.search.algorithm in ("grid", "random"):
        return {"trial": tune.grid_search(expand_trials(spec))}
    return {"trial": _trial({p.field: _domain(p) for p in spec.varying})}


def num_samples(spec: ExperimentSpec) -> int:
    """Tune's num_samples: grid repeats the list, random is already expanded, Optuna counts."""
    if spec.search.algorithm == "grid":
        return spec.search.num_samples
    if spec.search.algorithm == "random":
        return 1
    return spec.search.num_samples + int(spec.control)


def search_alg(spec: ExperimentSpec) -> Searcher | None:
    """None for grid/random (Tune's default generator walks the list); Optuna otherwise."""
    if spec.search.algorithm != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch  # imports optuna: an optuna search only

    objectives = spec.search.objectives
    if len(objectives) > 1:
        searcher = OptunaSearch(
            metric=[o.metric for o in objectives],
            mode=[o.mode for o in objectives],
            seed=spec.search.seed,
        )
    else:
        searcher = OptunaSearch(seed=spec.search.seed)
    if spec.control:
        placeholder = _trial({p.field: control_value(p) for p in spec.varying})
        return ControlFirst(searcher, {"trial": {**placeholder, "control": True}})
    return searcher


def tune_metric(spec: ExperimentSpec) -> tuple[str | None, str | None]:
    """TuneConfig's metric/mode: one metric, unless Optuna already holds several objectives."""
    if spec.search.algorithm == "optuna" and len(spec.search.objectives) > 1:
        return None, None
    if spec.search.algorithm == "optuna" and spec.search.objectives:
        return spec.search.objectives[0].metric, spec.search.objectives[0].mode
    return spec.metric, spec.mode


def scheduler(spec: ExperimentSpec):
    if spec.scheduler.name == "none":
        return None
    s = spec.scheduler
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=s.metric,
        mode=s.mode,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        max_t=s.max_t,
    )


class ControlFirst(Searcher):
    """Wraps a Searcher: the first suggestion is the full-attention control, which the wrapped
    searcher never hears about (it is a reference, not a point of the search space)."""

    def __init__(self, searcher: Searcher, control_config: dict[str, Any]) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.control_config = control_config
        self.control_trial: str | None = None

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def suggest(self, trial_id: str) -> dict | None:
        if self.control_trial is None:
            self.control_trial = trial_id
            return dict(self.control_config)
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id != self.control_trial:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id != self.control_trial:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Tune's SearchGenerator saves a wrapper's own state with get_state/set_state (walking down
    # `.searcher`) and the innermost searcher with its save_to_dir, like ConcurrencyLimiter.
    def get_state(self) -> dict:
        return {"control_trial": self.control_trial, "control_config": self.control_config}

    def set_state(self, state: dict) -> None:
        self.control_trial = state["control_trial"]
        self.control_config = state["control_config"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def _domain(p: SearchParam):
    if p.kind == "fixed":
        return p.values[0]
    if p.kind in ("grid", "choice"):
        return tune.choice(list(p.values))
    if p.kind == "uniform":
        return tune.uniform(*p.values)
    return tune.loguniform(*p.values)


def _draw(p: SearchParam, rng: np.random.Generator) -> Any:
    if p.kind in ("grid", "choice"):
        return p.values[int(rng.integers(len(p.values)))]
    lo, hi = p.values
    if p.kind == "uniform":
        return float(rng.uniform(lo, hi))
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

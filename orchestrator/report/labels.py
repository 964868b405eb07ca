"""How a config is named wherever a user sees it: the results table and results.csv's plot, the
study report, the parent run's note and each child run's config tag in MLflow.

A label lists the settings that tell the configs apart, "topk=0.05 train.lr=0.001"; the
full-attention control is "control", followed by its searched training settings. Which settings
are shown is `label_keys`: those whose value differs between the configs (the repeats' seeds
too where a view shows each trial), topk when none does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.storage.records import TrialRow, format_value

REPEAT_KEYS = ("train.seed", "train.base_seed")  # what differs between repeats of one config


def config_settings(row: TrialRow) -> dict[str, Any]:
    """What the search chose for a trial, without the repeats' seeds."""
    return {k: v for k, v in row.settings.items() if k not in REPEAT_KEYS}


def label_keys(rows: Sequence[TrialRow], *, repeats: bool = False) -> list[str]:
    """The settings whose value differs between the trials' configs, in the order the trials
    list them; with `repeats`, the repeats' seeds as well (what tells one trial of a config from
    another). topk, else the first setting, when none differs."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for k, v in (row.settings if repeats else config_settings(row)).items():
            values.setdefault(k, set()).add(repr(v))
    varying = [k for k, seen in values.items() if len(seen) > 1]
    return varying or [k for k in ("topk", *values) if k in values][:1]


def config_label(row: TrialRow, keys: Sequence[str] | None = None) -> str:
    """The label of a trial's config: its settings among `keys` (every setting but the repeats'
    seeds when None), "control" and its training settings for the full-attention control."""
    chosen = config_settings(row) if keys is None else row.settings
    shown = [(k, chosen[k]) for k in (chosen if keys is None else keys) if k in chosen]
    if row.sla is None:
        shown = [(k, v) for k, v in shown if k.startswith("train.")]
        return " ".join(["control", *(f"{k}={format_value(v)}" for k, v in shown)])
    return " ".join(f"{k}={format_value(v)}" for k, v in shown)

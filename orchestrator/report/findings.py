"""What a sweep found: its trials grouped per config (the repeats of one setting), each metric's
mean and spread over the repeats, and the verdict: the sparsest SLA setting whose quality is
within noise of the full-attention control.

The verdict's test, per SLA config against the control, on the verdict metric (worse = higher
for `min`, lower for `max`), with d = how much worse the config's mean is than the control's:

- two or more finished repeats on both sides: a one-sided Welch t-test of "the config is worse";
  the config holds when that test does not find it worse at the stated confidence (p >= 1 -
  confidence) and, with a `tolerance`, d <= tolerance as well;
- one run on either side: no test is possible; the config holds when d <= tolerance (0 when no
  tolerance is set), and the verdict says that it has no error bars.

Of the configs that hold, the sparsest is the one with the lowest mean attention-FLOPs ratio
(ties: the better quality). Plain Python (and scipy's t distribution): `best`, the report and
the tests use it without Ray or MLflow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from orchestrator.report.labels import config_label, config_settings, label_keys
from orchestrator.spec.schema import VerdictSpec
from orchestrator.storage.records import FINISHED, TrialRow
from orchestrator.tracking.tags import CONFIG_TAG, SEED_TAG
from orchestrator.values import is_num

FLOPS = "flops/attention_ratio"
STEP_TIME = "perf/step_s"


@dataclasses.dataclass(frozen=True)
class Spread:
    """A metric over a config's finished repeats: mean, sample std and the two-sided confidence
    interval of the mean (Student's t); std and the interval are None with one value."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None

    def text(self) -> str:
        if self.std is None:
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.std:.2g}"


@dataclasses.dataclass
class ConfigGroup:
    """The trials of one config (every repeat), in the order the sweep listed them."""

    label: str
    settings: dict[str, Any]  # what the search chose, without the repeats' seeds
    control: bool
    rows: list[TrialRow]

    @property
    def finished(self) -> list[TrialRow]:
        return [r for r in self.rows if r.status == FINISHED]

    def values(self, metric: str) -> list[float]:
        return [float(r.metrics[metric]) for r in self.finished if is_num(r.metrics.get(metric))]

    def spread(self, metric: str, confidence: float = 0.95) -> Spread | None:
        return spread_of(self.values(metric), confidence)


def spread_of(values: Sequence[float], confidence: float = 0.95) -> Spread | None:
    """Mean, std and the confidence interval of the mean; None for no values."""
    from scipy import stats  # heavy: the CLI imports this module without it

    if not values:
        return None
    n, mean = len(values), math.fsum(values) / len(values)
    if n == 1:
        return Spread(1, mean, None, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


def group_rows(rows: Sequence[TrialRow]) -> list[ConfigGroup]:
    """Trials grouped by their settings without the repeats' seeds (the control is one group),
    each labelled by the settings that vary between configs (topk when none does)."""
    groups: dict[tuple, ConfigGroup] = {}
    keys = label_keys(rows)
    for row in rows:
        settings = config_settings(row)
        key = (row.sla is None, repr(sorted(settings.items(), key=repr)))
        if key not in groups:
            groups[key] = ConfigGroup(config_label(row, keys), settings, row.sla is None, [])
        groups[key].rows.append(row)
    return list(groups.values())


def group_tags(row: TrialRow) -> dict[str, str]:
    """A child run's tags that line its repeats up in MLflow: its config (every setting the
    search chose, so that it does not depend on the other trials), and its seed."""
    tags = {CONFIG_TAG: config_label(row)}
    if "seed" in row.train:
        tags[SEED_TAG] = str(row.train["seed"])
    return tags


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One SLA config against the control on the verdict metric."""

    label: str
    worse_by: float  # d: how much worse its mean is than the control's (negative: better)
    p_worse: float | None  # the one-sided Welch test's p-value (None: one run on a side)
    holds: bool
    flops_ratio: float | None
    speedup: float | None  # the control's mean step time over this config's


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The sweep's answer; `text` is the line `best`, the report and the parent run show."""

    text: str
    best: str | None  # the sparsest config that holds (its label)
    has_error_bars: bool
    comparisons: tuple[Comparison, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def judge(groups: Sequence[ConfigGroup], spec: VerdictSpec) -> Verdict:
    """The sparsest SLA config within noise of the control (module docstring), or why none."""
    control = next((g for g in groups if g.control and g.values(spec.metric)), None)
    sla = [g for g in groups if not g.control and g.values(spec.metric)]
    if control is None:
        return Verdict(f"no verdict: no finished full-attention control with {spec.metric}",
                       None, False)  # fmt: skip
    if not sla:
        return Verdict(f"no verdict: no finished SLA trial with {spec.metric}", None, False)
    comparisons = tuple(compare(g, control, spec) for g in sla)
    bars = control.spread(spec.metric).n > 1 and all(g.spread(spec.metric).n > 1 for g in sla)
    held = [c for c in comparisons if c.holds]
    rule = _rule(spec, bars)
    if not held:
        closest = min(comparisons, key=lambda c: c.worse_by)
        text = (f"no SLA setting held {spec.metric} within noise of full attention ({rule}); "
                f"the closest, {closest.label}, is worse by {closest.worse_by:.4g}")  # fmt: skip
        return Verdict(text, None, bars, comparisons)
    best = min(held, key=lambda c: (_or_inf(c.flops_ratio), c.worse_by))
    saving = (
        "" if best.flops_ratio is None else f", {1 - best.flops_ratio:.0%} fewer attention FLOPs"
    )
    speed = (
        "" if best.speedup is None else f", training step {best.speedup:.2f}x the control's speed"
    )
    p = "" if best.p_worse is None else f", p = {best.p_worse:.2g}"
    text = (f"{best.label} is the sparsest setting that holds {spec.metric} within noise of full "
            f"attention ({rule}; {_signed(best.worse_by)} vs control{p}){saving}{speed}")  # fmt: skip
    return Verdict(text, best.label, bars, comparisons)


def name_objective(verdict: Verdict, objective: str, *, searched: bool) -> Verdict:
    """The verdict with the training objective named: the study's, or (searched: each SLA
    config's label names its own) the control's."""
    said = (
        f"the control trained with objective {objective}" if searched else f"objective {objective}"
    )
    return dataclasses.replace(verdict, text=f"{verdict.text} [{said}]")


def compare(group: ConfigGroup, control: ConfigGroup, spec: VerdictSpec) -> Comparison:
    """One config against the control: how much worse, the test's p-value, whether it holds."""
    from scipy import stats  # heavy: the CLI imports this module without it

    sign = 1.0 if spec.mode == "min" else -1.0
    mine, ref = group.spread(spec.metric), control.spread(spec.metric)
    worse_by = sign * (mine.mean - ref.mean)
    tolerance = 0.0 if spec.tolerance is None else float(spec.tolerance)
    p_worse = None
    if mine.n > 1 and ref.n > 1:
        se2_a, se2_b = mine.std**2 / mine.n, ref.std**2 / ref.n
        if se2_a + se2_b == 0:
            holds = worse_by <= tolerance
        else:
            t = worse_by / math.sqrt(se2_a + se2_b)
            df = (se2_a + se2_b) ** 2 / (se2_a**2 / (mine.n - 1) + se2_b**2 / (ref.n - 1))
            p_worse = float(stats.t.sf(t, df))
            holds = p_worse >= 1 - spec.confidence
            if spec.tolerance is not None:
                holds = holds and worse_by <= tolerance
    else:
        holds = worse_by <= tolerance
    flops = group.spread(FLOPS)
    mine_t, ref_t = group.spread(STEP_TIME), control.spread(STEP_TIME)
    speedup = ref_t.mean / mine_t.mean if mine_t and ref_t and mine_t.mean > 0 else None
    return Comparison(group.label, worse_by, p_worse, holds, flops and flops.mean, speedup)


def _rule(spec: VerdictSpec, bars: bool) -> str:
    tol = "" if spec.tolerance is None else f", and at most {spec.tolerance:g} worse"
    if bars:
        return f"one-sided Welch t-test at {spec.confidence:.0%}{tol}"
    limit = "no worse" if spec.tolerance is None else f"at most {spec.tolerance:g} worse"
    return f"one run per config, {limit}: the verdict has no error bars"


def _signed(v: float) -> str:
    return f"{v:+.4g}"


def _or_inf(v: float | None) -> float:
    return math.inf if v is None else v

"""The report and the verdict name the training objective: the study's, or, when the search
varies it, the control's (each SLA config's label names its own)."""

from __future__ import annotations

from orchestrator.report.findings import Verdict, name_objective
from orchestrator.report.study import _objective_line, training_objective
from orchestrator.spec import parse_spec


def _spec(train: dict):
    return parse_spec({"name": "o", "train": train, "sla": {"topk": 0.5}})


def test_a_distill_study_names_its_objective():
    spec = _spec({"objective": "distill"})
    assert training_objective(spec) == ("distill", False)
    assert "`distill`" in _objective_line(spec) and "teacher" in _objective_line(spec)
    verdict = name_objective(Verdict("k is best", "k", False), "distill", searched=False)
    assert verdict.text == "k is best [objective distill]" and verdict.best == "k"


def test_the_default_is_flow_matching():
    assert training_objective(_spec({})) == ("flow_matching", False)


def test_a_searched_objective_names_the_controls():
    spec = _spec({"objective": {"grid": ["distill", "flow_matching"]}})
    assert training_objective(spec) == ("distill", True)
    assert "searched" in _objective_line(spec)
    verdict = name_objective(Verdict("none held", None, False), "distill", searched=True)
    assert verdict.text == "none held [the control trained with objective distill]"

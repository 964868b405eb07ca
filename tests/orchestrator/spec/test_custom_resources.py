"""resources.custom_per_worker: Ray custom resources each Train worker asks for (docs/cluster.md),
validated at the YAML boundary, passed to Ray Train, and counted when a cluster is checked."""

from __future__ import annotations

import pytest

from orchestrator.spec import SpecError, load_spec
from orchestrator.sweep.cluster import check_fits, max_concurrent
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"


def spec_with(*sets: str):
    return load_spec(SMOKE, list(sets), gpus_available=0)


def test_parsed_from_yaml_and_set():
    spec = spec_with("resources.custom_per_worker={trial_node: 1, ssd: 0.5}")
    assert dict(spec.resources.custom_per_worker) == {"trial_node": 1.0, "ssd": 0.5}
    assert dict(spec_with().resources.custom_per_worker) == {}  # none unless asked for
    one = spec_with("resources.custom_per_worker.trial_node=2")
    assert dict(one.resources.custom_per_worker) == {"trial_node": 2.0}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[trial_node]", "resources.custom_per_worker must be a mapping of Ray resource name to "
                         "amount, e.g. {trial_node: 1}, got list ['trial_node']"),
        ("{trial_node: 0}", "resources.custom_per_worker.trial_node (0) must be a number > 0"),
        ("{trial_node: many}", "resources.custom_per_worker.trial_node ('many') must be a number > 0"),
        ("{CPU: 1}", "resources.custom_per_worker.CPU is one of Ray's own resources, not a custom one"),
        ("{'a b': 1}", "resources.custom_per_worker name 'a b' must be a Ray resource name"),
    ],
)  # fmt: skip
def test_bad_values_are_one_clear_line(value, message):
    with pytest.raises(SpecError) as err:
        spec_with(f"resources.custom_per_worker={value}")
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_a_cluster_without_the_resource_is_refused_and_counted_when_it_has_it():
    spec = spec_with("resources.custom_per_worker.trial_node=1", "max_concurrent_trials=null")
    with pytest.raises(SpecError) as err:
        check_fits(spec, {"CPU": 8.0}, "the Ray cluster")
    assert "a trial needs 1 trial_node" in str(err.value)
    assert "the Ray cluster has 0" in str(err.value)
    check_fits(spec, {"CPU": 8.0, "trial_node": 2.0}, "the Ray cluster")
    assert max_concurrent(spec, {"CPU": 8.0, "trial_node": 2.0}) == 2  # trial_node, not CPUs

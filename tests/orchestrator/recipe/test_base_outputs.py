"""The base model's reference on the val batch (val loss, samples): computed by a sweep's first
trial into the sweep's cache directory, loaded by the others, the same numbers either way."""

import threading
import time

import pytest
import torch

from orchestrator.recipe import TrainConfig, TrialRecipe
from orchestrator.recipe.base_outputs import base_reference
from sla_kernel_glue import SLAConfig

SLA = SLAConfig(topk=0.25, blkq=32, blkk=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("base_models"))


def set_up(train: TrainConfig, sla, workdir, refs=None) -> TrialRecipe:
    recipe = TrialRecipe(train, sla, workdir, reference_cache=refs)
    try:
        recipe.setup()
    finally:
        recipe.cleanup()
    return recipe


@pytest.mark.slow
def test_second_trial_loads_the_base_reference_the_first_computed(cache, tmp_path):
    train = TrainConfig(base_steps=10, base_cache_dir=cache, sample_steps=2, data={"num_val": 2})
    refs = tmp_path / "base_reference"
    first = set_up(train, SLA, tmp_path / "a", refs)
    second = set_up(train, None, tmp_path / "b", refs)  # the control: same base, same reference
    assert (first.reference_cached, second.reference_cached) == (False, True)
    assert len(list(refs.glob("*.pt"))) == 1
    uncached = set_up(train, SLA, tmp_path / "c")
    assert not uncached.reference_cached
    for recipe in (second, uncached):
        assert recipe.base_val_loss == first.base_val_loss
        assert torch.equal(recipe.base_samples, first.base_samples)
    # Another sampler is another reference: computed, beside the first.
    other = set_up(train.replace(sample_steps=3), SLA, tmp_path / "d", refs)
    assert not other.reference_cached
    assert len(list(refs.glob("*.pt"))) == 2


def test_concurrent_trials_compute_it_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.2)  # long enough for the other thread to be waiting on the lock
        return 1.5, torch.ones(2, 3)

    got = []
    threads = [
        threading.Thread(target=lambda: got.append(base_reference(tmp_path, {"a": 1}, compute)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(r.cached for r in got) == [False, True]
    assert all(r.val_loss == 1.5 and torch.equal(r.samples, torch.ones(2, 3)) for r in got)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_damaged_file_is_an_error_that_names_it(tmp_path):
    base_reference(tmp_path, {"a": 1}, lambda: (1.0, torch.zeros(1)))
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="delete it to recompute") as info:
        base_reference(tmp_path, {"a": 1}, lambda: (1.0, torch.zeros(1)))
    assert str(path) in str(info.value)

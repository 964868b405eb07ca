"""The distill objective on the tiny preset (CPU): the teacher is the dense base and never
changes, costs no second copy where the base is frozen, and a model that computes the base's
attention starts at zero distillation loss."""

from __future__ import annotations

import hashlib

import pytest
import torch

from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from orchestrator.recipe.train import TrialRecipe
from sla_kernel_glue import SLAConfig

pytestmark = pytest.mark.slow  # each test runs a trial or two (20-35 s on 2 CPU cores)
SLA = SLAConfig(topk=0.25, blkq=32, blkk=32)  # 256 tokens: 8 key blocks


def distill(tmp, **kw) -> TrainConfig:
    """A distill trial on the tiny preset's seeded initialisation (no pre-training: seconds)."""
    return TrainConfig.from_dict({
        "objective": "distill", "steps": 2, "base_steps": 0, "batch_size": 2, "log_every": 1,
        "sample_steps": 2, "warmup_steps": 0, "lr": 1e-2, "base_cache_dir": str(tmp / "bases"),
        "data": {"num_train": 8, "num_val": 2}, **kw,
    })  # fmt: skip


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in sorted(tensors):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _base_weights(model) -> list[tuple[str, torch.Tensor]]:
    """The base's own parameters: not the adapter's, not SLA's proj_l."""
    return [(n, p) for n, p in model.named_parameters() if "lora_" not in n and ".sla." not in n]


def _storage_bytes(*modules) -> int:
    """Bytes of the distinct storages the modules' parameters live in (a shared tensor once)."""
    seen = {}
    for module in modules:
        for p in module.parameters():
            storage = p.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _setup(config: TrainConfig, tmp) -> TrialRecipe:
    recipe = TrialRecipe(config, SLA, tmp / "work", callback=RecordingCallback())
    recipe.setup()
    return recipe


def _fixed_input(recipe: TrialRecipe):
    val = recipe.val
    return val.clips + val.noise, val.timesteps, val.context


def test_a_lora_teacher_is_the_trials_own_weights_and_never_changes(tmp_path):
    recipe = _setup(distill(tmp_path, lora={"rank": 4}), tmp_path)
    try:
        model = recipe.accelerator.unwrap_model(recipe.model)
        assert recipe.teacher.frozen is None  # no second copy of the base
        own = sum(p.numel() * p.element_size() for p in model.parameters())
        assert _storage_bytes(model) == own  # one copy of the base weights, adapter and proj_l
        before = _digest(_base_weights(model))
        velocity = recipe.teacher.velocity(*_fixed_input(recipe))
        adapter = [p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n]
        recipe.train()
        after = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert any(not torch.equal(a, b) for a, b in zip(adapter, after, strict=True))
        assert _digest(_base_weights(model)) == before
        # the adapter and proj_l moved, the teacher's velocity did not: the same code path
        assert torch.equal(recipe.teacher.velocity(*_fixed_input(recipe)), velocity)
    finally:
        recipe.cleanup()


def test_a_full_fine_tunes_teacher_is_one_frozen_copy_that_never_changes(tmp_path):
    recipe = _setup(distill(tmp_path, train_base=True), tmp_path)
    try:
        model = recipe.accelerator.unwrap_model(recipe.model)
        frozen = recipe.teacher.frozen
        assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
        assert _storage_bytes(model, frozen) == _storage_bytes(model) + _storage_bytes(frozen)
        before, base_before = _digest(frozen.named_parameters()), _digest(_base_weights(model))
        recipe.train()
        assert _digest(frozen.named_parameters()) == before
        assert _digest(_base_weights(model)) != base_before  # the trial's own base did train
    finally:
        recipe.cleanup()


def _first_loss(tmp, topk: float) -> float:
    recorder = RecordingCallback()
    sla = SLAConfig(topk=topk, blkq=32, blkk=32)
    run_trial(distill(tmp, steps=1, train_base=False), sla, tmp / f"k{topk}", callback=recorder)
    ((step, loss),) = recorder.series("train/loss")
    return loss


def test_sla_that_selects_every_block_starts_at_zero_distillation_loss(tmp_path):
    # topk 1: every key block is attended exactly, and proj_l starts at zero, so SLA is dense
    # attention up to rounding; topk 0.05 (one block of eight) is not.
    exact, sparse = _first_loss(tmp_path, 1.0), _first_loss(tmp_path, 0.05)
    assert exact < 1e-9 and sparse > 1e-6
    assert exact < 1e-4 * sparse


def test_the_no_copy_teacher_equals_the_copy(tmp_path):
    """The first step's loss: the frozen base's (train_base false, no copy) and a full fine-tune's
    float32 copy give the base's velocity alike (float32 on the CPU: the same numbers)."""
    losses = []
    for name, kw in (("own", {"train_base": False}), ("copy", {"train_base": True})):
        recorder = RecordingCallback()
        run_trial(distill(tmp_path, steps=1, **kw), SLA, tmp_path / name, callback=recorder)
        losses.append(recorder.series("train/loss")[0][1])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)

"""LoRA trials on the tiny preset (CPU, real peft and diffusers): config, training, lean
checkpoints and their sizes, resuming them bit for bit."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from orchestrator.recipe.config import LORA_TARGETS, LoraConfig
from orchestrator.recipe.lora import LORA_FILE
from orchestrator.recipe.train import TrialRecipe
from sla_kernel_glue import SLAConfig, read_sla_state

SLA = SLAConfig(topk=0.25, blkq=32, blkk=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("base_models"))


def tiny(cache, **kw):
    return TrainConfig.from_dict(
        {
            "base_steps": 20,
            "base_cache_dir": cache,
            "log_every": 1,
            "sample_steps": 2,
            "data": {"num_val": 4},
            **kw,
        }  # fmt: skip
    )


def checkpoint_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def test_lora_config_defaults_and_every_error_at_once():
    config = TrainConfig.from_dict({"lora": {}})
    assert config.lora == LoraConfig() and config.train_base is False and config.frozen_base
    assert config.lora.rank == 16 and config.lora.lora_alpha == 16 and config.lora.dropout == 0
    assert "attn1.to_q" in LORA_TARGETS and "attn2.to_out.0" in LORA_TARGETS
    assert "ffn.net.2" in LORA_TARGETS
    assert TrainConfig.from_dict({}).lora is None and not TrainConfig().frozen_base
    roundtrip = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert roundtrip == config
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict(
            {
                "train_base": True,
                "lora": {"rank": 0, "alpha": -1, "dropout": 1.5, "target_modules": [], "bogus": 1},
            }  # fmt: skip
        )
    message = str(info.value)
    for part in ("unknown lora key 'bogus'", "lora.rank (0)", "lora.alpha (-1)",
                 "lora.dropout (1.5)", "lora.target_modules", "train_base (true) with lora"):  # fmt: skip
        assert part in message, part
    with pytest.raises(ValueError, match=r"lora \(3\) must be a mapping"):
        TrainConfig.from_dict({"lora": 3})


@pytest.mark.slow
def test_trainable_are_the_adapter_and_proj_l_only(cache, tmp_path):
    recipe = TrialRecipe(tiny(cache, steps=1, lora={"rank": 2}), SLA, tmp_path)
    try:
        recipe.setup()
        model = recipe.accelerator.unwrap_model(recipe.model)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(".lora_" in n or ".sla.proj_l." in n for n in trainable)
        assert sum(".sla.proj_l." in n for n in trainable) == 4  # 2 layers x (weight, bias)
        assert model.blocks[0].attn1.sla.proj_l.weight.dtype == torch.float32
        # SLA's processor calls the LoRA-wrapped projections
        assert type(model.blocks[0].attn1.to_q).__module__.startswith("peft")
    finally:
        recipe.cleanup()


@pytest.mark.slow
def test_lora_trial_lowers_the_loss_and_checkpoints_lean(cache, tmp_path):
    recorder = RecordingCallback()
    run_trial(tiny(cache, steps=12, lr=3e-3, lora={"rank": 4}), SLA, tmp_path, callback=recorder)
    val = recorder.series("val/loss")
    assert val[0][0] == 0 and val[-1][1] < val[0][1]
    directory = tmp_path / "checkpoint_000012"
    assert not (directory / "model.safetensors").exists()
    trial = json.loads((directory / "trial.json").read_text())
    assert trial["checkpoint"] == "lean" and trial["base"]["fingerprint"].startswith("loaded:")
    adapter = load_file(str(directory / LORA_FILE))
    assert all(k.startswith("transformer.") for k in adapter)
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in adapter.items())  # trained
    assert set(read_sla_state(directory / "sla_attention.pt")["layers"]) == {
        "blocks.0.attn1", "blocks.1.attn1"}  # fmt: skip


@pytest.mark.slow
def test_checkpoint_bytes_full_vs_lora_vs_sla_only(cache, tmp_path):
    sizes = {}
    for name, extra in (("full", {}), ("lora", {"lora": {"rank": 2}}),
                        ("sla_only", {"train_base": False})):  # fmt: skip
        run_trial(tiny(cache, steps=1, **extra), SLA, tmp_path / name, callback=RecordingCallback())
        sizes[name] = checkpoint_bytes(tmp_path / name / "checkpoint_000001")
    print(f"\ncheckpoint bytes on tiny: {sizes}, lora/full {sizes['lora'] / sizes['full']:.3f}, "
          f"sla_only/full {sizes['sla_only'] / sizes['full']:.3f}")  # fmt: skip
    # tiny is 64 wide: a rank-2 adapter is 1/16 of each adapted linear (Adam's moments too)
    assert sizes["lora"] < 0.1 * sizes["full"]
    assert sizes["sla_only"] < 0.05 * sizes["full"]


@pytest.mark.slow
def test_lora_resume_is_bitwise(cache, tmp_path):
    config = tiny(cache, steps=4, checkpoint_every=2, lr=3e-3, lora={"rank": 2, "dropout": 0.1})
    straight = RecordingCallback()
    run_trial(config, SLA, tmp_path / "straight", callback=straight)
    resumed = RecordingCallback()
    run_trial(config, SLA, tmp_path / "resumed", callback=resumed,
              resume_from=tmp_path / "straight" / "checkpoint_000002")  # fmt: skip
    assert [s for s, _ in resumed.metrics][0] == 3
    a, b = (load_file(str(tmp_path / run / "checkpoint_000004" / LORA_FILE))
            for run in ("straight", "resumed"))  # fmt: skip
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (read_sla_state(tmp_path / run / "checkpoint_000004" / "sla_attention.pt")["layers"]
              for run in ("straight", "resumed"))  # fmt: skip
    assert all(
        torch.equal(sa[p]["state"][k], sb[p]["state"][k]) for p in sa for k in sa[p]["state"]
    )
    last = lambda rec: {k: v for k, v in rec.metrics[-1][1].items() if not k.startswith("perf/")}  # noqa: E731
    assert last(straight) == last(resumed)
    mid = load_file(str(tmp_path / "straight" / "checkpoint_000002" / LORA_FILE))
    assert not all(torch.equal(mid[k], b[k]) for k in mid)  # the resumed run trained


@pytest.mark.slow
def test_resume_of_a_full_fine_tune_as_lora_is_refused(cache, tmp_path):
    run_trial(tiny(cache, steps=1), SLA, tmp_path / "full", callback=RecordingCallback())
    with pytest.raises(ValueError, match="full fine-tune's checkpoint and this run is a frozen"):
        run_trial(tiny(cache, steps=2, lora={"rank": 2}), SLA, tmp_path / "b",
                  callback=RecordingCallback(),
                  resume_from=tmp_path / "full" / "checkpoint_000001")  # fmt: skip


def test_base_fingerprint_covers_the_loaded_files_only(tmp_path, monkeypatch):
    """A lean checkpoint's base fingerprint hashes config.json and the weight files
    from_pretrained reads; other files in the folder, at any depth, leave it as it was.
    Checkpoints that recorded the older whole-folder fingerprint ("files:") still pass."""
    from safetensors.torch import save_file

    from orchestrator.recipe.lora import (
        LoraStateError,
        base_fingerprint,
        check_base,
        legacy_fingerprint,
    )

    monkeypatch.setenv("SLA_SWEEP_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "transformer"
    base.mkdir()
    (base / "config.json").write_text('{"num_layers": 2}')
    save_file({"w": torch.ones(3)}, str(base / "diffusion_pytorch_model.safetensors"))
    first = base_fingerprint(base, None)
    assert first.startswith("loaded:")
    (base / "old").mkdir()
    save_file({"w": torch.zeros(3)}, str(base / "old" / "model.safetensors"))
    (base / "notes.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(base / "spare.safetensors"))  # not what is loaded
    assert base_fingerprint(base, None) == first
    (base / "config.json").write_text('{"num_layers": 3}')
    assert base_fingerprint(base, None) != first
    running = {"fingerprint": base_fingerprint(base, None), "path": str(base), "id": "b"}
    check_base({"fingerprint": legacy_fingerprint(base)}, running, base)  # before "loaded:"
    with pytest.raises(LoraStateError, match="files changed since training"):
        check_base({"fingerprint": "files:0123"}, running, base)
    with pytest.raises(LoraStateError, match="files changed since training"):
        check_base({"fingerprint": first}, running, base)

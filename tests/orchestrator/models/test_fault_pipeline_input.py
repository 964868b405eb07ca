"""Bad pipelines given to `sla-sweep run` (a missing component, a config its weights do not fit,
a truncated or pickled shard, sizes or LoRA settings the model cannot take): every problem listed
at once, each line naming its file, exit status 2, before Ray starts, and nothing written: no
sweep directory, no MLflow store, no cache entry. Bad clip folders are in
tests/orchestrator/data/test_fault_clip_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_specs import run_bad_spec
from tests.media import truncate_file
from tests.pipelines import break_pipeline


@pytest.fixture(autouse=True)
def _stops_before_ray(no_cluster):
    """Every case here must fail before the sweep joins or starts Ray."""


@pytest.mark.parametrize("part", ["vae", "text_encoder"])
def test_a_pipeline_without_a_component(part, tiny_pipeline_dir, clips, tmp_path, capsys):
    broken = break_pipeline(tiny_pipeline_dir, tmp_path / "broken", f"no-{part}")
    status, lines = run_bad_spec(tmp_path, broken, clips, capsys)
    assert status == 2
    assert lines[0].startswith("sla-sweep: error:")
    assert any(str(broken / part) in ln for ln in lines), lines


def test_a_size_the_vae_and_patch_cannot_divide(tiny_pipeline_dir, clips, tmp_path, capsys):
    status, lines = run_bad_spec(tmp_path, tiny_pipeline_dir, clips, capsys, size=36, frames=8)
    assert status == 2 and len(lines) == 1
    assert "data.size (36)" in lines[0] and "16" in lines[0]
    assert "data.frames (8)" in lines[0]


# ---- weights against configs: headers only, before the sweep exists ---------------------------
class _NotATensor:
    """Something a weights-only load refuses (a pickle that needs a class to rebuild it)."""


def _damaged(tiny_pipeline_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "damaged"))


def _edit_transformer(root: Path, **changes) -> Path:
    from tests.pipelines import edit_json

    edit_json(root / "transformer" / "config.json", **changes)
    return root / "transformer" / "config.json"


@pytest.mark.parametrize("layers", [4, 40_000])
def test_a_config_deeper_than_its_weights(layers, tiny_pipeline_dir, clips, tmp_path, capsys):
    """4 layers over 2 blocks of weights would load with 2 random blocks; 40,000 would spend
    minutes building: both are one line naming the config, before anything is created."""
    import time

    root = _damaged(tiny_pipeline_dir, tmp_path)
    config = _edit_transformer(root, num_layers=layers)
    t0 = time.monotonic()
    status, lines = run_bad_spec(tmp_path, root, clips, capsys)
    assert status == 2 and time.monotonic() - t0 < 60
    hits = [ln for ln in lines if str(config) in ln]
    assert len(hits) == 1 and f"num_layers is {layers:,}" in hits[0] and "2 blocks" in hits[0], (
        lines
    )


def test_a_config_wider_than_its_weights(tiny_pipeline_dir, clips, tmp_path, capsys):
    root = _damaged(tiny_pipeline_dir, tmp_path)
    config = _edit_transformer(root, ffn_dim=96)  # the weights' FFN is 128 wide
    status, lines = run_bad_spec(tmp_path, root, clips, capsys)
    assert status == 2
    hit = [ln for ln in lines if str(config) in ln and "other shapes" in ln]
    assert hit and "ffn.net.0.proj" in hit[0], lines


def test_a_truncated_shard(tiny_pipeline_dir, clips, tmp_path, capsys):
    root = _damaged(tiny_pipeline_dir, tmp_path)
    shard = truncate_file(root / "vae" / "diffusion_pytorch_model.safetensors", 0.9)
    status, lines = run_bad_spec(tmp_path, root, clips, capsys)
    assert status == 2
    hit = [ln for ln in lines if str(shard) in ln]
    assert len(hit) == 1 and "truncated" in hit[0], lines


def test_pickled_weights_are_one_line(tiny_pipeline_dir, clips, tmp_path, capsys):
    """A .bin that needs more than a weights-only load: refused by name, never unpickled."""
    import torch
    from safetensors.torch import load_file

    root = _damaged(tiny_pipeline_dir, tmp_path)
    weights = root / "transformer" / "diffusion_pytorch_model.safetensors"
    state = dict(load_file(str(weights)))
    weights.unlink()
    pickled = root / "transformer" / "diffusion_pytorch_model.bin"
    torch.save({**state, "extra": _NotATensor()}, pickled)
    status, lines = run_bad_spec(tmp_path, root, clips, capsys)
    assert status == 2
    hit = [ln for ln in lines if str(pickled) in ln]
    assert len(hit) == 1 and "safetensors" in hit[0], lines
    assert not any("weights_only=False" in ln or "Traceback" in ln for ln in lines), lines


def test_weights_only_bin_is_accepted(tiny_pipeline_dir, tmp_path):
    """A .bin state dict torch loads with weights_only=True reads as the safetensors did."""
    import torch
    from safetensors.torch import load_file

    from orchestrator.models.pipeline import read_pipeline

    root = _damaged(tiny_pipeline_dir, tmp_path)
    weights = root / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(dict(load_file(str(weights))), weights.with_suffix(".bin"))
    weights.unlink()
    assert read_pipeline(root).z_dim == read_pipeline(tiny_pipeline_dir).z_dim


def test_lora_targets_and_ranks_refused_up_front(tiny_pipeline_dir, clips, tmp_path, capsys):
    """A target matching no linear, and every rank of the grid above the adapted layers' 64
    (the control's 128 and 256 both), each on its own line before Ray starts."""
    lora = {"rank": {"grid": [128, 8, 256]}, "target_modules": ["attn1.to_q", "attn9.to_q"]}
    status, lines = run_bad_spec(
        tmp_path, tiny_pipeline_dir, clips, capsys, train={"train_base": False, "lora": lora}
    )
    text = "\n".join(lines)
    assert status == 2, text
    assert "'attn9.to_q' matches no linear layer" in text, text
    for rank in (128, 256):
        assert f"lora.rank ({rank}) is larger than the layers it adapts" in text, text
    assert "lora.rank (8)" not in text, text

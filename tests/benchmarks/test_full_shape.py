"""benchmarks.full_shape: the full shape is Wan2.1-T2V-1.3B's, and the phases run at the tiny
shape on the CPU (the GPU run at the full shape is in docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import full_shape
from benchmarks.full_shape import FULL, build_text_encoder, build_transformer, build_vae, main
from orchestrator.models.wan_presets import PRESETS


def test_full_shape_is_wan21_t2v_1_3b_at_480x832_81_frames():
    assert FULL.latent == (16, 21, 60, 104) and FULL.tokens == 32_760
    preset = PRESETS["wan-1.3b"].transformer_config()
    assert {k: FULL.transformer[k] for k in preset} == preset
    meta = torch.device("meta")  # shapes only: nothing is allocated
    transformer = build_transformer(FULL, meta)
    assert sum(p.numel() for p in transformer.parameters()) == 1_418_996_800
    vae = build_vae(FULL, meta)
    assert (vae.config.z_dim, vae.config.base_dim, len(vae.config.latents_mean)) == (16, 96, 16)
    encoder = build_text_encoder(FULL, meta)
    assert encoder.config.d_model == transformer.config.text_dim == 4096
    assert 5.6e9 < sum(p.numel() for p in encoder.parameters()) < 5.7e9  # UMT5-XXL's encoder


@pytest.mark.slow
def test_checkpoint_phase_writes_the_recipes_three_checkpoints(tmp_path):
    assert main(["--tiny", "--out", str(tmp_path), "--phases", "checkpoint"]) == 0
    result = json.loads((tmp_path / "checkpoint.json").read_text())
    full, lora, sla_only = (row["files"] for row in result["rows"])
    assert {"model.safetensors", "optimizer.bin", "sla_attention.pt"} <= full.keys()
    assert {"pytorch_lora_weights.safetensors", "optimizer.bin", "sla_attention.pt"} <= lora.keys()
    assert "model.safetensors" not in lora and "model.safetensors" not in sla_only
    assert "pytorch_lora_weights.safetensors" not in sla_only and "sla_attention.pt" in sla_only
    sizes = [row["checkpoint_bytes"] for row in result["rows"]]
    assert sizes[0] > sizes[1] > sizes[2] > 0
    assert json.loads((tmp_path / "environment.json").read_text())["tokens"] == 48


def test_a_failing_phase_is_written_down_and_the_next_one_runs(tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(full_shape, "phase_decode", broken)
    monkeypatch.setattr(full_shape, "phase_infer", lambda *_a, **_k: {"rows": []})
    assert main(["--tiny", "--out", str(tmp_path), "--phases", "decode", "infer"]) == 1
    assert "decoder exploded" in (tmp_path / "decode.error.txt").read_text()
    assert not (tmp_path / "decode.json").exists()
    assert "phase_s" in json.loads((tmp_path / "infer.json").read_text())


@pytest.mark.slow
def test_train_phase_times_dense_and_sla_for_full_and_lora(tmp_path):
    assert main(["--tiny", "--out", str(tmp_path), "--phases", "train", "--steps", "1"]) == 0
    rows = json.loads((tmp_path / "train.json").read_text())["rows"]
    assert [(r["mode"], r["attention"]) for r in rows] == [
        ("full", "dense"), ("full", "sla"), ("lora", "dense"), ("lora", "sla"),
    ]  # fmt: skip
    full_dense, full_sla, lora_dense, lora_sla = rows
    assert lora_dense["trainable_params"] < full_dense["trainable_params"] / 5
    for row in (full_sla, lora_sla):
        assert row["sla_calls_per_step"] == 2  # both self-attention layers ran SLA
        assert set(row["fallback_reasons"]) == {"cross_attention"}  # nothing else fell back
        assert row["speedup_vs_dense"] > 0
    assert all(r["median_s"] > 0 and r["gradient_checkpointing"] is False for r in rows)

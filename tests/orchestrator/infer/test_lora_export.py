"""LoRA trials after training: `infer` rebuilds base + adapter + SLA from a lean checkpoint;
`export` keeps the adapter beside the untouched base (stock diffusers loads both) or merges it
(`--merge`); both reproduce infer's frames; a changed base or another rank is one line.

Tolerances: the unmerged export runs the same operations on the same float32 tensors (ATOL, a
few ulps, in case a loading path reorders a computation); merging W + scale * B @ A rounds once
per weight, so the merged export is compared within MERGED_ATOL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file

from orchestrator.cli import main as cli_main
from orchestrator.recipe import TrainConfig, run_trial
from orchestrator.recipe.lora import LORA_FILE
from sla_kernel_glue import SLAConfig, apply_sla, load_sla_state
from tests.orchestrator.infer.test_pipeline_infer import PROMPT, infer

ATOL = 1e-6
MERGED_ATOL = 1e-4
SLA = SLAConfig(topk=0.5, blkq=16, blkk=16)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def preset_lora(tmp_path_factory) -> Path:
    """A real two-step LoRA + SLA trial of the tiny preset; its checkpoint."""
    tmp = tmp_path_factory.mktemp("preset_lora")
    train = TrainConfig.from_dict({
        "model": "tiny", "data": {"num_train": 4, "num_val": 2}, "steps": 2, "batch_size": 2,
        "log_every": 1, "sample_steps": 1, "base_steps": 1, "warmup_steps": 1, "lr": 1e-2,
        "base_cache_dir": str(tmp / "base"), "lora": {"rank": 4, "alpha": 8},
    })  # fmt: skip
    run_trial(train, SLA, tmp / "work")
    return tmp / "work" / "checkpoint_000002"


def clips(directory: Path) -> torch.Tensor:
    return load_file(str(directory / "samples.safetensors"))["clips"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_preset_lora_infer_and_exports(preset_lora, tmp_path):
    assert infer(preset_lora, tmp_path / "ckpt", "--num-samples", "2") == 0
    for merged in (False, True):
        out = tmp_path / f"export-{merged}"
        assert (
            cli_main(["export", str(preset_lora), str(out), *(["--merge"] if merged else [])]) == 0
        )
        assert (out / LORA_FILE).is_file() != merged
        info = json.loads((out / "inference.json").read_text())
        assert info["lora"] == {"rank": 4, "alpha": 8.0, "merged": merged,
                                "file": None if merged else LORA_FILE}  # fmt: skip
        assert infer(out, tmp_path / f"infer-{merged}", "--num-samples", "2") == 0
        a, b = clips(tmp_path / "ckpt"), clips(tmp_path / f"infer-{merged}")
        tol = MERGED_ATOL if merged else ATOL
        print(f"merged={merged}: max |export - checkpoint| = {float((a - b).abs().max()):.2e}")
        assert torch.allclose(a, b, rtol=0, atol=tol)
    # stock diffusers: the untouched base + its adapter
    out = tmp_path / "export-False"
    model = WanTransformer3DModel.from_pretrained(out)
    model.load_lora_adapter(str(out), weight_name=LORA_FILE, prefix="transformer")
    assert any(".lora_B." in n for n, _ in model.named_parameters())


def test_other_rank_or_changed_base_is_one_line(preset_lora, tmp_path, capsys):
    rank = tmp_path / "rank"
    shutil.copytree(preset_lora, rank)
    trial = json.loads((rank / "trial.json").read_text())
    trial["train"]["lora"]["rank"] = 8
    (rank / "trial.json").write_text(json.dumps(trial))
    assert infer(rank, tmp_path / "v") == 2
    err = one_error_line(capsys)
    assert "rank (4)" in err and "lora.rank (8)" in err
    base = tmp_path / "base"
    shutil.copytree(preset_lora, base)
    trial = json.loads((base / "trial.json").read_text())
    saved = trial["base"]["fingerprint"]
    trial["base"]["fingerprint"] = "files:0123"
    (base / "trial.json").write_text(json.dumps(trial))
    assert infer(base, tmp_path / "v") == 2
    err = one_error_line(capsys)
    assert "files:0123" in err and saved in err and "changed" in err


def frames(directory: Path) -> torch.Tensor:
    return load_file(str(directory / "frames.safetensors"))["frames"]


def test_pipeline_lora_export_loads_in_stock_wanpipeline(tiny_pipeline_dir, tmp_path):
    train = TrainConfig.from_dict({
        "model": str(tiny_pipeline_dir), "steps": 2, "batch_size": 2, "log_every": 1,
        "sample_steps": 2, "warmup_steps": 1, "lr": 1e-2, "lora": {"rank": 4},
        "data": {"source": "digits", "frames": 9, "size": 32, "num_train": 6, "num_val": 2,
                 "cache_dir": str(tmp_path / "cache")},
    })  # fmt: skip
    run_trial(train, SLA, tmp_path / "work")
    checkpoint = tmp_path / "work" / "checkpoint_000002"
    args = ["--prompt", PROMPT, "--seed", "3", "--steps", "2"]
    assert infer(checkpoint, tmp_path / "ckpt", *args) == 0
    out, merged = tmp_path / "out", tmp_path / "merged"
    assert cli_main(["export", str(checkpoint), str(out)]) == 0
    assert cli_main(["export", str(checkpoint), str(merged), "--merge"]) == 0
    # the unmerged export's transformer is the untouched base
    base = load_file(str(tiny_pipeline_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    saved = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert base.keys() == saved.keys() and all(torch.equal(base[k], saved[k]) for k in base)
    pipe = WanPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    pipe.load_lora_weights(out)
    pipe.set_progress_bar_config(disable=True)
    handle = apply_sla(pipe.transformer, SLA)
    load_sla_state(handle, out)
    stock = pipe(
        PROMPT, num_frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(3), output_type="pt", max_sequence_length=32,
    ).frames  # fmt: skip
    reference = frames(tmp_path / "ckpt")
    assert torch.allclose(stock.float(), reference, rtol=0, atol=ATOL)
    assert infer(merged, tmp_path / "m", *args) == 0
    gap = float((frames(tmp_path / "m") - reference).abs().max())
    print(f"merged pipeline export: max |frames - checkpoint's| = {gap:.2e}")
    assert gap <= MERGED_ATOL

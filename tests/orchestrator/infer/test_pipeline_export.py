"""`sla-sweep export` of a pipeline trial: a whole pipeline directory that stock WanPipeline loads
(components hard-linked, transformer/ fine-tuned without SLA tensors, sla_attention.pt at the
top), written atomically; `infer` on it gives the checkpoint's frames.

Equality: infer(export) and infer(checkpoint) are compared on frames.safetensors, WanPipeline's
float32 output before MP4 encoding. The transformer's weights go through save_pretrained and
from_pretrained (safetensors, float32: exact), so the frames are expected to be identical; the
check allows ATOL (a few float32 ulps of values in [0, 1]) in case a diffusers loading path
reorders a computation."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import load_file

from orchestrator.cli import main as cli_main
from orchestrator.infer.pipeline_videos import FRAMES_FILE, SUMMARY_FILE
from tests.orchestrator.infer.test_pipeline_infer import PROMPT, infer, train_pipeline_trial

pytestmark = pytest.mark.slow  # every test reads a trained trial's checkpoint

ATOL = 1e-6  # on frames in [0, 1]: ~8 float32 ulps at 1.0
COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "vae")


@pytest.fixture(scope="module")
def exported(tiny_pipeline_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, OUT): a trial's checkpoint and its export into an existing empty OUT."""
    tmp = tmp_path_factory.mktemp("pipeline_export")
    checkpoint = train_pipeline_trial(tiny_pipeline_dir, tmp)
    out = tmp / "out"
    out.mkdir()  # empty: allowed
    assert cli_main(["export", str(checkpoint), str(out)]) == 0
    return checkpoint, out


def test_export_is_a_whole_pipeline_with_sla_beside_it(exported, tiny_pipeline_dir):
    _, out = exported
    names = {p.name for p in out.iterdir()}
    assert {"model_index.json", "transformer", *COMPONENTS, "sla_attention.pt",
            "sla_config.json", "inference.json", "README.md"} == names  # fmt: skip
    assert not (out / "transformer" / "sla_attention.pt").exists()
    assert not list(out.parent.glob(".out.export-*"))  # the staging directory was renamed
    for part in (*COMPONENTS, "model_index.json"):
        for path in [out / part] if part.endswith(".json") else (out / part).rglob("*"):
            assert not path.is_symlink(), path
            if path.is_file():  # the same filesystem here: hard links to the original files
                original = tiny_pipeline_dir / path.relative_to(out)
                assert os.stat(path).st_ino == os.stat(original).st_ino, path
    info = json.loads((out / "inference.json").read_text())
    assert info["kind"] == "pipeline" and info["sla"]["topk"] == 0.5
    assert info["generation"]["prompts"] == [PROMPT] and info["max_text_len"] == 32


def test_stock_wanpipeline_loads_the_fine_tuned_transformer_without_sla_keys(exported):
    checkpoint, out = exported
    saved = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert saved and not [k for k in saved if "sla" in k or "proj_l" in k]
    pipe = WanPipeline.from_pretrained(out, local_files_only=True)
    trained = {
        k: v
        for k, v in load_file(str(checkpoint / "model.safetensors")).items()
        if ".sla." not in k
    }
    loaded = pipe.transformer.state_dict()
    assert set(loaded) == set(trained)
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())  # the fine-tuned weights


def frames(directory: Path) -> torch.Tensor:
    """The float frames an infer run wrote (WanPipeline's output before MP4 encoding)."""
    return load_file(str(directory / FRAMES_FILE))["frames"]


def test_infer_on_the_export_gives_the_checkpoint_frames(exported, tmp_path):
    checkpoint, out = exported
    args = ["--prompt", "two digits moving", "--seed", "7", "--guidance", "3.5"]
    assert infer(checkpoint, tmp_path / "ckpt", *args) == 0
    assert infer(out, tmp_path / "export", *args) == 0
    a, b = frames(tmp_path / "ckpt"), frames(tmp_path / "export")
    assert a.shape == b.shape == (1, 9, 3, 32, 32)
    assert torch.allclose(a, b, rtol=0, atol=ATOL), float((a - b).abs().max())
    summaries = [json.loads((tmp_path / d / SUMMARY_FILE).read_text()) for d in ("ckpt", "export")]
    assert summaries[0]["sla_calls"] == summaries[1]["sla_calls"] > 0
    assert summaries[1]["source"]["kind"] == "export"
    assert summaries[1]["source"]["checkpoint"] == summaries[0]["source"]["checkpoint"]


def test_the_model_card_python_snippet_runs_with_sla_on(exported, tmp_path):
    _, out = exported
    card = (out / "README.md").read_text()
    assert "Keep SLA on at inference" in card
    assert f"sla-sweep infer {out} --prompt '{PROMPT}'" in card
    assert "val/video_psnr=" in card  # the trial's metrics against the base
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "WanPipeline.from_pretrained" in snippet and "load_sla_state" in snippet
    scope: dict = {}
    exec(snippet, scope)  # the card's own code: defaults of the trial, seed 0
    assert scope["handle"].sla_calls() > 0
    assert infer(out, tmp_path / "cli") == 0  # the same defaults through the command line
    assert torch.allclose(scope["frames"][None], frames(tmp_path / "cli"), rtol=0, atol=ATOL)
    scope["handle"].remove()


def test_export_of_the_export_is_the_same_pipeline(exported, tmp_path):
    _, out = exported
    again = tmp_path / "again"
    assert cli_main(["export", str(out), str(again)]) == 0
    a = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(again / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (again / "sla_attention.pt").read_bytes() == (out / "sla_attention.pt").read_bytes()


def test_a_non_empty_out_is_refused_and_left_as_it_was(exported, tmp_path, capsys):
    checkpoint, _ = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["export", str(checkpoint), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an empty directory" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_export_leaves_nothing(exported, tmp_path, monkeypatch, capsys):
    checkpoint, _ = exported

    def disk_full(handle, directory):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "partial.safetensors").write_bytes(b"\0" * 64)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("orchestrator.infer.pipeline_export.export_base_model", disk_full)
    assert cli_main(["export", str(checkpoint), str(tmp_path / "out")]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no OUT, no staging directory


def test_an_export_without_its_sla_weights_is_refused(exported, tmp_path, capsys):
    _, out = exported
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "sla_attention.pt").unlink()
    assert infer(broken, tmp_path / "v", "--prompt", PROMPT) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no sla_attention.pt" in err
    assert not (tmp_path / "v").exists()

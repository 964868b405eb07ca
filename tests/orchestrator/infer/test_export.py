"""`sla-sweep export` of the smoke sweep's best trial: a stock diffusers model without SLA
tensors, sla_attention.pt, sla_config.json and a model card; infer on the export gives the same
samples, bit for bit, as infer on the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file

from orchestrator.cli import main as cli_main
from orchestrator.infer.command import run_infer
from orchestrator.infer.export import run_export
from orchestrator.infer.samples import TENSOR_FILE
from sla_kernel_glue import SLAConfig, read_sla_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(smoke_sweep, tmp_path_factory):
    _, outcome = smoke_sweep
    out = tmp_path_factory.mktemp("export") / "best"
    return outcome, run_export(str(outcome.sweep_dir), out)


def test_export_layout_and_model_card(exported):
    outcome, out = exported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "sla_attention.pt",
            "sla_config.json", "inference.json", "README.md"} <= names  # fmt: skip
    weights = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert weights and not [k for k in weights if ".sla." in k or "proj_l" in k]
    sla = SLAConfig.from_dict(json.loads((out / "sla_config.json").read_text()))
    state = read_sla_state(out / "sla_attention.pt")
    assert SLAConfig.from_dict(state["settings"]) == sla
    source = json.loads((out / "inference.json").read_text())["source"]
    trial = next(r for r in outcome.rows if r.trial_id == source["trial"])
    assert sla.topk == trial.sla["topk"]  # the exported trial's own SLA settings
    card = (out / "README.md").read_text()
    assert "Keep SLA on at inference" in card and "sla_attention.pt" in card
    # stock diffusers loads the base model and finds no SLA keys
    model = WanTransformer3DModel.from_pretrained(out)
    assert not [n for n, _ in model.named_parameters() if "sla" in n]


def test_infer_on_export_is_bit_identical_to_checkpoint(exported, tmp_path):
    outcome, out = exported
    from_checkpoint = run_infer(str(outcome.sweep_dir), out=tmp_path / "ckpt", num_samples=2,
                                seed=5, device="cpu", log_to_mlflow=False)  # fmt: skip
    from_export = run_infer(str(out), out=tmp_path / "export", num_samples=2, seed=5,
                            device="cpu", log_to_mlflow=False)  # fmt: skip
    a = load_file(str(from_checkpoint.out_dir / TENSOR_FILE))
    b = load_file(str(from_export.out_dir / TENSOR_FILE))
    assert torch.equal(a["noise"], b["noise"])
    assert torch.equal(a["clips"], b["clips"])
    assert from_export.sla_calls == from_checkpoint.sla_calls > 0
    assert (
        from_export.summary["trial"] is None and from_export.summary["source"]["kind"] == "export"
    )
    assert from_export.summary["source"]["trial"] == from_checkpoint.summary["trial"]


def test_export_refuses_a_non_empty_out_and_the_control(exported, smoke_sweep, tmp_path, capsys):
    outcome, out = exported
    assert cli_main(["export", str(outcome.sweep_dir), str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    control = next(r for r in outcome.rows if r.sla is None)
    assert (
        cli_main(
            ["export", str(outcome.sweep_dir), str(tmp_path / "c"), "--trial", control.trial_id]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "full-attention control" in err

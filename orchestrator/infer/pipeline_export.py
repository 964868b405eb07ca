"""A pipeline trial's export: a whole pipeline directory that stock `WanPipeline.from_pretrained`
loads, with the fine-tuned transformer, SLA's weights and settings, and a model card (see
orchestrator.infer.pipeline)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.infer.export_info import card_metrics, lora_info
from orchestrator.infer.model import INFERENCE_FILE, InferenceError
from orchestrator.infer.pipeline import PIPELINE_KIND, PipelineTrial
from orchestrator.models.experts import EXPERT_NAMES, ExpertPair
from orchestrator.recipe.checkpoint import SLA_FILE
from orchestrator.recipe.lora import detach_lora, has_lora
from sla_kernel_glue import export_base_model

if TYPE_CHECKING:
    from orchestrator.infer.target import Target


CARD_METRICS = ("val/loss", "val/loss_gap", "val/video_psnr", "val/video_ssim",
                "flops/attention_ratio")  # fmt: skip
PIPELINE_CARD = """\
# {title}

A diffusers `WanPipeline` whose transformer was fine-tuned **with Sparse-Linear Attention (SLA)**
by sla-sweep.

**Keep SLA on at inference.** `transformer/` holds the fine-tuned weights without SLA's tensors;
each SLA layer's linear branch (`proj_l`) is in `sla_attention.pt` at the top of this directory.
`WanPipeline.from_pretrained` alone loads the pipeline with dense attention, and its videos will
be worse than what was measured in the sweep.

- SLA settings: `{sla}` (also in `sla_config.json`)
- Source: {source}
- Metrics at export: {metrics}
- Trained at: {frames} frames of {height}x{width}; prompts padded to {max_text_len} tokens

## Use

    sla-sweep infer {out_sh} --prompt {prompt_sh}      # MP4 + frame grid, SLA on

or in Python:

```python
import json

import torch
from diffusers import WanPipeline
from sla_kernel_glue import SLAConfig, apply_sla, load_sla_state{imports}

out = {out_py}
pipe = WanPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True)
sla = SLAConfig.from_dict(json.loads(open(f"{{out}}/sla_config.json").read()))
if not torch.cuda.is_available() and sla.backend == "triton":
    sla = sla.replace(backend="auto")  # the PyTorch reference off CUDA
{apply}load_sla_state(handle, out)  # each layer's proj_l from sla_attention.pt
frames = pipe(
    {prompt_py}, negative_prompt={negative!r}, num_frames={frames}, height={height},
    width={width}, num_inference_steps={steps}, guidance_scale={guidance},
    max_sequence_length={max_text_len}, generator=torch.Generator().manual_seed(0),
    output_type="pt",
).frames[0]  # (F, 3, H, W) in [0, 1]
```
"""


def export_pipeline(
    resolved: Target, trial: PipelineTrial, staging: Path, *, out: Path, merge: bool = False
) -> dict[str, int]:
    """Write the whole pipeline export into `staging` (renamed to `out` by the caller); a LoRA
    trial's adapter at its top (`pipe.load_lora_weights(OUT)`), or merged into transformer/.

    Returns how many component files were hard-linked and how many copied."""
    if trial.handle is None:
        raise InferenceError(f"{resolved.directory} holds no SLA trial; nothing SLA to export")
    counts = link_components(trial.info.root, staging)
    lora = lora_info(trial.transformer, merge)
    if has_lora(trial.transformer):
        detach_lora(trial.transformer, staging, merge=merge)
    if isinstance(trial.transformer, ExpertPair):  # transformer/ and transformer_2/
        export_base_model(trial.handle, staging)
    else:
        export_base_model(trial.handle, staging / "transformer")
        os.replace(staging / "transformer" / SLA_FILE, staging / SLA_FILE)
    sla = trial.sla.to_dict()
    known = {"trial": resolved.trial_id, "mlflow_run_id": resolved.run_id,
             "tracking_uri": resolved.tracking_uri}  # fmt: skip
    source = {**trial.source, **{k: v for k, v in known.items() if v is not None}}
    (staging / "sla_config.json").write_text(json.dumps(sla, indent=2, sort_keys=True) + "\n")
    meta = {"kind": PIPELINE_KIND, "sla": sla, "generation": trial.defaults.to_dict(),
            "max_text_len": trial.info.max_text_len, "source": source, "lora": lora,
            "experts": trial.experts}  # fmt: skip
    (staging / INFERENCE_FILE).write_text(
        json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    )
    d = trial.defaults
    prompt = (d.prompts or ("a video",))[0]
    where = source.get("checkpoint") or source.get("export") or "unknown"
    trial_name = f"trial {source['trial']} " if source.get("trial") else ""
    card = PIPELINE_CARD.format(
        title=f"SLA fine-tune of {Path(source.get('pipeline') or trial.info.root).name}",
        sla=json.dumps(sla, sort_keys=True), source=f"{trial_name}{where} (step {source.get('step', '?')})",
        metrics=card_metrics(source, CARD_METRICS), out_sh=shlex.quote(str(out)),
        out_py=repr(str(out)), prompt_sh=shlex.quote(prompt), prompt_py=repr(prompt),
        negative=d.negative_prompt, frames=d.frames, height=d.height, width=d.width, steps=d.steps,
        guidance=d.guidance_scale, max_text_len=trial.info.max_text_len,
        **card_sla_lines(trial.transformer),
    )  # fmt: skip
    (staging / "README.md").write_text(card)
    return counts


ONE_APPLY = (
    "handle = apply_sla(pipe.transformer, sla)  # every self-attention layer, as in training\n"
)
PAIR_APPLY = """\
# both experts as sla-sweep trained them: SLA's layer paths start transformer. / transformer_2.
experts = torch.nn.ModuleDict({"transformer": pipe.transformer, "transformer_2": pipe.transformer_2})
layers = list(read_sla_state(f"{out}/sla_attention.pt")["layers"])  # the trained experts' layers
handle = apply_sla(experts, sla, targets=layers)
"""


def card_sla_lines(model) -> dict[str, str]:
    """The model card's lines that put SLA in: one transformer, or a Wan2.2 A14B pair."""
    if isinstance(model, ExpertPair):
        return {"apply": PAIR_APPLY, "imports": ", read_sla_state"}
    return {"apply": ONE_APPLY, "imports": ""}


def link_components(root: Path, dst: Path) -> dict[str, int]:
    """model_index.json and every component folder it names but the transformers, into `dst`:
    files hard-linked where `dst` is on the same filesystem, else copied (never symlinked)."""
    index = json.loads((root / "model_index.json").read_text())
    folders = [
        name for name, value in index.items()
        if not name.startswith("_") and name not in EXPERT_NAMES and isinstance(value, list)
        and value and value[0] is not None and (root / name).is_dir()
    ]  # fmt: skip
    counts = {"linked": 0, "copied": 0}
    _place(root / "model_index.json", dst / "model_index.json", counts)
    for folder in folders:
        for here, _dirs, names in os.walk(root / folder, followlinks=True):
            for name in names:
                source = Path(here) / name
                _place(source, dst / source.relative_to(root), counts)
    return counts


def _place(source: Path, target: Path, counts: dict[str, int]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # follows a symlinked source (a hub cache's blobs): the real file
        counts["linked"] += 1
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)
        counts["copied"] += 1

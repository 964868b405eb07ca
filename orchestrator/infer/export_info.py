"""What an export records about itself, shared by the preset export (export) and the pipeline export
(pipeline_export): inference.json's name and its "lora" entry, and the model card's metrics line.
Plain Python: the CLI imports it to build its parser, so recipe.lora (torch) loads in lora_info."""

from __future__ import annotations

from typing import Any

INFERENCE_FILE = "inference.json"  # an export's generation settings and provenance
CARD_METRICS = ("val/loss", "val/loss_gap", "val/sample_psnr", "flops/attention_ratio")


def lora_info(model: Any, merge: bool) -> dict[str, Any] | None:
    """inference.json's "lora": how a LoRA trial's adapter was exported (None: no adapter)."""
    from orchestrator.recipe.lora import LORA_FILE, has_lora  # heavy: torch

    if not has_lora(model):
        return None
    config = next(iter(model.peft_config.values()))
    return {"rank": int(config.r), "alpha": float(config.lora_alpha), "merged": merge,
            "file": None if merge else LORA_FILE}  # fmt: skip


def card_metrics(source: dict[str, Any], keys: tuple[str, ...] = CARD_METRICS) -> str:
    """The model card's metrics line: the sweep's main metrics (`keys`) at export."""
    metrics = source.get("metrics") or {}
    shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
    return shown or "none recorded"

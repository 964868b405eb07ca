"""`sla-sweep export TARGET OUT`: a self-contained directory for inference or a hub upload.

    OUT/config.json, OUT/diffusion_pytorch_model.safetensors   the base model in diffusers format,
                                                               without SLA tensors
    OUT/sla_attention.pt      the SLA layers' weights (proj_l per layer) and settings
    OUT/sla_config.json       the SLA settings as JSON
    OUT/inference.json        clip shape, prompts, sampler settings, and where it came from
    OUT/README.md             a short model card: keep SLA on at inference

TARGET is anything `sla-sweep infer` takes (a sweep directory, a checkpoint, an MLflow run id);
`sla-sweep infer OUT` loads the export and gives the same samples as the checkpoint.

A pipeline trial's export is a whole pipeline directory instead (orchestrator.infer.pipeline_export):
the original components hard-linked or copied, transformer/ fine-tuned without SLA tensors, and
sla_attention.pt, sla_config.json, inference.json and README.md at OUT's top.

Either is written into a temporary directory beside OUT and renamed to OUT when complete: a
failure leaves no OUT behind (an empty OUT given stays as it was).

The CLI imports this module to build its parser, so torch and the modules that load torch or
diffusers are imported inside the functions that export (heavy: every start would load them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.infer.errors import InferenceError
from orchestrator.infer.export_info import INFERENCE_FILE, card_metrics, lora_info
from orchestrator.infer.options import add_tracking_uri

if TYPE_CHECKING:
    from orchestrator.infer.target import Target

MODEL_CARD = """\
# {title}

A diffusers `WanTransformer3DModel` fine-tuned **with Sparse-Linear Attention (SLA)** by sla-sweep.

**Keep SLA on at inference.** The weights were trained together with SLA's per-layer linear
branch (`proj_l`, stored in `sla_attention.pt`). Loading `config.json` +
`diffusion_pytorch_model.safetensors` alone gives the base transformer with dense attention,
and its sample quality will be worse than what was measured in the sweep.

- SLA settings: `{sla}` (also in `sla_config.json`)
- Source: {source}
- Metrics at export: {metrics}

## Use

    sla-sweep infer {out}                      # samples with SLA on (PNG + GIF)

or in Python:

    from diffusers import WanTransformer3DModel
    from sla_kernel_glue import load_exported
    model, handle = load_exported("{out}", WanTransformer3DModel)   # SLA injected and loaded
"""


def run_export(
    target: str,
    out: Path,
    *,
    trial: str | None = None,
    tracking_uri: str | None = None,
    merge: bool = False,
) -> Path:
    """Export TARGET's model to `out` (which must be new or empty); returns `out`.

    A LoRA trial's adapter is written beside the untouched base (pytorch_lora_weights.safetensors,
    which diffusers' load_lora_weights reads), or with `merge` merged into the exported weights."""
    from orchestrator.infer.pipeline import pipeline_root  # heavy: torch and diffusers
    from orchestrator.infer.target import resolve_target  # heavy: loads infer.model

    out = _new_out(out)
    resolved = resolve_target(target, trial=trial, tracking_uri=tracking_uri)
    if resolved.is_control:
        raise InferenceError(
            f"trial {resolved.trial_id} is the full-attention control: it has no SLA weights to export; "
            "pick an SLA trial with --trial"
        )
    root = pipeline_root(resolved)
    if root is not None:
        _export_pipeline_trial(resolved, root, out, merge=merge)
    else:
        _export_preset_trial(resolved, out, merge=merge)
    return out


def _new_out(given: Path) -> Path:
    """OUT resolved; InferenceError for a symbolic link or a path that is not new or empty."""
    given = Path(given).expanduser()
    if given.is_symlink():  # resolving it would write the export wherever the link points
        raise InferenceError(
            f"OUT ({given}) is a symbolic link (to {os.readlink(given)}); give the directory "
            "itself or a new path"
        )
    out = given.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InferenceError(f"OUT ({out}) exists and is not an empty directory; choose a new path")
    return out


def _export_pipeline_trial(resolved: Target, root: Path, out: Path, *, merge: bool) -> None:
    """A pipeline trial: the whole pipeline directory (orchestrator.infer.pipeline_export)."""
    import torch  # heavy (see the module docstring)

    from orchestrator.infer.pipeline import load_pipeline_trial  # heavy: torch and diffusers
    from orchestrator.infer.pipeline_export import export_pipeline  # heavy: torch and diffusers

    piped = load_pipeline_trial(resolved, root, attention="sla", device=torch.device("cpu"))
    _check_merge(merge, piped.transformer, resolved)
    with staged_directory(out) as staging:
        counts = export_pipeline(resolved, piped, staging, out=out, merge=merge)
    print(
        f"components of {root}: {counts['linked']} files hard-linked (the same files: do not"
        f" edit them in place), {counts['copied']} copied"
    )


def _export_preset_trial(resolved: Target, out: Path, *, merge: bool) -> None:
    """A preset or transformer trial: the base model, sla_attention.pt and their descriptions."""
    import torch  # heavy (see the module docstring)

    from orchestrator.infer.model import load_checkpoint_model, load_export_model  # heavy
    from orchestrator.recipe.lora import detach_lora, has_lora  # heavy: torch
    from sla_kernel_glue import export_base_model  # heavy: torch

    load = load_export_model if resolved.kind == "export" else load_checkpoint_model
    loaded = load(resolved.directory, attention="sla", device=torch.device("cpu"))
    if loaded.handle is None:
        raise InferenceError(f"{resolved.directory} holds no SLA trial; nothing SLA to export")
    _check_merge(merge, loaded.model, resolved)
    sla = loaded.sla.to_dict()
    source = {**loaded.source, "trial": resolved.trial_id, "mlflow_run_id": resolved.run_id,
              "tracking_uri": resolved.tracking_uri}  # fmt: skip
    info = {"sla": sla, "generation": loaded.settings.to_dict(), "source": source,
            "lora": lora_info(loaded.model, merge)}  # fmt: skip
    with staged_directory(out) as staging:
        if has_lora(loaded.model):
            detach_lora(loaded.model, staging, merge=merge)
        export_base_model(loaded.handle, staging)
        (staging / "sla_config.json").write_text(json.dumps(sla, indent=2, sort_keys=True) + "\n")
        (staging / INFERENCE_FILE).write_text(
            json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
        )
        (staging / "README.md").write_text(_model_card(out, sla, source))


def _check_merge(merge: bool, model: Any, resolved: Any) -> None:
    from orchestrator.recipe.lora import has_lora  # heavy: torch

    if merge and not has_lora(model):
        raise InferenceError(
            f"--merge: {resolved.name} has no LoRA adapter to merge (a full fine-tune or "
            "SLA-only trial exports its weights as they are); run export without --merge"
        )


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """A new directory beside `out` to write into, renamed to `out` when the block completes
    (`out` must be absent or empty); removed, with `out` left as it was, when the block fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()  # with the umask's permissions, as OUT would have
    try:
        yield staging
        if out.is_dir():
            out.rmdir()  # empty (checked before); rmdir refuses if something appeared since
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _model_card(out: Path, sla: dict[str, Any], source: dict[str, Any]) -> str:
    where = source.get("checkpoint") or source.get("export") or "unknown"
    trial = f"trial {source['trial']} " if source.get("trial") else ""
    return MODEL_CARD.format(
        title=f"SLA fine-tune of {source.get('base_model') or source.get('model') or 'a Wan transformer'}",
        sla=json.dumps(sla, sort_keys=True), source=f"{trial}{where} (step {source.get('step', '?')})",
        metrics=card_metrics(source), out=out,
    )  # fmt: skip


# ---- the `sla-sweep export` subcommand -----------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `sla-sweep export`."""
    p.add_argument("target", help="a sweep directory, checkpoint directory or MLflow run id")
    p.add_argument("out", type=Path, help="a new (or empty) directory to write the export into")
    p.add_argument(
        "--trial", help="a trial id of the sweep (or a unique suffix); default: the best SLA trial"
    )
    p.add_argument("--merge", action="store_true",
                   help="a LoRA trial: merge the adapter into the exported weights (default: the "
                   "adapter file beside the untouched base)")  # fmt: skip
    add_tracking_uri(p)


def handle(args: argparse.Namespace) -> int:
    """Export a trial as a diffusers model without SLA tensors plus sla_attention.pt."""
    try:
        out = run_export(args.target, args.out, trial=args.trial,
                         tracking_uri=args.tracking_uri, merge=args.merge)  # fmt: skip
    except (ValueError, OSError) as exc:  # InferenceError, SLAStateError, bad files: one line
        print(f"sla-sweep export: error: {exc}", file=sys.stderr)
        return 2
    from orchestrator.infer.pipeline import is_pipeline_export  # heavy: torch and diffusers

    if is_pipeline_export(out):
        print(f"exported to {out} (the whole pipeline, transformer/ fine-tuned + sla_attention.pt"
              " + sla_config.json + README.md)")  # fmt: skip
        print(f'run it with SLA on: sla-sweep infer {out} --prompt "..."')
        return 0
    print(f"exported to {out} (base model + sla_attention.pt + sla_config.json + README.md)")
    print(f"run it with SLA on: sla-sweep infer {out}")
    return 0

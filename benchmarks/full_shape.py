"""Wan2.1-T2V-1.3B at its full shape on one GPU, random weights: the encode, a training step, the
validation decode, a trial's checkpoint bytes and a denoising step.

    python -m benchmarks.full_shape --out OUT                          # every phase (GPU)
    python -m benchmarks.full_shape --out OUT --phases train infer     # some of them
    python -m benchmarks.full_shape --tiny --out OUT --phases train    # a CPU check of the code

Speed does not depend on the weights, so the three models are built from the released configs
of Wan-AI/Wan2.1-T2V-1.3B-Diffusers with random weights, nothing downloaded: the
WanTransformer3DModel (30 layers, 12 heads x 128, FFN 8960, text_dim 4096), the AutoencoderKLWan
(base_dim 96, z_dim 16, 4x8x8) and the UMT5-XXL encoder (d_model 4096, 24 layers, 64 heads,
d_ff 10240). Clips are 81 frames of 480x832 -> latents 16 x 21 x 60 x 104 -> 32,760 tokens.
`--tiny` swaps in a tiny shape (the tiny pipeline's sizes) so that the code runs on a CPU.

Phases, in the order given; each writes OUT/<phase>.json as soon as it ends (train phases after
every config), so a run that is cut keeps what it measured; a phase that fails writes
OUT/<phase>.error.txt and the next phase runs.

- encode: the pipeline-data path's encoders (float32, one clip or text a call, as the cache
  encodes them): `encode_videos` of a synthetic clip (uniform noise in [-1, 1]; no MP4 decode)
  and the text encoder on one caption padded to 512 tokens (random ids; no tokenizer);
- decode: the validation's `decode_latents` of one 81-frame latent (float32 VAE);
- train: one training step (flow-matching loss under bf16 autocast, backward, gradient clipping
  at 1.0, AdamW), dense (torch SDPA) vs SLA topk 0.05 (the repo's injection, Triton backend),
  full fine-tune vs LoRA rank 16 (the recipe's add_lora and freezing), eager; gradient
  checkpointing only where the step does not fit without it (`--grad-ckpt auto`);
- infer: one denoising forward pass under no_grad, dense vs SLA;
- checkpoint: the recipe's `save_checkpoint` after one optimizer step, full fine-tune vs LoRA vs
  SLA-only (train_base false), SLA on; the bytes of every file, then the files are deleted;
- train_compiled: the train phase's full fine-tune with every block torch.compile'd.

The models and shapes are in benchmarks.full_shape_models, the train phases in
benchmarks.full_shape_train.
"""

from __future__ import annotations

# Imports inside functions: each phase imports the orchestrator modules it runs (the recipe,
# diffusers), so `--help`, the tiny tests and the other phases start without them.
import argparse
import contextlib
import dataclasses
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.full_shape_models import (
    FULL,
    GIB,
    TINY,
    Shape,
    _fresh,
    _memory,
    _timed,
    build_text_encoder,
    build_transformer,
    build_vae,
    make_batch,
    pipeline_info,
    prepare_model,
    sla_config,
)
from benchmarks.full_shape_train import phase_train

PHASES = ("encode", "decode", "train", "infer", "checkpoint", "train_compiled")


# ---- phases ------------------------------------------------------------------------------------
def _vae_encode(shape: Shape, device: torch.device, args: argparse.Namespace) -> dict:
    """Seconds of encode_videos of one synthetic clip, as the cache encodes each clip."""
    from orchestrator.models.pipeline_models import encode_videos

    _fresh(device)
    vae = build_vae(shape, device)
    info = pipeline_info(shape, vae)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand((1, 3, shape.frames, shape.height, shape.width), generator=g) * 2 - 1
    out = _timed(lambda: encode_videos(vae, info, pixels), device, warmup=1, reps=args.reps_encode)
    out.update(_memory(device), pixels=list(pixels.shape))
    out["clips_per_s"] = 1 / out["median_s"]
    return out


def _text_encode(shape: Shape, device: torch.device, args: argparse.Namespace) -> dict:
    """Seconds of the text encoder on one caption padded to text_len (random ids + eos)."""
    _fresh(device)
    encoder = build_text_encoder(shape, device)
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(1, shape.text_len, dtype=torch.long)
    n = shape.caption_tokens
    ids[0, :n] = torch.randint(3, shape.text_encoder["vocab_size"], (n,), generator=g)
    ids[0, n - 1] = 1  # the eos token ends the caption
    mask = (ids > 0).long()

    @torch.no_grad()
    def encode_text() -> torch.Tensor:
        return encoder(ids.to(device), mask.to(device)).last_hidden_state.float().cpu()

    out = {**_timed(encode_text, device, warmup=1, reps=args.reps_text), **_memory(device)}
    out.update(texts_per_s=1 / out["median_s"], params=sum(p.numel() for p in encoder.parameters()))
    return out


def phase_encode(shape: Shape, device: torch.device, args: argparse.Namespace) -> dict:
    """clips/s of the VAE encode and texts/s of the text encoder, float32, one a call."""
    clip = _vae_encode(shape, device, args)
    text = _text_encode(shape, device, args)
    _fresh(device)
    both = 1 / (clip["median_s"] + text["median_s"])
    return {"vae_encode": clip, "text_encode": text, "clips_per_s_with_caption": both,
            "latent": list(shape.latent), "dtype": "float32"}  # fmt: skip


def phase_decode(shape: Shape, device: torch.device, args: argparse.Namespace) -> dict:
    """Seconds of decode_latents of one clip's latent, float32, as the validation decodes."""
    from orchestrator.models.pipeline_models import decode_latents

    _fresh(device)
    vae = build_vae(shape, device)
    info = pipeline_info(shape, vae)
    latents = torch.randn((1, *shape.latent), generator=torch.Generator().manual_seed(0))
    out = _timed(
        lambda: decode_latents(vae, info, latents), device, warmup=1, reps=args.reps_decode
    )
    out.update(_memory(device), latent=list(latents.shape), dtype="float32")
    out["video"] = [1, 3, shape.frames, shape.height, shape.width]
    return out


def _infer_row(shape: Shape, device: torch.device, args: argparse.Namespace, sla) -> dict:
    """One denoising forward pass (no_grad, bf16 autocast) of a fresh model, seed 0."""
    from orchestrator.recipe.flow_matching import predict_velocity

    _fresh(device)
    model = build_transformer(shape, device).eval()
    handle = prepare_model(model, shape, mode="full", sla=sla)
    _, noise, t, context = make_batch(shape, device)

    @torch.no_grad()
    def forward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            predict_velocity(model, noise, t, context)

    times = _timed(forward, device, warmup=1, reps=args.reps_infer)
    row = {"attention": "dense" if sla is None else "sla", **times, **_memory(device)}
    if handle is not None:
        row["sla_calls_per_forward"] = handle.sla_calls() / (args.reps_infer + 1)
        handle.remove()
    return row


def phase_infer(shape: Shape, device: torch.device, args: argparse.Namespace) -> dict:
    """Dense vs SLA, the same weights and inputs."""
    rows = [_infer_row(shape, device, args, sla) for sla in (None, sla_config(shape, args))]
    rows[1]["speedup_vs_dense"] = rows[0]["median_s"] / rows[1]["median_s"]
    return {"tokens": shape.tokens, "rows": rows}


def checkpoint_files(shape: Shape, device, args, *, mode: str, directory: Path) -> dict:
    """The recipe's checkpoint of one trial after one optimizer step: each file's bytes."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from orchestrator.recipe.checkpoint import FrozenBase, save_checkpoint
    from orchestrator.recipe.flow_matching import flow_loss

    sla = sla_config(shape, args)
    cuda = device.type == "cuda"
    acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    _fresh(device)
    model = build_transformer(shape, device).train()
    model.enable_gradient_checkpointing()  # this phase measures bytes, not time or memory
    handle = prepare_model(model, shape, mode=mode, sla=sla)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    model, optimizer = acc.prepare(model, optimizer)
    frozen = None
    if mode != "full":
        identity = {"id": f"random-{shape.name}", "note": "random weights, built from configs"}
        frozen = FrozenBase(acc.unwrap_model(model), identity, lora=mode == "lora")
        frozen.register(acc)
    x0, noise, t, context = make_batch(shape, device)
    with acc.autocast():
        loss = flow_loss(model, x0, noise, t, context)
    acc.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    train = {"lora": {"rank": shape.lora_rank}} if mode == "lora" else {}
    target = save_checkpoint(
        acc, handle, directory / "checkpoint_000001", step=1, sla=sla, metrics={},
        base_model=f"random-{shape.name}", train=train, frozen=frozen,
    )  # fmt: skip
    save_s = time.perf_counter() - start
    files = {
        str(f.relative_to(target)): f.stat().st_size
        for f in sorted(target.rglob("*"))
        if f.is_file()
    }
    shutil.rmtree(target)
    handle.remove()
    acc.free_memory()
    AcceleratorState._reset_state(reset_partial_state=False)  # the next mode's Accelerator
    GradientState._reset_state()
    return {"mode": mode, "checkpoint_bytes": sum(files.values()), "files": files,
            "save_s": save_s}  # fmt: skip


def phase_checkpoint(shape: Shape, device, args, *, write=None) -> dict:
    rows: list[dict] = []
    out = {"sla": sla_config(shape, args).to_dict(), "lora_rank": shape.lora_rank, "rows": rows}
    with tempfile.TemporaryDirectory(prefix="full-shape-ckpt-", dir=args.tmp) as tmp:
        for mode in ("full", "lora", "sla_only"):
            rows.append(checkpoint_files(shape, device, args, mode=mode, directory=Path(tmp)))
            full = rows[0]["checkpoint_bytes"]
            rows[-1]["fraction_of_full"] = rows[-1]["checkpoint_bytes"] / full
            print(json.dumps(rows[-1]), flush=True)
            if write is not None:
                write(out)
    return out


# ---- the command -------------------------------------------------------------------------------
def environment(device: torch.device, shape: Shape) -> dict:
    import diffusers
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
           "shape": dataclasses.asdict(shape), "tokens": shape.tokens}  # fmt: skip
    for name in ("triton", "peft", "accelerate"):
        with contextlib.suppress(ImportError):
            env[name] = __import__(name).__version__
    if device.type == "cuda":
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / GIB
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.full_shape", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="directory for <phase>.json")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--tiny", action="store_true", help="a tiny shape (a CPU check of the code)")
    p.add_argument("--topk", type=float, default=0.05)
    p.add_argument("--backend", choices=("triton", "torch", "auto"), default=None,
                   help="SLA backend (default: triton on CUDA, torch elsewhere)")  # fmt: skip
    p.add_argument("--grad-ckpt", choices=("auto", "on", "off"), default="auto",
                   help="auto: checkpointing only where a step does not fit without it")  # fmt: skip
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after a warm-up)")
    p.add_argument("--reps-encode", type=int, default=3)
    p.add_argument("--reps-text", type=int, default=5)
    p.add_argument("--reps-decode", type=int, default=2)
    p.add_argument("--reps-infer", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new training config after this many seconds")  # fmt: skip
    p.add_argument("--tmp", type=Path, default=None, help="where checkpoints are written")
    args = p.parse_args(argv)
    if args.backend is None:
        args.backend = "triton" if torch.cuda.is_available() else "torch"
    args.needed_ckpt = {}  # (mode, attention) -> whether the eager step needed checkpointing
    args.deadline = time.monotonic() + (
        args.budget_s if args.budget_s is not None else float("inf")
    )
    return args


def run_phase(phase: str, shape: Shape, device: torch.device, args: argparse.Namespace) -> dict:
    def write(result: dict) -> None:
        (args.out / f"{phase}.json").write_text(json.dumps(result, indent=1, default=str))

    if phase == "encode":
        return phase_encode(shape, device, args)
    if phase == "decode":
        return phase_decode(shape, device, args)
    if phase in ("train", "train_compiled"):
        return phase_train(shape, device, args, compile=phase == "train_compiled", write=write)
    if phase == "infer":
        return phase_infer(shape, device, args)
    return phase_checkpoint(shape, device, args, write=write)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(device, shape)
    (args.out / "environment.json").write_text(json.dumps(env, indent=1))
    print(f"{env['device']}: {shape.name}, {shape.tokens} tokens, phases {args.phases}", flush=True)
    failed = []
    for phase in args.phases:
        start = time.perf_counter()
        try:
            result = run_phase(phase, shape, device, args)
        except Exception:  # recorded and reported; the next phase still runs
            failed.append(phase)
            (args.out / f"{phase}.error.txt").write_text(traceback.format_exc())
            print(f"{phase} FAILED:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            continue
        result["phase_s"] = time.perf_counter() - start
        (args.out / f"{phase}.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"{phase} done in {result['phase_s']:.1f} s: {json.dumps(result)[:2000]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

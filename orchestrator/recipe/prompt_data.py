"""Prompts alone as a pipeline's data: the dense base's own generations, made once before trials.

With `data.source` a prompt file (orchestrator.data.prompts), `prepare_encoded` comes here. Every
prompt (and the validation prompts and the negative prompt) is text-encoded into the cache as a
caption is; then the pipeline's untouched transformer, with full attention, samples one latent per
prompt from seeded noise: `data.generate_steps` Euler steps of the flow ODE at the pipeline's
shift, classifier-free guidance `data.generate_guidance` against validation's negative prompt.
The final sample x0 is stored as that prompt's latent (a LATENTS entry holding "mean" alone, so
training draws it as it is), and the manifest is the one encoded clips have: trials read it the
same way and never load the text encoder.

Why the sampler's end point and few steps: a distill trial noises its latent at a timestep drawn
from the training distribution, x_t = (1 - t) x0 + t noise, and matches the teacher's velocity
there. What must be right is that x_t lies where the base's own samples go, at every t; that
needs an x0 the base makes, not a polished one: the target is the teacher's velocity, not x0. A
point along the trajectory would pin each latent to the sampler's few timesteps and need its
noise kept beside it. Each step costs one transformer call (two with guidance), so the cost per
prompt is generate_steps x 2 calls (docs/benchmarks.md measures it).

Keys: a latent entry is keyed by the digests of the transformer's files, the prompt's text entry
key (the text encoder's files, the prompt, its length and dtype), the negative prompt's, the seed
(train.base_seed, else train.seed), the steps, the guidance, the shift, the latent shape and the
dtype of the generation (float32 on the CPU, bf16 autocast on CUDA). A second sweep over the
same prompts and model generates nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from orchestrator.data.cache import FileDigests, TensorCache, key_of
from orchestrator.data.encoded import (
    LATENTS,
    MODEL_FILES,
    TEXTS,
    EncodeError,
    EncodeSettings,
    _encode_texts,
    _manifest,
    _missing,
    _progress,
    _text_inputs,
    _write_manifest,
    model_digest,
)
from orchestrator.data.prompts import read_prompts

from .config import TrainConfig
from .flow_matching import guided_euler_sample

GENERATION_FORMAT = 1
TRANSFORMER_FILES = {"transformer": MODEL_FILES}


@dataclasses.dataclass(frozen=True)
class PromptEntry:
    """One prompt of the file, where a clip entry would be: its place and its text."""

    path: str  # "<file>#<n>" (the n-th prompt)
    caption: str


def generate_prompt_latents(
    train: TrainConfig,
    settings: EncodeSettings,
    *,
    cache_root: Path,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> Path:
    """Encode the prompts and generate what the cache lacks; returns the manifest's path."""
    from orchestrator.models.pipeline import read_pipeline  # heavy: diffusers

    info = read_pipeline(train.model)
    problems = info.size_errors(
        settings.frames, *settings.size, names=("data.frames",) + ("data.size",) * 2
    )
    if problems:
        raise EncodeError("; ".join(problems))
    source = Path(train.data.source)
    prompts = read_prompts(source)
    if not 1 <= settings.num_val < len(prompts):
        raise EncodeError(
            f"data.num_val ({settings.num_val}) must be in [1, {len(prompts) - 1}] for the "
            f"{len(prompts)} prompts of {source} (one to train on, one held out at least)"
        )
    cache = TensorCache(cache_root, log=log)
    digests = FileDigests(cache_root / "digests.json")
    started = time.perf_counter()
    texts = prompts + list(settings.prompts) + [settings.negative_prompt]
    captions = _text_inputs(info, texts, settings, digests)
    latents = _latent_inputs(info, train, captions, len(prompts), device, digests)
    text_todo, latent_todo = _missing(cache, TEXTS, captions), _missing(cache, LATENTS, latents)
    if (text_todo or latent_todo) and not cache.writable():
        raise EncodeError(
            f"the cache {cache_root} is read-only and lacks {len(latent_todo)} generated latents "
            f"and {len(text_todo)} encoded texts; make it writable or set data.cache_dir to a "
            "writable folder"
        )
    _encode_texts(info, text_todo, settings, cache, device, log)
    generate_s = _generate(info, train, latent_todo, captions[-1][0], cache, device, log)
    entries = [PromptEntry(f"{source}#{n + 1}", p) for n, p in enumerate(prompts)]
    keys = [k for k, _, _ in latents], [k for k, _, _ in captions]
    manifest = _manifest(info, entries, *keys, settings, cache)
    manifest["generation"] = {"source": str(source), "prompts": len(prompts),
                              **{k: v for k, v in latents[0][1].items() if k != "text"}}  # fmt: skip
    manifest["stats"] = {kind: dataclasses.asdict(s) for kind, s in cache.stats.items()}
    manifest["stats"]["seconds"] = time.perf_counter() - started
    manifest["stats"]["generate_s"] = generate_s
    return _write_manifest(manifest, cache_root, log)


def _latent_inputs(info, train, captions, count, device, digests) -> list[tuple[str, dict, int]]:
    """(key, the inputs it is the hash of, the prompt's index) of every prompt's latent."""
    frames, (height, width) = int(train.data.frames), train.data.hw
    common = {
        "format": GENERATION_FORMAT,
        "transformer": model_digest(digests, info.root, TRANSFORMER_FILES),
        "negative": captions[-1][0],  # the negative prompt's text key
        "seed": train.data_seed,
        "steps": train.data.generate_steps,
        "guidance": float(train.data.generate_guidance),
        "shift": float(train.flow_shift),
        "shape": list(info.latent_shape(frames, height, width)),
        "dtype": "bf16" if device.type == "cuda" else "float32",
    }
    described = [({**common, "text": captions[i][0]}, i) for i in range(count)]
    return [(key_of(inputs), inputs, i) for inputs, i in described]


def _noise(inputs: dict[str, Any]) -> torch.Tensor:
    """(1, *shape) noise of one prompt: its seed and its text, whatever its place in the file."""
    digest = hashlib.sha256(f"{inputs['seed']}:{inputs['text']}".encode()).hexdigest()
    generator = torch.Generator().manual_seed(int(digest[:15], 16))
    return torch.randn((1, *inputs["shape"]), generator=generator)


def _generate(info, train, todo, negative_key, cache, device, log) -> float:
    """Sample the latents the cache lacks with the dense base (which loads only then); seconds."""
    from orchestrator.models.pipeline_models import load_transformer, pad_prompts  # heavy

    if not todo:
        return 0.0
    started = time.perf_counter()
    stats = cache.stats_for(LATENTS)
    model = load_transformer(info).to(device).eval().requires_grad_(False)
    max_len = info.max_text_len
    negative = pad_prompts([cache.load(TEXTS, negative_key)["embed"].float()], max_len)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )
    with _progress(len(todo), "generating latents", "prompt") as bar:
        for key, inputs, _ in todo:
            context = pad_prompts([cache.load(TEXTS, inputs["text"])["embed"].float()], max_len)
            x0 = guided_euler_sample(
                model, _noise(inputs).to(device), context.to(device), negative.to(device),
                steps=inputs["steps"], shift=inputs["shift"], guidance=inputs["guidance"],
                autocast=autocast,
            )  # fmt: skip
            cache.save(LATENTS, key, {"mean": x0[0].float().cpu().contiguous()}, inputs=inputs)
            stats.computed += 1
            bar.update(1)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    seconds = time.perf_counter() - started
    log(f"generated {len(todo)} latents with the dense base in {seconds:.1f} s "
        f"({stats.hits} already cached)")  # fmt: skip
    return seconds

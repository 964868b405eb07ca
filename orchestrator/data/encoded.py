"""A folder of captioned clips, encoded once by a pipeline's VAE and text encoder, for training.

`encode_dataset` runs before any trial (on the driver, on a GPU when there is one): it checks the
whole folder (every problem listed at once), VAE-encodes every clip and text-encodes every
caption, validation prompt and the negative prompt into the content-addressed TensorCache, and
writes a manifest naming the entries. Trials read the manifest and the cache only: they never
load the VAE or the text encoder to train, so a trial's memory is the transformer's.

What is stored, and why: the VAE posterior's mean and std of each clip, normalised as WanPipeline
normalises latents. Training draws a latent from N(mean, std) with the trial's own generator (the
posterior, as the VAE defines it; an augmentation that costs nothing), validation uses the mean
(fixed inputs for every trial). Keeping the std costs one more tensor per clip and lets the choice
change without re-encoding.

Keys: a clip entry is keyed by the VAE files' digests, the clip file's digest, frames, fps, size
and the VAE dtype; a text entry by the text encoder's and tokenizer's digests, the text, the
maximum length and the dtype. A second sweep over the same data and model encodes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from orchestrator.data.cache import FileDigests, TensorCache, default_cache_root, key_of

MANIFEST_FORMAT = 1
LATENTS, TEXTS = "latents", "texts"  # the two kinds of cache entries
VAE_FILES = ("vae/*",)
TEXT_FILES = ("text_encoder/*", "tokenizer/*")


class EncodeError(ValueError):
    """The settings do not fit the pipeline or the folder; the message names the value."""


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
    """Everything that changes an encoded clip or caption, and how the folder is split."""

    frames: int
    size: tuple[int, int]  # (H, W) in pixels
    fps: float | None = None  # resample clips to this rate; None keeps every frame
    dtype: str = "float32"  # of the VAE and the text encoder while encoding
    short: str = "error"  # clips shorter than `frames`: "error" or "skip"
    num_val: int = 1  # the last clips (by name) held out for val/loss
    prompts: tuple[str, ...] = ()  # validation prompts
    negative_prompt: str = ""


def cache_dir(root: str | Path | None) -> Path:
    """Where encoded entries live: `root`, else <$SLA_SWEEP_CACHE or ~/.cache/sla-sweep>/encoded."""
    return Path(root).expanduser() if root else default_cache_root() / "encoded"


def encode_dataset(
    pipeline_dir: Path,
    data_dir: Path,
    settings: EncodeSettings,
    *,
    cache_root: Path,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> Path:
    """Encode what is not cached yet and write the manifest; returns the manifest's path."""
    from orchestrator.data.videos import scan_folder
    from orchestrator.models.pipeline import read_pipeline

    info = read_pipeline(pipeline_dir)
    problems = info.size_errors(settings.frames, *settings.size)
    if problems:
        raise EncodeError("; ".join(problems))
    entries, notes = scan_folder(
        data_dir, frames=settings.frames, fps=settings.fps, short=settings.short
    )
    for note in notes:
        log(note)
    if not 1 <= settings.num_val < len(entries):
        raise EncodeError(
            f"data.num_val ({settings.num_val}) must be in [1, {len(entries) - 1}] for the "
            f"{len(entries)} usable clips of {data_dir} (one to train on, one held out at least)"
        )
    cache = TensorCache(cache_root, log=log)
    digests = FileDigests(cache_root / "digests.json")
    started = time.perf_counter()
    clip_keys = _encode_clips(info, entries, settings, cache, digests, device, log)
    texts = [e.caption for e in entries] + list(settings.prompts) + [settings.negative_prompt]
    text_keys = _encode_texts(info, texts, settings, cache, digests, device, log)
    manifest = _manifest(info, entries, clip_keys, text_keys, settings, cache)
    manifest["stats"] = {kind: dataclasses.asdict(s) for kind, s in cache.stats.items()}
    manifest["stats"]["seconds"] = time.perf_counter() - started
    path = (
        cache_root
        / "manifests"
        / f"{key_of({k: manifest[k] for k in ('train', 'val', 'validation')})}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path


def _encode_clips(info, entries, settings, cache, digests, device, log) -> list[str]:
    """Cache keys of every clip's latents, VAE-encoding the missing ones (the VAE loads only then)."""
    from orchestrator.data.videos import decode_clip
    from orchestrator.models.pipeline_models import encode_videos, load_vae

    model_digest = digests.of_tree(info.root, VAE_FILES)
    common = {"vae": model_digest, "frames": settings.frames, "fps": settings.fps,
              "size": list(settings.size), "dtype": settings.dtype}  # fmt: skip
    keys = [key_of({**common, "clip": digests.of(e.path)}) for e in entries]
    todo = [(e, k) for e, k in zip(entries, keys, strict=True) if not cache.has(LATENTS, k)]
    stats = cache.stats_for(LATENTS)
    stats.hits += len(entries) - len(todo)
    if not todo:
        return keys
    vae = load_vae(info, device=device, dtype=getattr(torch, settings.dtype))
    with _progress(len(todo), "encoding clips", "clip") as bar:
        for entry, key in todo:
            pixels = decode_clip(
                entry, frames=settings.frames, fps=settings.fps, size=settings.size
            )
            mean, std = encode_videos(vae, info, pixels[None].to(device))
            cache.save(LATENTS, key, {"mean": mean[0], "std": std[0]}, source=str(entry.path))
            stats.computed += 1
            bar.update(1)
    del vae
    _free(device)
    log(f"encoded {len(todo)} clips with the VAE ({len(entries) - len(todo)} already cached)")
    return keys


def _encode_texts(info, texts, settings, cache, digests, device, log) -> list[str]:
    """Cache keys of every text's embedding, text-encoding the missing ones."""
    from orchestrator.models.pipeline_models import encode_prompts, load_text_encoder

    model_digest = digests.of_tree(info.root, TEXT_FILES)
    common = {"text_encoder": model_digest, "max_len": info.max_text_len, "dtype": settings.dtype}
    keys = [key_of({**common, "text": t}) for t in texts]
    unique = dict(zip(keys, texts, strict=True))
    todo = {k: t for k, t in unique.items() if not cache.has(TEXTS, k)}
    stats = cache.stats_for(TEXTS)
    stats.hits += len(unique) - len(todo)
    if todo:
        tokenizer, encoder = load_text_encoder(
            info, device=device, dtype=getattr(torch, settings.dtype)
        )
        with _progress(len(todo), "encoding texts", "text") as bar:
            for key, text in todo.items():
                (embed,) = encode_prompts(
                    tokenizer, encoder, [text], max_len=info.max_text_len, device=device
                )
                cache.save(TEXTS, key, {"embed": embed.contiguous()}, text=text[:200])
                stats.computed += 1
                bar.update(1)
        del tokenizer, encoder
        _free(device)
        log(
            f"encoded {len(todo)} texts with the text encoder ({len(unique) - len(todo)} already cached)"
        )
    return keys


def _manifest(info, entries, clip_keys, text_keys, settings, cache) -> dict[str, Any]:
    n = len(entries)
    cut = n - settings.num_val
    rows = [{"latent": clip_keys[i], "text": text_keys[i], "source": str(entries[i].path),
             "caption": entries[i].caption} for i in range(n)]  # fmt: skip
    prompts = [
        {"text": t, "key": k} for t, k in zip(settings.prompts, text_keys[n:-1], strict=True)
    ]
    shape = list(cache.load(LATENTS, clip_keys[0])["mean"].shape)
    return {
        "format": MANIFEST_FORMAT,
        "pipeline": str(info.root),
        "cache": str(cache.root),
        "settings": dataclasses.asdict(settings),
        "latent_shape": shape,
        "max_text_len": info.max_text_len,
        "train": rows[:cut],
        "val": rows[cut:],
        "validation": {
            "prompts": prompts,
            "negative": {"text": settings.negative_prompt, "key": text_keys[-1]},
        },
    }


# ---- what a trial reads ----------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable encoded-data manifest ({exc})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(
            f"{path}: manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}"
        )
    return manifest


class EncodedClips(Dataset):
    """(latent (C, F', H', W'), caption index) items of one split of a manifest.

    dataset[i] is the posterior mean (fixed: validation); draw(i, generator) samples the
    posterior (training). The caption index is into the split's own CaptionTable.
    """

    def __init__(self, manifest: dict[str, Any], split: str) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split ({split!r}) must be 'train' or 'val'")
        self.rows = manifest[split]
        self.cache = TensorCache(Path(manifest["cache"]))

    def __len__(self) -> int:
        return len(self.rows)

    def _entry(self, index: int) -> dict[str, torch.Tensor]:
        key = self.rows[index]["latent"]
        entry = self.cache.load(LATENTS, key)
        if entry is None:
            raise FileNotFoundError(
                f"encoded clip {self.rows[index]['source']} ({self.cache.path(LATENTS, key)}) is missing "
                "or damaged; run the sweep again to re-encode it"
            )
        return entry

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._entry(index)["mean"].float(), index

    def draw(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        entry = self._entry(index)
        mean, std = entry["mean"].float(), entry["std"].float()
        return mean + std * torch.randn(mean.shape, generator=generator), index


class CaptionTable:
    """table[labels] -> (B, max_text_len, D): the cached text embeddings, zero-padded as Wan pads."""

    def __init__(self, manifest: dict[str, Any], keys: Sequence[str]) -> None:
        self.keys = list(keys)
        self.max_len = int(manifest["max_text_len"])
        self.cache = TensorCache(Path(manifest["cache"]))

    @classmethod
    def of_split(cls, manifest: dict[str, Any], split: str) -> CaptionTable:
        return cls(manifest, [row["text"] for row in manifest[split]])

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
        from orchestrator.models.pipeline_models import pad_prompts

        embeds = []
        for label in torch.as_tensor(labels).tolist():
            entry = self.cache.load(TEXTS, self.keys[label])
            if entry is None:
                raise FileNotFoundError(f"encoded text {self.keys[label]} is missing or damaged")
            embeds.append(entry["embed"].float())
        return pad_prompts(embeds, self.max_len)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _progress(total: int, desc: str, unit: str):
    """A tqdm bar on stderr (rate in items/s); quiet when stderr is not a terminal or CI is set."""
    from tqdm import tqdm

    quiet = bool(os.environ.get("CI")) or not os.isatty(2)
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, mininterval=1.0)


__all__ = [
    "EncodeSettings",
    "EncodedClips",
    "CaptionTable",
    "encode_dataset",
    "read_manifest",
    "cache_dir",
]

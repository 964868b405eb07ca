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

Keys: a clip entry is keyed by the digests of the VAE files from_pretrained reads, the clip
file's digest, frames, fps, size and the VAE dtype; a text entry by the digests of the text
encoder's and tokenizer's files, the text, the maximum length and the dtype. A second sweep over
the same data and model encodes nothing. A read-only cache that holds every entry is used as it
is; one that lacks an entry is refused in one line before any model loads.

models.pipeline and models.pipeline_models load diffusers (heavy): they are imported inside the
functions that read the pipeline or run its models, so that the sweep's driver and a trial that
only reads the manifest (EncodeError, read_manifest) do not load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from orchestrator.data.cache import FileDigests, TensorCache, key_of
from orchestrator.data.videos import decode_clip, scan_folder
from orchestrator.storage.local import default_cache_root

MANIFEST_FORMAT = 1
LATENTS, TEXTS = "latents", "texts"  # the two kinds of cache entries
# What from_pretrained reads from a component's folder, at its top level only: configs and shard
# indexes (*.json) and weights; the tokenizer's configs and vocabulary. Files below those folders
# or beside these (a nested copy, a README) are no part of a key.
MODEL_FILES = ("*.json", "*.safetensors", "*.bin")
TOKENIZER_FILES = ("*.json", "*.model", "*.txt", "*.tiktoken")
VAE_FILES = {"vae": MODEL_FILES}
TEXT_FILES = {"text_encoder": MODEL_FILES, "tokenizer": TOKENIZER_FILES}


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
    from orchestrator.models.pipeline import read_pipeline  # heavy (see the module docstring)

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
    clips = _clip_inputs(info, entries, settings, digests)
    texts = [e.caption for e in entries] + list(settings.prompts) + [settings.negative_prompt]
    captions = _text_inputs(info, texts, settings, digests)
    clip_todo = _missing(cache, LATENTS, clips)
    text_todo = _missing(cache, TEXTS, captions)
    if (clip_todo or text_todo) and not cache.writable():
        raise EncodeError(_read_only_problem(cache_root, clips, clip_todo, captions, text_todo))
    _encode_clips(info, clip_todo, settings, cache, device, log)
    _encode_texts(info, text_todo, settings, cache, device, log)
    clip_keys, text_keys = [k for k, _, _ in clips], [k for k, _, _ in captions]
    manifest = _manifest(info, entries, clip_keys, text_keys, settings, cache)
    manifest["stats"] = {kind: dataclasses.asdict(s) for kind, s in cache.stats.items()}
    manifest["stats"]["seconds"] = time.perf_counter() - started
    return _write_manifest(manifest, cache_root, log)


def model_digest(digests: FileDigests, root: Path, parts: dict[str, tuple[str, ...]]) -> str:
    """One digest of the files from_pretrained reads from each `parts` folder of `root`."""
    found = [p for folder, pats in parts.items() for pat in pats for p in (root / folder).glob(pat)]
    return digests.of_files(root, found)


def _clip_inputs(info, entries, settings, digests) -> list[tuple[str, dict[str, Any], Any]]:
    """(key, the inputs it is the hash of, the clip) of every clip."""
    common = {"vae": model_digest(digests, info.root, VAE_FILES), "frames": settings.frames,
              "fps": settings.fps, "size": list(settings.size), "dtype": settings.dtype}  # fmt: skip
    described = [({**common, "clip": digests.of(e.path)}, e) for e in entries]
    return [(key_of(inputs), inputs, e) for inputs, e in described]


def _text_inputs(info, texts, settings, digests) -> list[tuple[str, dict[str, Any], str]]:
    """(key, the inputs it is the hash of, the text) of every text (the inputs hold the text's
    digest: an entry's metadata stays small whatever the caption)."""
    common = {"text_encoder": model_digest(digests, info.root, TEXT_FILES),
              "max_len": info.max_text_len, "dtype": settings.dtype}  # fmt: skip
    described = [({**common, "text": hashlib.sha256(t.encode()).hexdigest()}, t) for t in texts]
    return [(key_of(inputs), inputs, t) for inputs, t in described]


def _missing(cache: TensorCache, kind: str, items: list[tuple[str, dict, Any]]) -> list:
    """The items (once per key) whose entry the cache does not hold sound; counts the hits."""
    unique = list({key: (key, inputs, what) for key, inputs, what in items}.values())
    todo = [item for item in unique if not cache.has(kind, item[0])]
    cache.stats_for(kind).hits += len(unique) - len(todo)
    return todo


def _read_only_problem(root: Path, clips, clip_todo, texts, text_todo) -> str:
    lacks = []
    if clip_todo:
        lacks.append(
            f"{len(clip_todo)} of {len(clips)} encoded clips (first: {clip_todo[0][2].path})"
        )
    if text_todo:
        first = text_todo[0][2]
        shown = repr(first[:60] + ("..." if len(first) > 60 else ""))
        lacks.append(
            f"{len(text_todo)} of {len({k for k, _, _ in texts})} encoded texts (first: {shown})"
        )
    return (
        f"the cache {root} is read-only and lacks {' and '.join(lacks)}; make it writable or set "
        "data.cache_dir to a writable folder"
    )


def _encode_clips(info, todo, settings, cache, device, log) -> None:
    """VAE-encode the clips the cache lacks (the VAE loads only then)."""
    from orchestrator.models.pipeline_models import encode_videos, load_vae  # heavy

    if not todo:
        return
    stats = cache.stats_for(LATENTS)
    vae = load_vae(info, device=device, dtype=getattr(torch, settings.dtype))
    with _progress(len(todo), "encoding clips", "clip") as bar:
        for key, inputs, entry in todo:
            pixels = decode_clip(
                entry, frames=settings.frames, fps=settings.fps, size=settings.size
            )
            mean, std = encode_videos(vae, info, pixels[None].to(device))
            latents = {"mean": mean[0], "std": std[0]}
            cache.save(LATENTS, key, latents, inputs=inputs, source=str(entry.path))
            stats.computed += 1
            bar.update(1)
    del vae
    _free(device)
    log(f"encoded {len(todo)} clips with the VAE ({stats.hits} already cached)")


def _encode_texts(info, todo, settings, cache, device, log) -> None:
    """Text-encode the texts the cache lacks (the text encoder loads only then)."""
    from orchestrator.models.pipeline_models import encode_prompts, load_text_encoder  # heavy

    if not todo:
        return
    stats = cache.stats_for(TEXTS)
    tokenizer, encoder = load_text_encoder(
        info, device=device, dtype=getattr(torch, settings.dtype)
    )
    with _progress(len(todo), "encoding texts", "text") as bar:
        for key, inputs, text in todo:
            (embed,) = encode_prompts(
                tokenizer, encoder, [text], max_len=info.max_text_len, device=device
            )
            embedding = {"embed": embed.contiguous()}
            cache.save(TEXTS, key, embedding, inputs=inputs, text=text[:200])
            stats.computed += 1
            bar.update(1)
    del tokenizer, encoder
    _free(device)
    log(f"encoded {len(todo)} texts with the text encoder ({stats.hits} already cached)")


def _write_manifest(manifest: dict[str, Any], cache_root: Path, log: Callable[[str], None]) -> Path:
    """The manifest written under cache_root/manifests (its name: the digest of the splits and
    prompts it names). A read-only cache: the same manifest already there is used as it is, else
    it goes to <$SLA_SWEEP_CACHE or ~/.cache/sla-sweep>/manifests."""
    name = f"{key_of({k: manifest[k] for k in ('train', 'val', 'validation')})}.json"
    text = json.dumps(manifest, indent=1)
    refused = []
    for folder in dict.fromkeys([cache_root / "manifests", default_cache_root() / "manifests"]):
        path = folder / name
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if _same_manifest(path, manifest):
                return path
            refused.append(f"{folder} ({exc.strerror or exc})")
            continue
        if refused:
            log(f"the cache's manifests folder is not writable: the manifest is {path}")
        return path
    raise EncodeError(f"cannot write the encoded-data manifest {name}: {'; '.join(refused)}")


def _same_manifest(path: Path, manifest: dict[str, Any]) -> bool:
    """Whether `path` holds this manifest (its stats aside: they are of the run that wrote it)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    ours = json.loads(json.dumps(manifest))
    return isinstance(found, dict) and {k: v for k, v in found.items() if k != "stats"} == {
        k: v for k, v in ours.items() if k != "stats"
    }


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
        if "std" not in entry:  # a generated latent (a prompt file's): drawn as it is
            return entry["mean"].float(), index
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
        from orchestrator.models.pipeline_models import pad_prompts  # heavy

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

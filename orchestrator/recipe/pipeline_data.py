"""A pipeline trial's data: the TrainConfig -> what to encode, and the encoding itself.

`prepare_encoded` is what the sweep's driver runs before any trial (and a standalone recipe run
itself): it checks the pipeline and the data folder, encodes what the cache does not hold yet and
returns the manifest that every trial trains on. `source: digits` with a pipeline writes the
digits as a captioned video folder first, so the built-in study goes through the same decoding,
captions and encoders as a user's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from orchestrator.data.encoded import EncodeSettings, cache_dir, encode_dataset
from orchestrator.data.prompts import is_prompt_file
from orchestrator.recipe.config import TrainConfig

DIGITS_FPS = 8.0


def encode_settings(train: TrainConfig) -> EncodeSettings:
    """What the encoded clips and captions depend on, from a pipeline trial's config."""
    data, val = train.data, train.validation
    return EncodeSettings(
        frames=int(data.frames),
        size=data.hw,
        fps=data.fps,
        short=data.short_clips,
        num_val=data.num_val,
        prompts=tuple(val.prompts),
        negative_prompt=val.negative_prompt,
    )


def data_folder(train: TrainConfig, root: Path) -> Path:
    """The folder of captioned clips to encode: data.source, or the digits written as one."""
    if train.data.source != "digits":
        return Path(train.data.source)
    from orchestrator.data.digits_folder import write_digits_folder  # scikit-learn: digits only

    h, w = train.data.hw
    if h != w:
        raise ValueError(f"data.size ({list(train.data.hw)}) must be square for the digits clips")
    count = train.data.num_train + train.data.num_val
    folder = root / "digits" / f"n{count}-f{train.data.frames}-s{h}-seed{train.data_seed}"
    if not folder.is_dir():
        write_digits_folder(
            folder,
            num_clips=count,
            frames=int(train.data.frames),
            size=h,
            fps=DIGITS_FPS,
            seed=train.data_seed,
        )
    return folder


def prepare_encoded(
    train: TrainConfig, *, device: torch.device | None = None, log: Callable[[str], None] = print
) -> Path:
    """Encode the trial's clips and captions, or generate a prompt file's latents (what is not
    cached yet); the manifest's path."""
    if not train.is_pipeline:
        raise ValueError(f"model ({train.model!r}) is not a pipeline directory: nothing to encode")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = cache_dir(train.data.cache_dir)
    if is_prompt_file(train.data.source):  # prompts alone: the dense base generates the latents
        from .prompt_data import generate_prompt_latents  # the diffusers sampler's imports

        return generate_prompt_latents(
            train, encode_settings(train), cache_root=root, device=device, log=log
        )
    return encode_dataset(
        Path(train.model),
        data_folder(train, root),
        encode_settings(train),
        cache_root=root,
        device=device,
        log=log,
    )

"""The report's samples: one image strip per config, the control first, from the same prompt and
noise. A preset trial's clip is generated here from its checkpoint (seed 0, one clip); a pipeline
trial's is the first frame grid its validation wrote into the checkpoint (validation/*.png, the
same prompts and seeds in every trial)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from orchestrator.recipe.config import TrainConfig
from orchestrator.report.findings import ConfigGroup

SAMPLE_SEED = 0


def config_strips(groups: Sequence[ConfigGroup]) -> list[tuple[str, np.ndarray]]:
    """(config label, uint8 image) per config that has a finished checkpoint, control first."""
    ordered = sorted(groups, key=lambda g: not g.control)
    strips = []
    for group in ordered:
        row = next((r for r in group.finished if r.checkpoint), None)
        if row is None or not Path(row.checkpoint).is_dir():
            continue
        image = _strip(Path(row.checkpoint), control=group.control)
        if image is not None:
            strips.append((group.label, image))
    return strips


def _strip(checkpoint: Path, *, control: bool) -> np.ndarray | None:
    from orchestrator.recipe.checkpoint import VALIDATION_DIR, read_trial  # imports torch: heavy

    train = TrainConfig.from_dict(read_trial(checkpoint)["train"])
    if train.is_pipeline:
        grids = sorted((checkpoint / VALIDATION_DIR).glob("*.png"))
        return _read_png(grids[0]) if grids else None
    return _generated(checkpoint, control=control)


def _generated(checkpoint: Path, *, control: bool) -> np.ndarray:
    """One clip from the checkpoint's model (SLA on for SLA trials), its frames side by side."""
    # torch and the infer modules (diffusers): heavy, and the CLI imports this module
    import torch

    from orchestrator.infer.model import load_checkpoint_model
    from orchestrator.infer.options import pick_device
    from orchestrator.infer.samples import generate, sample_inputs, to_uint8_frames

    device = pick_device("auto")
    loaded = load_checkpoint_model(checkpoint, attention="dense" if control else "sla",
                                   device=device)  # fmt: skip
    noise, labels = sample_inputs(loaded.settings, num_samples=1, seed=SAMPLE_SEED)
    clip = generate(loaded.model, loaded.settings, noise, labels, device=device)[0]
    del loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    frames = to_uint8_frames(clip)  # (F, h, w)
    gap = np.full((frames.shape[1], 2), 255, dtype=np.uint8)
    return np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image  # tens of ms: the CLI imports this module without it

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))

"""The full-attention base's own score on the fixed val batch (val loss and samples), cached.

Every trial of a sweep fine-tunes the same base and is scored on the same val batch, so the base's
val loss and samples (what val/loss_gap and val/sample_psnr compare against) are the same in every
trial. With a cache directory the first trial computes them and writes <directory>/<key>.pt; later
trials, restarted workers and a resumed sweep load that file. The key hashes everything the values
depend on. A file lock makes concurrent trials on one host compute it once, and the file appears by
an atomic rename, so nobody reads half of it. Loaded with torch.load(weights_only=True).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from orchestrator.data.cache import file_lock

REFERENCE_FORMAT = 1  # bump when the evaluation changes, so old files are not reused


@dataclasses.dataclass(frozen=True)
class BaseReference:
    val_loss: float
    samples: torch.Tensor  # (n, C, F, H, W) float32
    cached: bool  # loaded from the cache directory, not computed by this process


def base_reference(
    directory: Path | None,
    key: dict[str, Any],
    compute: Callable[[], tuple[float, torch.Tensor]],
) -> BaseReference:
    """The reference for `key`: from <directory>/<hash of key>.pt, else compute() (and save it)."""
    if directory is None:
        return BaseReference(*compute(), cached=False)
    key = json.loads(json.dumps({"format": REFERENCE_FORMAT, **key}, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest}.pt"
    with file_lock(directory / f"{digest}.lock"):
        if path.is_file():
            return _load(path, key)
        val_loss, samples = compute()
        tmp = directory / f".{digest}.tmp-{os.getpid()}"
        try:
            torch.save(
                {"key": key, "val_loss": float(val_loss), "samples": samples.detach().cpu()}, tmp
            )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return BaseReference(float(val_loss), samples, cached=False)


def _load(path: Path, key: dict[str, Any]) -> BaseReference:
    # A damaged file is an error that names it, never silently recomputed.
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(
            f"cannot read the cached base reference {path} ({exc}); delete it to recompute"
        ) from exc
    if not isinstance(saved, dict) or saved.get("key") != key:
        raise RuntimeError(
            f"the cached base reference {path} was made for other settings; delete it to recompute"
        )
    return BaseReference(float(saved["val_loss"]), saved["samples"], cached=True)

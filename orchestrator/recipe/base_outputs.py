"""The full-attention base's own score on the fixed val batch (val loss and samples), cached.

Every trial of a sweep fine-tunes the same base and is scored on the same val batch, so the base's
val loss and samples (what val/loss_gap and val/sample_psnr compare against) are the same in every
trial. With a cache directory the first trial computes them and writes <directory>/<key>.pt; later
trials, restarted workers and a resumed sweep load that file. The key hashes everything the values
depend on. A file lock makes concurrent trials on one host compute it once, and the file appears by
an atomic rename, so nobody reads half of it. Loaded with torch.load(weights_only=True).

When the sweep lives in a bucket the directory is a URI: each node keeps a local mirror of it
(`reference_dir`: <cache>/remote/reference/<digest of the URI>, with a STORE_FILE naming the
URI); a trial takes the file from the mirror, else from the bucket, else computes it and uploads
it, so trials on other nodes load it too.
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

from orchestrator.storage import cache_root, is_uri, open_location
from orchestrator.storage.local import file_lock

STORE_FILE = ".store"  # in a node's mirror of a bucket's reference directory: the bucket's URI
REFERENCE_FORMAT = 1  # bump when the evaluation changes, so old files are not reused


@dataclasses.dataclass(frozen=True)
class BaseReference:
    val_loss: float
    samples: torch.Tensor  # (n, C, F, H, W) float32
    cached: bool  # loaded from the cache directory, not computed by this process


def reference_dir(directory: str | os.PathLike) -> Path:
    """The local directory for a reference cache given as a path or a URI (its node mirror)."""

    if not is_uri(str(directory)):
        return Path(directory)
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    mirror = cache_root() / "remote" / "reference" / digest
    mirror.mkdir(parents=True, exist_ok=True)
    if not (mirror / STORE_FILE).is_file():
        (mirror / STORE_FILE).write_text(str(directory))
    return mirror


def _store(directory: Path):
    """The bucket a mirror stands for (None: a plain directory)."""

    marker = directory / STORE_FILE
    if not marker.is_file():
        return None
    return open_location(marker.read_text().strip(), what="the base reference store")


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
    store = _store(directory)
    with file_lock(directory / f"{digest}.lock"):
        if not path.is_file() and store is not None and store.join(path.name).is_file():
            _write(path, store.join(path.name).read_bytes())
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
        if store is not None:
            store.join(path.name).write_bytes(path.read_bytes())
    return BaseReference(float(val_loss), samples, cached=False)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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

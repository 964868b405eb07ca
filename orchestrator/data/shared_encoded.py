"""A pipeline's encoded clips and captions shared through a bucket, for sweeps whose
storage.results_dir is one: the driver encodes once and uploads the manifest with exactly the
cache entries it names; a trial on any node fetches them once into its content-keyed local copy
(orchestrator.storage.local_copy) and reads a manifest that points at that copy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orchestrator.data.cache import TensorCache
from orchestrator.data.encoded import LATENTS, TEXTS, read_manifest
from orchestrator.storage import Location, local_copy, open_location

SHARED_MANIFEST = "manifest.json"  # written last: a shared set without it is incomplete
LOCAL_MANIFEST = "manifest.local.json"  # in the node's copy: "cache" points at that copy


def entries(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, key) of every cache entry the manifest names: clips, captions, prompts."""
    rows = [*manifest["train"], *manifest["val"]]
    validation = manifest["validation"]
    texts = [r["text"] for r in rows] + [p["key"] for p in validation["prompts"]]
    named = [(LATENTS, r["latent"]) for r in rows] + [(TEXTS, k) for k in texts]
    named.append((TEXTS, validation["negative"]["key"]))
    return list(dict.fromkeys(named))


def share_encoded(manifest_path: str | Path, store: Location) -> str:
    """Upload the manifest's entries and then the manifest under store/<its name>/ (the name is
    the digest of what it holds, so a set is uploaded once); returns the set's URI."""
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    target = store.join(manifest_path.stem)
    if target.join(SHARED_MANIFEST).is_file():
        return target.uri
    cache = TensorCache(Path(manifest["cache"]))
    for kind, key in entries(manifest):
        path = cache.path(kind, key)
        target.join("cache", path.relative_to(cache.root).as_posix()).write_bytes(path.read_bytes())
    target.join(SHARED_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return target.uri


def fetch_encoded(uri: str) -> Path:
    """The local manifest of a shared set (fetched once per node), whose cache is the copy."""
    where = local_copy(open_location(uri, what="encoded data"))
    local = where / LOCAL_MANIFEST
    if not local.is_file():
        manifest = json.loads((where / SHARED_MANIFEST).read_text())
        manifest["cache"] = str(where / "cache")
        tmp = where / f".{LOCAL_MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, local)  # the same content whichever process writes it
    return local

"""A content-addressed store of tensors: one safetensors file per entry, keyed by what made it.

An entry's key is the SHA-256 of a JSON description of everything that changes its content (the
model files' digests, the source file's digest, the settings), so a changed clip, caption, VAE
or setting is a new key and never a stale hit. Entries are written atomically (a temporary file,
then os.replace) and carry the SHA-256 of their own tensor bytes in the safetensors metadata: a
truncated or altered entry is detected on read, reported, and recomputed; it is never loaded.

File digests are memoised by (path, size, mtime) in `digests.json`, so a sweep over a folder of
clips and a multi-GB text encoder hashes each file once, not once per trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

CACHE_FORMAT = 1
DIGEST_KEY = "sha256"  # safetensors metadata: the digest of the entry's tensor bytes
_CHUNK = 1 << 22


def default_cache_root() -> Path:
    """$SLA_SWEEP_CACHE, else ~/.cache/sla-sweep: shared by every sweep of this user."""
    return Path(os.environ.get("SLA_SWEEP_CACHE", "~/.cache/sla-sweep")).expanduser()


def key_of(description: Mapping[str, Any]) -> str:
    """The entry key of a JSON-serialisable description (sorted keys: order does not matter)."""
    text = json.dumps({"format": CACHE_FORMAT, **description}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclasses.dataclass
class CacheStats:
    """What one pass over the cache did: entries found, computed, and found damaged."""

    hits: int = 0
    computed: int = 0
    damaged: list[str] = dataclasses.field(default_factory=list)


class TensorCache:
    """Entries of named tensors under root/<kind>/<key[:2]>/<key>.safetensors."""

    def __init__(self, root: Path, *, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.log = log
        self.stats: dict[str, CacheStats] = {}
        self._sound: set[str] = set()  # keys whose digest this process has checked

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when it is absent or damaged (damage is reported)."""
        path = self.path(kind, key)
        if not path.is_file():
            return None
        tensors, why = _read(path, verify=key not in self._sound)
        if why is None:
            self._sound.add(key)  # entries never change in place: verified once per process
            return tensors
        self.log(f"cache entry {path} is damaged ({why}); recomputing it")
        self.stats_for(kind).damaged.append(str(path))
        path.unlink(missing_ok=True)
        return None

    def save(self, kind: str, key: str, tensors: Mapping[str, torch.Tensor], **meta: str) -> Path:
        """Write the entry atomically, its digest in the metadata."""
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file(plain, tmp, metadata={**meta, DIGEST_KEY: tensor_digest(plain)})
        os.replace(tmp, path)
        return path

    def get(
        self, kind: str, key: str, compute: Callable[[], Mapping[str, torch.Tensor]], **meta: str
    ) -> dict[str, torch.Tensor]:
        """The entry, computed and saved first when it is absent or damaged."""
        found = self.load(kind, key)
        stats = self.stats_for(kind)
        if found is not None:
            stats.hits += 1
            return found
        tensors = dict(compute())
        self.save(kind, key, tensors, **meta)
        stats.computed += 1
        return tensors

    def has(self, kind: str, key: str) -> bool:
        """Whether a sound entry exists (a damaged one is reported and removed)."""
        return self.load(kind, key) is not None

    def stats_for(self, kind: str) -> CacheStats:
        return self.stats.setdefault(kind, CacheStats())


def _read(path: Path, *, verify: bool) -> tuple[dict[str, torch.Tensor], str | None]:
    """The entry's tensors, read once, and why they cannot be used (None when sound or, without
    `verify`, readable)."""
    try:
        with safe_open(path, framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(DIGEST_KEY)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        return {}, f"unreadable: {str(exc).splitlines()[0][:120]}"
    if recorded is None:
        return {}, "no digest in its metadata"
    if verify and recorded != tensor_digest(tensors):
        return {}, "its tensors do not match their recorded digest"
    return tensors, None


# ---- file digests ----------------------------------------------------------------------------
class FileDigests:
    """SHA-256 of files, memoised by (absolute path, size, mtime_ns) in one JSON file."""

    def __init__(self, memo: Path) -> None:
        self.memo = Path(memo)
        self._known: dict[str, str] | None = None

    def of(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        token = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        known = self._load()
        if token not in known:
            known[token] = _sha256_file(path)
            self._save(token, known[token])
        return known[token]

    def of_tree(self, root: Path, patterns: Iterable[str] = ("*",)) -> str:
        """One digest of every matching file under root (relative names and contents)."""
        root = Path(root)
        files = sorted({p for pat in patterns for p in root.rglob(pat) if p.is_file()})
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.relative_to(root)}={self.of(p)};".encode())
        return h.hexdigest()

    def _load(self) -> dict[str, str]:
        if self._known is None:
            try:
                self._known = json.loads(self.memo.read_text())
            except (OSError, ValueError):
                self._known = {}
        return self._known

    def _save(self, token: str, digest: str) -> None:
        """Merge one new digest into the memo file (another process may be writing it too)."""
        self.memo.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.memo.with_suffix(".lock")):
            try:
                on_disk = json.loads(self.memo.read_text())
            except (OSError, ValueError):
                on_disk = {}
            on_disk[token] = digest
            tmp = self.memo.with_name(f".{self.memo.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(on_disk))
            os.replace(tmp, self.memo)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True):
    """An exclusive lock on `path` (created) for the block: one process at a time, across processes.
    The lock dies with its holder (flock). wait=False: BlockingIOError at once when another process
    holds it. Yields the open lock file."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

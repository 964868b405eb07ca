"""A content-addressed store of tensors: one safetensors file per entry, keyed by what made it.

An entry's key is the SHA-256 of a JSON description of everything that changes its content (the
model files' digests, the source file's digest, the settings), so a changed clip, caption, VAE
or setting is a new key. Entries are written atomically (a temporary file, then os.replace) and
their safetensors metadata holds their kind, their key, the description the key was made from
and the SHA-256 of their own tensor bytes. On read an entry must be the one its path names: a
truncated or altered entry, or one copied or moved over another's path, is reported and
recomputed; it is never loaded.

File digests are memoised in `digests.json` (FileDigests says what it trusts), so a sweep over a
folder of clips and a multi-GB text encoder hashes each file once, not once per trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from orchestrator.storage.local import file_lock

CACHE_FORMAT = 2  # 2: entries name their kind, key and inputs; older keys are never looked up
DIGEST_KEY = "sha256"  # safetensors metadata: the digest of the entry's tensor bytes
KIND_KEY, ENTRY_KEY, INPUTS_KEY = "kind", "key", "inputs"  # what binds an entry to its path
REHASH_ENV = "SLA_SWEEP_REHASH"  # set to 1: every file digest is taken from the bytes again
_CHUNK = 1 << 22


def canonical(description: Mapping[str, Any]) -> str:
    """The JSON text a key is the hash of (sorted keys: order does not matter)."""
    return json.dumps({"format": CACHE_FORMAT, **description}, sort_keys=True, default=str)


def key_of(description: Mapping[str, Any]) -> str:
    """The entry key of a JSON-serialisable description."""
    return _sha256_text(canonical(description))


def _sha256_text(text: str) -> str:
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
        """The entry's tensors, or None when it is absent, damaged or not the entry of this kind
        and key (reported, and removed where the cache is writable)."""
        path = self.path(kind, key)
        if not path.is_file():
            return None
        tensors, why = _read(path, kind, key, verify=key not in self._sound)
        if why is None:
            self._sound.add(key)  # entries never change in place: verified once per process
            return tensors
        self.log(f"cache entry {path} is damaged ({why}); recomputing it")
        self.stats_for(kind).damaged.append(str(path))
        with contextlib.suppress(OSError):  # a read-only cache keeps it; it is never loaded
            path.unlink(missing_ok=True)
        return None

    def save(
        self,
        kind: str,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        *,
        inputs: Mapping[str, Any] | None = None,
        **meta: str,
    ) -> Path:
        """Write the entry atomically, bound to its kind and key (and to `inputs`, the
        description `key` was made from, when given) and with its digest in the metadata."""
        binding = {KIND_KEY: kind, ENTRY_KEY: key}
        if inputs is not None:
            binding[INPUTS_KEY] = canonical(inputs)
            if _sha256_text(binding[INPUTS_KEY]) != key:
                raise ValueError(f"key {key} is not the key of the inputs given with it")
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file(plain, tmp, metadata={**meta, **binding, DIGEST_KEY: tensor_digest(plain)})
        os.replace(tmp, path)
        return path

    def get(
        self,
        kind: str,
        key: str,
        compute: Callable[[], Mapping[str, torch.Tensor]],
        *,
        inputs: Mapping[str, Any] | None = None,
        **meta: str,
    ) -> dict[str, torch.Tensor]:
        """The entry, computed and saved first when it is absent or damaged."""
        found = self.load(kind, key)
        stats = self.stats_for(kind)
        if found is not None:
            stats.hits += 1
            return found
        tensors = dict(compute())
        self.save(kind, key, tensors, inputs=inputs, **meta)
        stats.computed += 1
        return tensors

    def writable(self) -> bool:
        """Whether entries can be written under root (a file is created and removed to tell:
        permission bits do not say it for root or a read-only mount)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                return True
        except OSError:
            return False

    def has(self, kind: str, key: str) -> bool:
        """Whether a sound entry exists (a damaged one is reported and removed)."""
        return self.load(kind, key) is not None

    def stats_for(self, kind: str) -> CacheStats:
        return self.stats.setdefault(kind, CacheStats())


def _read(
    path: Path, kind: str, key: str, *, verify: bool
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The entry's tensors, read once, and why they cannot be used (None when sound or, without
    `verify`, readable and bound to this kind and key)."""
    try:
        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
            why = _binding_problem(meta, kind, key)
            if why is not None:
                return {}, why
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        return {}, f"unreadable: {str(exc).splitlines()[0][:120]}"
    if verify and meta[DIGEST_KEY] != tensor_digest(tensors):
        return {}, "its tensors do not match their recorded digest"
    return tensors, None


def _binding_problem(meta: Mapping[str, str], kind: str, key: str) -> str | None:
    """Why an entry's metadata does not make it the entry of (kind, key), or None."""
    if DIGEST_KEY not in meta:
        return "no digest in its metadata"
    if ENTRY_KEY not in meta or KIND_KEY not in meta:
        return "no key in its metadata"
    if meta[ENTRY_KEY] != key or meta[KIND_KEY] != kind:
        return (
            f"it is the {meta[KIND_KEY][:40]!r} entry {meta[ENTRY_KEY][:16]}..., not"
            f" {kind!r} {key[:16]}...: copied or moved over this one"
        )
    if INPUTS_KEY in meta and _sha256_text(meta[INPUTS_KEY]) != key:
        return "the inputs in its metadata do not hash to its key"
    return None


# ---- file digests ----------------------------------------------------------------------------
RACY_NS = 2_000_000_000  # a file changed this recently is hashed, not memoised (coarse clocks)
MEMO_FORMAT = 2


class FileDigests:
    """SHA-256 of files, memoised per absolute path in one JSON file.

    What is trusted: a file whose size, modification time (mtime), status-change time (ctime)
    and inode are those recorded with its digest has the recorded content. The kernel sets
    ctime on every write, truncation, rename and utime, and no user can set it back, so content
    replaced with the same size and its mtime put back is hashed again. A file changed less
    than RACY_NS before it was hashed is not memoised (timestamps are coarse: a change in the
    same tick would keep them). The memo is wrong only where ctime is not kept (some network and
    FUSE filesystems) or the clock was set back: then set SLA_SWEEP_REHASH=1, or delete the
    memo, and every file is hashed from its bytes again. An unwritable memo (a read-only cache)
    is kept in memory for the process.
    """

    def __init__(self, memo: Path, *, rehash: bool | None = None) -> None:
        self.memo = Path(memo)
        self.rehash = rehash if rehash is not None else os.environ.get(REHASH_ENV, "") == "1"
        self._known: dict[str, list] | None = None
        self._hashed: dict[str, list] = {}  # hashed by this object: trusted even with rehash

    def of(self, path: Path) -> str:
        path = Path(path).resolve()
        stamp = _stamp(path.stat())
        name = str(path)
        known = self._hashed if self.rehash else self._load()
        record = known.get(name)
        if isinstance(record, list) and record[:-1] == stamp:
            return record[-1]
        digest = _sha256_file(path)
        after = path.stat()
        settled = time.time_ns() - max(after.st_mtime_ns, after.st_ctime_ns) >= RACY_NS
        if _stamp(after) == stamp and settled:
            self._hashed[name] = [*stamp, digest]
            self._save(name, [*stamp, digest])
        return digest

    def of_tree(self, root: Path, patterns: Iterable[str] = ("*",)) -> str:
        """One digest of every matching file under root, at any depth (names and contents)."""
        root = Path(root)
        return self.of_files(root, [p for pat in patterns for p in root.rglob(pat)])

    def of_files(self, root: Path, files: Iterable[Path]) -> str:
        """One digest of these files (their names relative to root, and their contents)."""
        root = Path(root)
        h = hashlib.sha256()
        for p in sorted({Path(f) for f in files if Path(f).is_file()}):
            h.update(f"{p.relative_to(root)}={self.of(p)};".encode())
        return h.hexdigest()

    def _load(self) -> dict[str, list]:
        if self._known is None:
            self._known = _read_memo(self.memo)
        return self._known

    def _save(self, name: str, record: list) -> None:
        """Merge one new digest into the memo file (another process may be writing it too)."""
        self._load()[name] = record
        try:
            self.memo.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(self.memo.with_suffix(".lock")):
                on_disk = _read_memo(self.memo)
                on_disk[name] = record
                tmp = self.memo.with_name(f".{self.memo.name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps({"format": MEMO_FORMAT, "files": on_disk}))
                os.replace(tmp, self.memo)
        except OSError:
            pass  # a read-only cache: the digest stays in this process's memory


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_memo(memo: Path) -> dict[str, list]:
    """The memo's records; empty when it is absent, unreadable or of an older format (whose
    (size, mtime) records are not trusted: those files are hashed again)."""
    try:
        data = json.loads(memo.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != MEMO_FORMAT:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()

"""Where a sweep's files live: a local (or shared mounted) directory, or a URI that pyarrow serves
(s3://bucket/prefix, gs://bucket/prefix, hdfs://..., abfs://...).

A `Location` is a pyarrow filesystem and a path in it. Small files (JSON, YAML, CSV) are read and
written whole: a local write goes to a temporary file and is renamed into place; an object
store's PUT is atomic already (a reader sees the old object or the new one, never half of one).
Directory trees are uploaded and downloaded file by file.

A node never assumes a file of the storage is on its disk: `local_copy` fetches a remote tree
(a checkpoint, a base model) into $SLA_SWEEP_CACHE/remote/<digest>, where the digest is taken
over the tree's listing (every file's relative path, size and modification time), so a changed
tree is a new copy and an unchanged one is fetched once per node. A file lock makes concurrent
processes on one node fetch it once; the copy appears by an atomic rename.

S3-compatible stores are reached through the standard variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) or the AWS config files, which
pyarrow reads itself; nothing here reads, prints or records a credential, and a URI carrying
one (s3://KEY:SECRET@bucket) is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.storage.local import default_cache_root, file_lock

# Schemes pyarrow.fs.FileSystem.from_uri opens (file:// is a local path).
SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
REMOTE_DIR = "remote"  # under the cache root: local copies of remote trees
COMPLETE = ".complete"
SMALL_FILE = (
    1 << 20
)  # files read whole, checked against their listing (see read_whole)  # written last into a local copy: the copy is whole


class StorageError(ValueError):
    """A storage location that cannot be used; one line naming the value and what is allowed."""


def is_uri(value: str | os.PathLike) -> bool:
    """Whether `value` names a filesystem by URI (s3://...), not a local path (file:// is local)."""
    m = _URI_RE.match(str(value))
    return bool(m) and m.group(1).lower() != "file"


def uri_problem(value: str) -> str | None:
    """What is wrong with a storage URI, without reaching the store (None: looks usable)."""
    m = _URI_RE.match(value)
    if not m:
        return None
    scheme, rest = m.group(1).lower(), m.group(2)
    allowed = ", ".join(f"{s}://" for s in SCHEMES)
    if scheme == "file":
        return None
    if scheme not in SCHEMES:
        return f"has scheme {scheme}://; allowed: a directory path, file://, {allowed}"
    bucket = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in bucket:
        return (
            "carries credentials in the URI; give them in the environment "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the provider's config files"
        )
    if not bucket:
        return f"names no bucket (expected {scheme}://BUCKET/PREFIX)"
    if any(part in (".", "..") for part in rest.split("?", 1)[0].split("/")):
        return "has '.' or '..' parts; give the prefix as it is"
    return None


def redact(value: str) -> str:
    """`value` with any user:password@ part of a URI replaced by ***@ (for messages)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", value)


def _plain_path(value: str) -> str:
    return value[len("file://") :] if value.lower().startswith("file://") else value


@dataclasses.dataclass(frozen=True)
class Location:
    """A directory (or file) on a filesystem: `uri` as given (an absolute path when local)."""

    uri: str
    fs: pafs.FileSystem
    path: str  # the path inside `fs`

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def join(self, *parts: str) -> Location:
        sub = "/".join(p.strip("/") for p in parts if p)
        path = posixpath.join(self.path, sub) if sub else self.path
        return Location(f"{self.uri.rstrip('/')}/{sub}" if sub else self.uri, self.fs, path)

    def with_path(self, path: str) -> Location:
        """Another path of the same filesystem (a checkpoint path Ray Train recorded)."""
        path = path.rstrip("/")
        if not self.remote:
            return Location(path, self.fs, path)
        scheme = _URI_RE.match(self.uri).group(1)
        return Location(f"{scheme}://{path}", self.fs, path)

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        return read_whole(self.fs, self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_json(self) -> Any:
        return json.loads(self.read_text())

    def write_bytes(self, data: bytes) -> None:
        """The whole file at once: a reader never sees half of it."""
        parent = posixpath.dirname(self.path)
        if not self.remote:
            Path(parent).mkdir(parents=True, exist_ok=True)
            tmp = Path(parent) / f".{posixpath.basename(self.path)}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                tmp.write_bytes(data)
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            return
        with self.fs.open_output_stream(self.path) as f:  # one PUT: atomic on an object store
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, data: Any) -> None:
        self.write_text(json.dumps(data, indent=1))

    def files(self) -> list[pafs.FileInfo]:
        """Every file under this directory ([] when there is none), sorted by path."""
        if not self.is_dir():
            return []
        found = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return sorted((i for i in found if i.type == pafs.FileType.File), key=lambda i: i.path)

    def relative(self, info: pafs.FileInfo) -> str:
        return posixpath.relpath(info.path, self.path)


def read_whole(fs: pafs.FileSystem, path: str, attempts: int = 5) -> bytes:
    """A file's bytes as of one version. pyarrow reads an object by ranges sized by a listing
    made just before, so an object replaced meanwhile could come back cut to the old size: the
    read is taken again until the size and modification time agree before and after it."""
    for _ in range(attempts):
        before = fs.get_file_info(path)
        with fs.open_input_stream(path) as f:
            data = f.read()
        after = fs.get_file_info(path)
        if len(data) == after.size and before.mtime_ns == after.mtime_ns:
            return data
    raise OSError(f"{path} kept changing while it was read ({attempts} attempts)")


def open_location(value: str | os.PathLike, *, what: str = "storage.results_dir") -> Location:
    """A Location for a directory path or URI; StorageError (one line naming `what` and the
    value) when it names no filesystem pyarrow can open. Reaches the store only to resolve it
    (a bucket's region), never to list or write."""
    text = str(value)
    problem = uri_problem(text)
    if problem:
        raise StorageError(f"{what} ({redact(text)!r}) {problem}")
    if not is_uri(text):
        path = str(Path(_plain_path(text)).expanduser().resolve())
        return Location(path, pafs.LocalFileSystem(), path)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"{what} ({text!r}) cannot be opened: {why}") from None
    return Location(text.rstrip("/"), fs, path.rstrip("/"))


def check_reachable(loc: Location, *, what: str = "storage.results_dir") -> None:
    """One listing of the location (its bucket must exist); StorageError naming it otherwise."""
    if not loc.remote:
        return
    bucket = loc.path.split("/", 1)[0]
    try:
        info = loc.fs.get_file_info(bucket)
    except (pa.ArrowException, OSError) as exc:
        why = str(exc).strip().splitlines()[0]
        raise StorageError(f"{what} ({loc.uri!r}) is not reachable: {why}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{what} ({loc.uri!r}): bucket {bucket!r} does not exist")


def upload_dir(local: Path, dest: Location, *, skip: tuple[str, ...] = ()) -> int:
    """Copy every file under `local` to `dest` (same relative paths); the number copied. Names
    in `skip` (top-level entries) are left out."""
    local = Path(local)
    count = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local).as_posix()
        if rel.split("/", 1)[0] in skip or ".tmp-" in path.name:
            continue
        dest.join(rel).write_bytes(path.read_bytes())
        count += 1
    return count


def download_dir(
    src: Location,
    local: Path,
    *,
    skip: tuple[str, ...] = (),
    only: Callable[[str], bool] | None = None,
) -> int:
    """Copy every file under `src` into `local`; the number copied (top-level `skip` left out,
    and with `only`, every file whose relative path it refuses)."""
    count = 0
    for info in src.files():
        rel = src.relative(info)
        if rel.split("/", 1)[0] in skip or (only is not None and not only(rel)):
            continue
        target = Path(local) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if info.size is not None and info.size < SMALL_FILE:  # the sweep's own records
            target.write_bytes(read_whole(src.fs, info.path))
        else:  # checkpoints and models: written once, streamed
            with src.fs.open_input_stream(info.path) as f, open(target, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 22)
        count += 1
    return count


def listing_digest(loc: Location) -> str:
    """SHA-256 over a tree's listing: every file's relative path, size and modification time."""
    h = hashlib.sha256(loc.uri.encode())
    for info in loc.files():
        mtime = info.mtime_ns if info.mtime_ns is not None else 0
        h.update(f"\n{loc.relative(info)}\t{info.size}\t{mtime}".encode())
    return h.hexdigest()


def cache_root() -> Path:
    """$SLA_SWEEP_CACHE, else ~/.cache/sla-sweep (storage.local.default_cache_root)."""
    return default_cache_root()


def local_copy(loc: Location, *, log=None) -> Path:
    """A local directory with the tree at `loc`: the directory itself when it is local, else a
    copy under <cache>/remote/<digest of its listing>, fetched once per node (file lock, atomic
    rename). StorageError when there is nothing at `loc`."""
    if not loc.remote:
        return Path(loc.path)
    digest = listing_digest(loc)
    if not loc.files():
        raise StorageError(f"{loc.uri} holds no files")
    root = cache_root() / REMOTE_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / digest[:32]
    with file_lock(root / f"{digest[:32]}.lock"):
        if (final / COMPLETE).is_file():
            return final
        tmp = root / f".{digest[:32]}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        count = download_dir(loc, tmp)
        (tmp / COMPLETE).write_text(loc.uri + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if log is not None:
            log(f"fetched {count} files of {loc.uri} into {final}")
    return final


__all__ = [
    "SCHEMES",
    "Location",
    "StorageError",
    "check_reachable",
    "download_dir",
    "is_uri",
    "listing_digest",
    "local_copy",
    "open_location",
    "upload_dir",
    "uri_problem",
]

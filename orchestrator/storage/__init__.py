"""Where a sweep's files live, and the sweep directory's own files.

locations: a local directory or a bucket URI (pyarrow.fs): read, write, upload, download, fetch a
remote tree into the local cache once per node; local: the cache root and the cross-process file
lock; records: the sweep directory's files (sweep.json, trials.json) and the trial rows;
sweep_files: reading a sweep back and what the driver prepares before any trial; sweep_place: a
sweep that lives in a bucket, with its working copy on disk; sync: the driver's Tune callback
that keeps the bucket's copy of the sweep's own files current.

`orchestrator.storage` itself is `locations`' public names; import the other modules themselves.
"""

from orchestrator.storage.locations import (
    SCHEMES,
    Location,
    StorageError,
    cache_root,
    check_reachable,
    download_dir,
    is_uri,
    listing_digest,
    local_copy,
    open_location,
    read_whole,
    redact,
    upload_dir,
    uri_problem,
)

__all__ = [
    "SCHEMES",
    "Location",
    "StorageError",
    "cache_root",
    "check_reachable",
    "download_dir",
    "is_uri",
    "listing_digest",
    "local_copy",
    "open_location",
    "read_whole",
    "redact",
    "upload_dir",
    "uri_problem",
]

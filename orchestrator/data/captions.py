"""Captions of a clip folder: a sidecar text file per clip, or rows of metadata.jsonl or
metadata.csv, each read as UTF-8 and checked (see orchestrator.data.videos for the format)."""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.data.media_bounds import ALLOWED

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_KEYS = ("caption", "text", "prompt")  # in order of precedence within one row
MAX_CAPTION_CHARS = 8192  # longer captions are cut (noted): 512 tokens never need more

# Caption characters refused: C0/C1 controls other than tab, newline and carriage return (NUL,
# terminal escapes) and the bidirectional overrides and isolates (they reorder displayed text)
_BIDI = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}


@dataclasses.dataclass(frozen=True)
class Caption:
    """One caption found for a media file, and where."""

    source: str  # where it was read: "clip.txt", "metadata.jsonl line 3"
    text: str | None  # None: the caption is broken, and that was already reported


def one_caption(path: Path, found: list[Caption], problems: list[str]) -> str | None:
    """The caption of one media file, or None after reporting why there is none."""
    if not found:
        problems.append(
            f"{path}: no caption: add {path.with_suffix('.txt').name} beside it, or a row with "
            f"file_name {path.name!r} to metadata.jsonl or metadata.csv"
        )
        return None
    if len(found) > 1:
        places = " and ".join(c.source for c in found)
        problems.append(f"{path}: captioned {len(found)} times, by {places}: keep only one")
        return None
    return found[0].text


def collect_captions(root: Path, media: set[str], problems: list[str]) -> dict[str, list[Caption]]:
    """Every caption found for each media file name: its sidecar and its metadata rows."""
    captions: dict[str, list[Caption]] = {}
    for name in sorted(media):
        sidecar = (root / name).with_suffix(".txt")
        if sidecar.is_file():
            text = _read_text(sidecar, problems, limit=4 * MAX_CAPTION_CHARS + 3)
            text = None if text is None else _nonempty(text.strip(), str(sidecar), problems)
            captions.setdefault(name, []).append(Caption(sidecar.name, text))
    for file in METADATA_FILES:
        path = root / file
        text = _read_text(path, problems) if path.is_file() else None
        if text is None:
            continue
        parse = _jsonl_rows if file.endswith(".jsonl") else _csv_rows
        for where, name, caption in parse(path, text, problems):
            if name is not None and _names_media(name, root, media, f"{path} {where}", problems):
                captions.setdefault(name, []).append(Caption(f"{file} {where}", caption))
    return captions


def _read_text(path: Path, problems: list[str], *, limit: int | None = None) -> str | None:
    """The file as UTF-8 text; with limit, only its first `limit` bytes (a character the limit
    cuts in half is dropped), so a huge caption file costs no more than a long caption."""
    with path.open("rb") as f:
        data = f.read() if limit is None else f.read(limit)
    try:
        # final=False: an incomplete character at the end (the limit's cut) is held back, not
        # an error; invalid bytes anywhere still are
        return codecs.getincrementaldecoder("utf-8-sig")().decode(
            data, final=limit is None or len(data) < limit
        )
    except UnicodeDecodeError as exc:
        problems.append(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {exc.start}): "
            "save it as UTF-8"
        )
        return None


def _nonempty(text: str, where: str, problems: list[str]) -> str | None:
    if not text:
        problems.append(f"{where}: empty caption: write the clip's description")
        return None
    bad = next((i for i, c in enumerate(text) if _refused_char(c)), None)
    if bad is not None:
        problems.append(
            f"{where}: caption holds the control character U+{ord(text[bad]):04X} at character "
            f"{bad + 1}: remove it (control characters other than tab and newline, and "
            "bidirectional overrides, are refused)"
        )
        return None
    return text


def _refused_char(c: str) -> bool:
    code = ord(c)
    if c in "\t\n\r":
        return False
    return code < 0x20 or 0x7F <= code <= 0x9F or code in _BIDI


_Row = tuple[str, "str | None", "str | None"]  # (where: "line 3", file name, caption)


def _jsonl_rows(path: Path, text: str, problems: list[str]) -> list[_Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row, why = None, f"not valid JSON ({exc.msg}, column {exc.colno})"
        else:
            why = f"a JSON {type(row).__name__}, not an object"
        if not isinstance(row, dict):
            problems.append(
                f"{path} line {number}: {why}: each line must be one object like "
                '{"file_name": "clip.mp4", "caption": "..."}'
            )
            continue
        rows.append((f"line {number}", *_parse_row(row, f"{path} line {number}", problems)))
    return rows


def _csv_rows(path: Path, text: str, problems: list[str]) -> list[_Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="\0extra", strict=True)
    header = reader.fieldnames or []
    if "file_name" not in header or not any(key in header for key in CAPTION_KEYS):
        problems.append(
            f"{path}: header {header} must name the columns file_name and one of "
            f"{', '.join(CAPTION_KEYS)}"
        )
        return []
    rows = []
    try:
        for row in reader:
            where = f"line {reader.line_num}"
            if "\0extra" in row or None in row.values():
                n = len(header) + len(row.get("\0extra", [])) - list(row.values()).count(None)
                problems.append(f"{path} {where}: {n} fields, the header has {len(header)}")
                rows.append((where, row["file_name"] or None, None))  # named, but no caption
                continue
            rows.append((where, *_parse_row(row, f"{path} {where}", problems)))
    except csv.Error as exc:
        problems.append(
            f"{path} line {reader.line_num}: malformed CSV ({exc}); rows after it unread"
        )
    return rows


def _parse_row(
    row: Mapping[str, Any], where: str, problems: list[str]
) -> tuple[str | None, str | None]:
    """(file_name, caption) of a metadata row; None for what is missing (and reported)."""
    name = row.get("file_name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: file_name ({name!r}) must be the name of a media file")
        name = None
    key = next((k for k in CAPTION_KEYS if k in row), None)
    if key is None:
        problems.append(f"{where}: no caption: give a column caption, text or prompt")
        return name, None
    caption = row[key]
    if not isinstance(caption, str):
        problems.append(f"{where}: {key} ({caption!r}) must be a string")
        return name, None
    return name, _nonempty(caption.strip(), where, problems)


def _names_media(name: str, root: Path, media: set[str], where: str, problems: list[str]) -> bool:
    if name in media:
        return True
    if Path(name).name != name:
        why = "must be a file name in the folder itself (subfolders are not read)"
    elif (root / name).exists():
        why = f"is not a media file ({ALLOWED})"
    else:
        why = f"does not exist in {root}"
    problems.append(f"{where}: file_name {name!r} {why}")
    return False

"""A prompt file as a data source: the prompts a distill study's latents are generated from.

One prompt a line (blank lines skipped), or, for a .yaml/.yml file, a YAML list of strings.
Read as UTF-8; anything else (an empty file, bytes that are not UTF-8, a YAML document that is
not a list of non-empty strings, a file over MAX_PROMPT_BYTES) is a PromptFileError of one line
that names the file and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

MAX_PROMPT_BYTES = 4 * 2**20  # a prompt file larger than this is refused
YAML_SUFFIXES = (".yaml", ".yml")


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and what is allowed."""


def is_prompt_file(source: str | Path) -> bool:
    """Whether data.source names a file (a prompt file) rather than 'digits' or a folder."""
    return str(source) != "digits" and Path(source).expanduser().is_file()


def read_prompts(path: str | Path, *, key: str = "data.source") -> list[str]:
    """The prompts of a prompt file, in order (duplicates kept); PromptFileError otherwise."""
    path = Path(path).expanduser()
    where = f"{key} ({path})"
    try:
        size = path.stat().st_size
        if size > MAX_PROMPT_BYTES:
            raise PromptFileError(
                f"{where} is {size:,} bytes; a prompt file may hold at most {MAX_PROMPT_BYTES:,}"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise PromptFileError(f"{where} cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptFileError(
            f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the prompts as UTF-8, one a line"
        ) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is no part of the first prompt
    prompts = _yaml_prompts(text, where) if path.suffix in YAML_SUFFIXES else _lines(text)
    if not prompts:
        raise PromptFileError(
            f"{where} holds no prompts; give one prompt a line (or a YAML list of strings)"
        )
    return prompts


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _yaml_prompts(text: str, where: str) -> list[str]:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PromptFileError(f"{where} is not valid YAML ({problem})") from None
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise PromptFileError(f"{where} must be a YAML list of non-empty strings")
    return [p.strip() for p in value]

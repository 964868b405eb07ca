"""How a config's fields are declared: default, check, help and searchability in one place (the
dataclass field's metadata). The configs' validation, `python -m orchestrator.recipe`'s arguments
and a sweep's search space all read it:

    steps: int = knob(30, POSITIVE_INT, "optimizer steps", searchable=True)
    data: DataConfig = section(DataConfig, "a DataConfig or a mapping", "where clips come from")

A check takes the key path and the value and returns the error message, or None when the value is
fine; `field_errors` runs every field's check (a section's fields under "name.") and returns every
message at once.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, Literal

from orchestrator.values import is_non_negative_int, is_num, is_positive_int

FieldCheck = Callable[[str, Any], "str | None"]  # (key path, value) -> error message or None


@dataclasses.dataclass(frozen=True)
class Check:
    """A test of one value and what the value must be: "{key} ({value!r}) must be {need}"."""

    test: Callable[[Any], bool]
    need: str
    show: Callable[[Any], str] = repr  # how the message shows the value

    def __call__(self, key: str, value: Any) -> str | None:
        return None if self.test(value) else f"{key} ({self.show(value)}) must be {self.need}"


def or_null(check: Check, said: str = " or null") -> Check:
    """`check`, or None; `said` is what the message adds about None."""
    return Check(lambda v: v is None or check.test(v), check.need + said, check.show)


def one_of(choices: tuple[str, ...]) -> Check:
    return Check(lambda v: v in choices, f"one of {', '.join(choices)}")


POSITIVE_INT = Check(is_positive_int, "a positive integer")
NON_NEGATIVE_INT = Check(is_non_negative_int, "a non-negative integer")
POSITIVE_NUMBER = Check(lambda v: is_num(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Check(lambda v: is_num(v) and v >= 0, "a number >= 0")
BOOL = Check(lambda v: isinstance(v, bool), "true or false")
PATH_OR_NULL = Check(lambda v: v is None or isinstance(v, str), "a path string or null")


def knob(
    default: Any,
    check: FieldCheck | None,
    doc: str,
    *,
    searchable: bool = False,
    cli: bool = True,
    flag: tuple[str, str] | None = None,
) -> Any:
    """A plain field. doc: what it is (its documentation and its option's help); check: None
    where a cross-field check covers it; searchable: a sweep may vary it (`train.NAME: {grid:
    [...]}`), with the field's type; cli: `python -m orchestrator.recipe` takes it as --NAME;
    flag: (option, help) of a true-by-default bool's option that sets it false."""
    metadata = {"check": check, "help": doc, "searchable": searchable, "cli": cli, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, need: str, doc: str, *, optional: bool = False) -> Any:
    """A nested config: a `cls` (a mapping is made into one), or None when optional (the
    default then). Its fields are checked under "name."; anything else must be `need`."""
    check = Check(lambda v: optional and v is None, need)
    metadata = {"check": check, "help": doc, "section": cls, "optional": optional, "cli": False}
    if optional:
        return dataclasses.field(default=None, metadata=metadata)
    return dataclasses.field(default_factory=cls, metadata=metadata)


def sections(cls: type) -> dict[str, type]:
    """{field name: its config class} of `cls`'s sections."""
    return {f.name: f.metadata["section"] for f in dataclasses.fields(cls) if is_section(f)}


def is_section(f: dataclasses.Field) -> bool:
    return f.metadata.get("section") is not None


def field_errors(config: Any, prefix: str = "") -> list[str]:
    """Every field's check, a section's fields with their key path ("data.size"): all messages."""
    out = []
    for f in dataclasses.fields(config):
        key, value = prefix + f.name, getattr(config, f.name)
        if is_section(f) and isinstance(value, f.metadata["section"]):
            out += field_errors(value, key + ".")
        elif f.metadata.get("check") is not None:
            message = f.metadata["check"](key, value)
            if message is not None:
                out.append(message)
    return out


def value_type(cls: type, name: str) -> type:
    """The plain type of a field's annotation: int of `int | None`, str of `Literal["a", "b"]`."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    kinds = [a for a in typing.get_args(hint) if a is not type(None)]
    return kinds[0] if kinds else hint


def searchable_fields(cls: type, prefix: str = "") -> dict[str, type]:
    """{key path: type} of the fields declared searchable, a section's as "name.field"."""
    out = {}
    for f in dataclasses.fields(cls):
        if is_section(f):
            out.update(searchable_fields(f.metadata["section"], f"{prefix}{f.name}."))
        elif f.metadata.get("searchable"):
            out[prefix + f.name] = value_type(cls, f.name)
    return out


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields `python -m orchestrator.recipe` takes as options of their own."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]

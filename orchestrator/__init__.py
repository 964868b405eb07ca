"""sla-sweep's orchestrator: the study (spec, Ray Tune/Train, training recipe, MLflow).

Kept free of heavy imports: import the subpackages you need (orchestrator.recipe, ...).

`__version__` is pyproject.toml's version, the only place it is written: read from the file in a
source tree (a checkout, installed editable or not: an editable install's metadata is a copy
made when it was installed), from the installed package's metadata otherwise.
The README's changelog names the same version first (tests/test_version.py).
"""

from __future__ import annotations

import re
from pathlib import Path

DISTRIBUTION = "sla-sweep"
SOURCE_TREE = Path(__file__).resolve().parent.parent  # holds pyproject.toml in a checkout


def package_version(root: Path = SOURCE_TREE) -> str:
    """The version in `root`/pyproject.toml when that is sla-sweep's, else the installed one."""
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        project = re.search(r"^\[project\]\n(.*?)(?=^\[|\Z)", pyproject.read_text(), re.M | re.S)
        table = project.group(1) if project else ""
        name = re.search(r'^name\s*=\s*"([^"]+)"', table, re.M)
        version = re.search(r'^version\s*=\s*"([^"]+)"', table, re.M)
        if name and version and name.group(1) == DISTRIBUTION:
            return version.group(1)
    from importlib.metadata import PackageNotFoundError, version  # only without a pyproject.toml

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # neither installed nor in its source tree: a copied folder
        return "0+unknown"


__version__ = package_version()

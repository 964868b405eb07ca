"""One version number: pyproject.toml's, which orchestrator.__version__ reports and the README's
changelog names as its newest release."""

from __future__ import annotations

import re
import sys

import pytest

import orchestrator
from tests.paths import REPO


def pyproject_version() -> str:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11's")
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def changelog_versions() -> list[str]:
    """The README changelog's release headings, newest first."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Changelog\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "README.md has no '## Changelog' section"
    return re.findall(r"^### (\S+)\s*$", section.group(1), re.M)


def test_the_package_reports_pyprojects_version():
    assert orchestrator.__version__ == pyproject_version()


def test_the_changelogs_newest_release_is_pyprojects_version():
    versions = changelog_versions()
    assert versions, "the changelog names no release (### X.Y.Z headings)"
    assert versions[0] == pyproject_version(), (
        f"README's changelog starts at {versions[0]} but pyproject.toml says "
        f"{pyproject_version()}: add a '### {pyproject_version()}' entry (or fix the version)"
    )


def test_outside_a_source_tree_the_version_is_the_installed_ones(tmp_path):
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(orchestrator.DISTRIBUTION)
    except PackageNotFoundError:
        installed = "0+unknown"
    assert orchestrator.package_version(tmp_path) == installed
    other = tmp_path / "pyproject.toml"  # another project's pyproject is not sla-sweep's
    other.write_text('[project]\nname = "other"\nversion = "9.9.9"\n')
    assert orchestrator.package_version(tmp_path) == installed

"""README's Layout names every module of the packages it describes, so the map stays the tree."""

from __future__ import annotations

import re
import subprocess

from tests.paths import REPO

PACKAGES = ("orchestrator", "sla_kernel_glue", "benchmarks")


def layout_words(readme: str) -> set[str]:
    start, end = readme.index("## Layout"), readme.index("\n## ", readme.index("## Layout") + 1)
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", readme[start:end]))


def unlisted_modules(words: set[str], files: list[str]) -> list[str]:
    stems = {f: f.rsplit("/", 1)[-1].removesuffix(".py") for f in files}
    return [f for f, s in stems.items() if s not in ("__init__", "__main__") and s not in words]


def test_every_module_is_in_the_readme_layout():
    files = subprocess.run(
        ["git", "ls-files", *(f"{p}/*.py" for p in PACKAGES)],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(files) > 50
    assert unlisted_modules(layout_words((REPO / "README.md").read_text()), files) == []


def test_the_check_finds_an_unlisted_module():
    words = layout_words("# x\n## Layout\n    cli.py   commands\n## Changelog\nplanted\n")
    assert unlisted_modules(words, ["orchestrator/cli.py", "orchestrator/planted.py"]) == [
        "orchestrator/planted.py"
    ]

"""Hostile or absurd experiment files: YAML alias bombs wherever they sit, values of megabytes,
names with control characters, results directories that cannot be directories, sizes no machine
here can hold, step counts beyond any run. Each is one bounded line (exit 2) from the real entry
point, within seconds and small memory, before Ray starts and before any file is written."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec
from orchestrator.spec.loader import MAX_ERROR_CHARS, read_yaml
from tests.paths import REPO

SMOKE = (REPO / "experiments" / "smoke.yaml").read_text()


def laughs(prefix: str, indent: str = "") -> str:
    """A 'billion laughs': 9 levels of 10 aliases each, 10^9 values once expanded."""
    lines = [f"{indent}{prefix}0: &{prefix}0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        refs = ", ".join([f"*{prefix}{i - 1}"] * 10)
        lines.append(f"{indent}{prefix}{i}: &{prefix}{i} [{refs}]")
    return "\n".join(lines) + "\n"


def bomb_cases(tmp: Path) -> dict[str, str]:
    """name -> file text: a bomb in an unused profile, in an unknown key, in a validated field."""
    (tmp / "a_file").write_text("not a directory\n")
    return {
        "bomb_in_profile": SMOKE + "profiles:\n  unused:\n" + laughs("p", "    "),
        "bomb_in_unknown_key": SMOKE + "junk:\n" + laughs("u", "  "),
        "bomb_in_field": "anchors:\n" + laughs("f", "  ") + SMOKE.replace("steps: 4", "steps: *f9"),
        "recursive_alias": SMOKE + "loop: &loop [*loop]\n",
        "nested_deep": SMOKE + "deep: " + "[" * 5000 + "]" * 5000 + "\n",
        "huge_value": SMOKE.replace("name: smoke", "name: " + "x" * 200_000),
        "huge_unknown_key": SMOKE + "? " + "y" * 100_000 + "\n: 1\n",  # an explicit key
        "name_newline": SMOKE.replace("name: smoke", 'name: "smoke\\n"'),
        "name_control": SMOKE.replace("name: smoke", 'name: "smo\\x1bke"'),
        "results_dir_file": SMOKE + f"storage: {{results_dir: {tmp / 'a_file'}}}\n",
        "results_dir_under_file": SMOKE + f"storage: {{results_dir: {tmp / 'a_file' / 'x'}}}\n",
        "results_dir_dev_null": SMOKE + "storage: {results_dir: /dev/null}\n",
        "results_dir_proc": SMOKE + "storage: {results_dir: /proc/sla}\n",
        "batch_size_huge": SMOKE.replace("batch_size: 2", "batch_size: 100000"),
        "data_size_huge": SMOKE.replace("num_train: 32", "num_train: 32, size: 100000"),
        "data_frames_huge": SMOKE.replace("num_train: 32", "num_train: 32, frames: 1000000"),
        "model_too_big": SMOKE.replace("model: tiny", "model: wan-1.3b").replace(
            "batch_size: 2", "batch_size: 64"
        ),
        "steps_absurd": SMOKE.replace("steps: 4", "steps: 1000000000000"),
    }


EXPECTED = {
    "bomb_in_profile": "aliases expand to more than",
    "bomb_in_unknown_key": "aliases expand to more than",
    "bomb_in_field": "aliases expand to more than",
    "recursive_alias": "recursive",
    "nested_deep": "nested more than",
    "huge_value": "name (",
    "huge_unknown_key": "unknown key",
    "name_newline": "name ('smoke\\n') is required",
    "name_control": "is required: 1-64 characters",
    "results_dir_file": "is a regular file",
    "results_dir_under_file": "a_file, a regular file",
    "results_dir_dev_null": "is a special file",
    "results_dir_proc": "a special path",
    "batch_size_huge": "needs at least",
    "data_size_huge": "needs at least",
    "data_frames_huge": "needs at least",
    "model_too_big": "GiB per worker but this machine has",
    "steps_absurd": "train.steps (1000000000000) is beyond any sensible run",
}


def test_every_case_is_one_bounded_line_within_seconds(tmp_path, monkeypatch, capsys, no_cluster):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    results = {}
    for name, text in bomb_cases(tmp_path).items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        t = time.monotonic()
        status = main(["run", str(path)])
        err = capsys.readouterr().err
        results[name] = (status, time.monotonic() - t, err)
    bad = {}
    for name, (status, seconds, err) in results.items():
        lines = err.splitlines()
        ok = status == 2 and len(lines) == 1 and EXPECTED[name] in lines[0] and seconds < 10
        if not ok or len(lines[0]) > 3 * MAX_ERROR_CHARS:
            bad[name] = (status, round(seconds, 2), err[:600])
    assert not bad, bad
    assert list(cwd.iterdir()) == [], "a refused file wrote something"
    sizes = results["batch_size_huge"][2]
    assert "GiB" in sizes and "train.batch_size 100000" in sizes


def test_a_bomb_is_refused_in_small_memory(tmp_path):
    """In a fresh process capped at 2 GiB of address space beyond what it starts with: the
    refusal never builds the expansion (today's parser would need gigabytes)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(SMOKE + "profiles:\n  unused:\n" + laughs("p", "    "))
    code = (
        "import resource, sys; from orchestrator.spec import SpecError, load_spec\n"
        "import psutil; rss = psutil.Process().memory_info().vms\n"
        "resource.setrlimit(resource.RLIMIT_AS, (rss + 2 * 1024**3, resource.RLIM_INFINITY))\n"
        "try:\n    load_spec(sys.argv[1], gpus_available=0)\nexcept SpecError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "aliases expand to more than" in proc.stdout


def test_override_values_are_bounded_too():
    bomb = "{" + laughs("o").replace("\n", ", ").rstrip(", ") + "}"
    with pytest.raises(SpecError, match="aliases expand to more than"):
        load_spec(REPO / "experiments" / "smoke.yaml", [f"train={bomb}"], gpus_available=0)


def test_ordinary_aliases_still_load():
    text = "base: &b {steps: 4, batch_size: 2}\nother: *b\nlist: [*b, *b]\n"
    assert read_yaml(text, "t")["list"][1] == {"steps": 4, "batch_size": 2}


def test_many_problems_are_one_bounded_message():
    keys = ", ".join(f"k{i}: 1" for i in range(5000))
    with pytest.raises(SpecError) as info:
        load_spec(REPO / "experiments" / "smoke.yaml", [f"train={{{keys}}}"], gpus_available=0)
    message = str(info.value)
    assert "more problems" in message and len(message) < 25 * MAX_ERROR_CHARS

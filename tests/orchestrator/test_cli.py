"""`sla-sweep` command line: bad input is one line on stderr, exit 2, nothing started or written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.cli import COMMANDS, Command, build_parser, main
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"


def test_every_command_in_the_table_is_a_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    assert {"run", "resume", "best", "compare", "infer", "export", "ui"} <= set(sub.choices)
    for name, choice in sub.choices.items():
        assert choice.description, f"{name} has no description"


HEAVY = {"ray", "mlflow", "torch", "diffusers", "transformers", "triton", "accelerate"}


def test_parser_and_spec_check_import_nothing_heavy():
    """Building the parser and checking a spec (what a refusal needs) import none of Ray, MLflow,
    torch or diffusers: a bad file is refused in about a second, not after 10 s of imports."""
    code = (
        "import sys; from pathlib import Path; from orchestrator.cli import build_parser; "
        "build_parser(); from orchestrator.spec import load_spec; "
        f"load_spec(Path({str(SMOKE)!r}), cwd=Path({str(REPO)!r}), gpus_available=0); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "command, missing",
    [
        (Command("orchestrator.infer.no_such_module"), "orchestrator.infer.no_such_module"),
        (Command("orchestrator.infer.command", handle="no_such_handler"), "no_such_handler"),
    ],
)
def test_a_missing_command_module_is_an_error(command, missing, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "broken", command)
    with pytest.raises((ImportError, AttributeError), match=missing):
        build_parser()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["bad.yaml"], "sla: empty search space"),
        (["run", "bad.yaml", "--set", "train.steps=0"], "steps (0) must be a positive integer"),
        (["run", "missing.yaml"], "no such experiment file"),
        (["run", "bad.yaml", "--set", "nonsense"], "expected key=value"),
        (["resume", "not_a_sweep"], "not a sweep directory"),
        (["best", "nowhere"], "no such sweep directory or experiment file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv, fragment, tmp_path, monkeypatch, capsys, no_cluster
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("name: bad\nmodel: tiny\nsla: {}\n")
    (tmp_path / "not_a_sweep").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sla-sweep: error: ")
    assert fragment in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no partial files"


def test_console_script_reports_a_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nmodel: tiny\nsla:\n  topk: {grid: [0.1, 1.5]}\nresources: {gpus_per_worker: 1}\n"
    )
    exe = Path(sys.executable).with_name("sla-sweep")
    proc = subprocess.run([str(exe), str(bad), "--set", "resources.gpus_per_worker=0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "sla.topk: topk (1.5) must be a number in (0, 1]" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]

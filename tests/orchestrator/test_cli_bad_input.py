"""Malformed input to every `sla-sweep` command: one clear line on stderr, a non-zero exit, no Ray
cluster started (or left running), no files written.

All cases run through the real entry point (orchestrator.cli.main) in ONE fresh Python process
(the imports cost seconds each time on 2 CPUs), started in an empty working directory. That
process reports, per case, the exit status, its stderr, whether Ray was initialised and which
child processes it had (a local Ray cluster is gcs_server + raylet children of the driver).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"

RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, sys, traceback
    import psutil
    from orchestrator.cli import main

    out = {}
    for name, argv in json.loads(sys.argv[1]).items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                status = main(argv)
            except SystemExit as exc:
                status = exc.code
            except Exception as exc:  # escaped the command: a traceback, not one line
                status = "uncaught " + type(exc).__name__
        ray = sys.modules.get("ray")
        out[name] = {
            "status": status,
            "stderr": err.getvalue(),
            "ray_initialized": bool(ray and ray.is_initialized()),
            "children": [p.name() for p in psutil.Process().children(recursive=True)],
        }
    print("RESULT " + json.dumps(out))
    """
)


def write_inputs(d: Path) -> dict[str, list[str]]:
    """The malformed inputs, and the argv of each case."""
    (d / "syntax.yaml").write_text("name: smoke\ntrain: {steps: 4\nsla: [\n")
    (d / "types.yaml").write_text(SMOKE.read_text().replace("steps: 4", "steps: four"))
    (d / "unknown.yaml").write_text(SMOKE.read_text() + "\nbogus_key: 1\n")
    (d / "list.yaml").write_text("- name: smoke\n")
    (d / "empty.yaml").write_text("")
    (d / "empty_dir").mkdir()
    broken = d / "broken_sweep"  # looks like a sweep, but its files are damaged
    (broken / "tune").mkdir(parents=True)
    (broken / "tune" / "tuner.pkl").write_bytes(b"not a pickle")
    (broken / "spec.yaml").write_text("name: [unclosed\n")
    (broken / "sweep.json").write_text("{not json")
    (broken / "trials.json").write_text("[{broken")
    (d / "file.txt").write_text("not a directory\n")
    missing = str(d / "does_not_exist")
    return {
        "run_yaml_syntax": ["run", str(d / "syntax.yaml")],
        "run_wrong_type": ["run", str(d / "types.yaml")],
        "run_unknown_key": ["run", str(d / "unknown.yaml")],
        "run_not_a_mapping": ["run", str(d / "list.yaml")],
        "run_empty_file": ["run", str(d / "empty.yaml")],
        "run_missing_file": ["run", missing + ".yaml"],
        "run_bad_override": [
            str(SMOKE),
            "--set",
            "train.steps=-3",
            "--set",
            "sla.topk={grid: [2.0]}",
        ],
        "resume_missing": ["resume", missing],
        "resume_not_a_sweep": ["resume", str(d / "empty_dir")],
        "resume_a_file": ["resume", str(d / "file.txt")],
        "resume_damaged_sweep": ["resume", str(broken)],
        "best_missing": ["best", missing],
        "best_not_a_sweep": ["best", str(d / "empty_dir")],
        "best_bad_yaml": ["best", str(d / "syntax.yaml")],
        "best_damaged_sweep": ["best", str(broken)],
        "infer_missing": ["infer", missing],
        "infer_not_a_sweep": ["infer", str(d / "empty_dir")],
        "infer_damaged_sweep": ["infer", str(broken)],
        "infer_a_file": ["infer", str(d / "file.txt")],
        "export_missing": ["export", missing, str(d / "export_out")],
        "export_not_a_sweep": ["export", str(d / "empty_dir"), str(d / "export_out")],
        "ui_missing": ["ui", missing],
        "ui_not_a_sweep": ["ui", str(d / "empty_dir")],
    }


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    inputs = tmp_path_factory.mktemp("bad_inputs")
    cwd = tmp_path_factory.mktemp("bad_input_cwd")  # where a run would put sla_runs/
    cases = write_inputs(inputs)
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a bad input must not even reach a cluster
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    results = json.loads(line[len("RESULT ") :])
    after = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    return cases, results, cwd, before, after


def test_every_case_is_one_line_and_a_non_zero_exit(outcome):
    cases, results, *_ = outcome
    assert set(results) == set(cases)
    bad = {}
    for name, r in results.items():
        lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
        if (
            not isinstance(r["status"], int)
            or r["status"] == 0
            or len(lines) != 1
            or "error" not in lines[0]
        ):
            bad[name] = r
    assert not bad, json.dumps(bad, indent=1)


def test_the_line_names_the_problem(outcome):
    _, results, *_ = outcome
    err = {name: r["stderr"] for name, r in results.items()}
    assert "not valid YAML at line" in err["run_yaml_syntax"]
    assert "steps" in err["run_wrong_type"] and "four" in err["run_wrong_type"]
    assert "bogus_key" in err["run_unknown_key"]
    assert "no such experiment file" in err["run_missing_file"]
    assert "steps" in err["run_bad_override"] and "topk" in err["run_bad_override"]
    assert "not a sweep directory" in err["resume_not_a_sweep"]
    for name in ("resume_damaged_sweep", "best_damaged_sweep", "infer_damaged_sweep"):
        assert "broken_sweep" in err[name], name


def test_no_ray_cluster_and_no_files(outcome):
    _, results, cwd, before, after = outcome
    for name, r in results.items():
        assert not r["ray_initialized"], name
        assert not {"raylet", "gcs_server"} & set(r["children"]), (name, r["children"])
    assert list(cwd.iterdir()) == [], "a bad input wrote files (sla_runs, mlflow.db, samples)"
    assert after == before, "a bad input added or removed files beside its inputs"

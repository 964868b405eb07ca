"""`sla-sweep run` refuses in one line, before the base model is trained or Ray starts, what is
bound to fail later: a read-only working directory (a real read-only mount), a tracking server
that accepts connections but never answers (a real listening socket that never replies) and a
tracking URI whose port is not a number. Real `sla-sweep` processes in an empty working
directory; a real `mlflow server` passes the same check."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.mlflow_server import MlflowServer
from tests.paths import REPO
from tests.read_only import read_only

SMOKE = REPO / "experiments" / "smoke.yaml"
# Imports take seconds on 2 CPUs; a sweep past the checks would train the base model and start
# Ray within this, then wait minutes on a silent server.
LIMIT_S = 90


def run_sweep_cli(cwd: Path, base: Path, *sets: str) -> tuple[int | str, str]:
    """`sla-sweep run smoke.yaml --set ...` in `cwd`: (exit status or "timeout", stderr). Its
    whole process group (a Ray it started included) is killed at LIMIT_S."""
    argv = [sys.executable, "-m", "orchestrator", "run", str(SMOKE),
            "--set", f"train.base_cache_dir={base}"]  # fmt: skip
    for value in sets:
        argv += ["--set", value]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=LIMIT_S)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        tree = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _, err = proc.communicate()
        return "timeout", err


def assert_one_line(status, err: str, *expected: str) -> None:
    assert status == 2, (status, err[-3000:])
    assert err.count("\n") == 1 and err.startswith("sla-sweep: error: "), err[-3000:]
    for text in expected:
        assert text in err, err


def test_a_read_only_working_directory_is_one_line_naming_it(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    base = tmp_path / "base"
    with read_only(cwd):
        status, err = run_sweep_cli(cwd, base)
    assert_one_line(status, err, f"{cwd / 'sla_runs'} cannot be created: {cwd} is ")
    assert "read-only filesystem" in err or "not writable" in err, err
    assert not base.exists(), "nothing was pre-trained before the check"
    assert list(cwd.iterdir()) == []


def test_a_tracking_server_that_never_answers_is_one_line_in_bounded_time(tmp_path):
    """A socket that listens (the kernel accepts connections for it) and never replies."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    base = tmp_path / "base"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        status, err = run_sweep_cli(cwd, base, f"storage.tracking_uri={uri}")
    assert_one_line(status, err, f"the MLflow server at {uri} accepted a connection",
                    "did not answer a request within ")  # fmt: skip
    from orchestrator.sweep.preflight import ANSWER_TIMEOUT_S

    waited = float(err.split("within ")[1].split(" s")[0])
    assert ANSWER_TIMEOUT_S <= waited < ANSWER_TIMEOUT_S + 5, err  # bounded, on a loaded CI box
    assert not base.exists(), "nothing was pre-trained before the check"
    assert list(cwd.iterdir()) == [], "no sweep directory, no MLflow store"


def test_a_tracking_uri_whose_port_is_not_a_number_is_one_line(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    base = tmp_path / "base"
    uri = "http://user:secret@127.0.0.1:notaport"
    status, err = run_sweep_cli(cwd, base, f"storage.tracking_uri={uri}")
    assert_one_line(status, err, "storage.tracking_uri", "has port 'notaport', not a number")
    assert "secret" not in err
    assert not base.exists() and list(cwd.iterdir()) == []


@pytest.mark.slow
def test_a_real_mlflow_server_passes_the_answer_check(tmp_path):
    from orchestrator.sweep.preflight import ANSWER_TIMEOUT_S, check_tracking_answers

    with MlflowServer(tmp_path / "server") as server:
        t = time.monotonic()
        check_tracking_answers(server.url)
        assert time.monotonic() - t < ANSWER_TIMEOUT_S

"""Services that do not answer, resources that can never fit, two drivers at once, a lookup by
name: with real sockets, a real MLflow sqlite store, real processes and real signals.

- a Ray address or MLflow server nothing answers at, and a trial bigger than the machine: one
  line, exit 2, within seconds, no sweep directory and no MLflow store (nothing RUNNING);
- the same trial bigger than a joined cluster (the session's real Ray cluster, 2 CPUs);
- three processes creating one fresh sqlite store at the same moment all succeed;
- the sweep directory's lock: held by a live driver it refuses a second one in one line
  naming the holder, and it dies with its holder (SIGKILL);
- SIGTERM and SIGHUP do what Ctrl-C does in a driver;
- `best FILE.yaml` picks a sweep of exactly that experiment, not one of `smoke-x`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec
from orchestrator.sweep.driver import driver_lock, exit_code, stop_signals
from orchestrator.sweep.run import find_sweep
from tests.paths import REPO

SMOKE = REPO / "experiments" / "smoke.yaml"


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(argv: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str, float]:
    monkeypatch.chdir(cwd)
    t = time.monotonic()
    status = main(argv)
    return status, capsys.readouterr().err, time.monotonic() - t


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS", "tracking_uri", "cpus"])
def test_unreachable_or_impossible_is_one_line_in_seconds(how, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = f"127.0.0.1:{closed_port()}"
    argv = ["run", str(SMOKE), "--set", f"train.base_cache_dir={tmp_path / 'base'}"]
    if how == "--address":
        argv += ["--address", address]
    elif how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
    elif how == "tracking_uri":
        argv += ["--set", f"storage.tracking_uri=http://127.0.0.1:{closed_port()}"]
    else:
        argv += ["--set", f"resources.cpus_per_worker={4 * (os.cpu_count() or 1)}"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    status, err, seconds = run_cli(argv, cwd, monkeypatch, capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("sla-sweep: error: "), err
    expected = {"--address": "no Ray cluster answers at", "RAY_ADDRESS": "no Ray cluster answers",
                "tracking_uri": "nothing answers at http://127.0.0.1:", "cpus": "CPUs"}  # fmt: skip
    assert expected[how] in err
    assert seconds < 15, seconds
    assert list(cwd.iterdir()) == [], "no sweep directory, no MLflow store"
    assert not (tmp_path / "base").exists(), "nothing was pre-trained before the check"


@pytest.mark.slow
def test_a_trial_bigger_than_the_joined_cluster(ray_cluster, tmp_path, monkeypatch, capsys):
    argv = ["run", str(SMOKE), "--address", ray_cluster, "--set", "resources.workers_per_trial=2",
            "--set", "resources.cpus_per_worker=1.5",
            "--set", f"train.base_cache_dir={tmp_path / 'base'}"]  # fmt: skip
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    status, err, seconds = run_cli(argv, cwd, monkeypatch, capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert "a trial needs 3 CPUs (workers_per_trial 2 x cpus_per_worker 1.5)" in err
    assert "the Ray cluster has 2" in err
    assert list(cwd.iterdir()) == [], "no sweep directory, no MLflow store"


OPEN_STORE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from orchestrator.sweep.driver import open_store
    Path(sys.argv[2] + ".ready").touch()  # imported: at the barrier
    while not Path(sys.argv[3]).exists():
        pass
    recorder = open_store(sys.argv[1], "race")
    print("EXPERIMENT", recorder.experiment_id)
    """
)


def test_sweeps_starting_at_once_on_a_fresh_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, uri, str(tmp_path / f"p{i}"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("p*.ready"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # all three open the store at the same moment
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, [err[-1500:] for _, err in outs]
    ids = {line.split()[1] for out, _ in outs for line in out.splitlines() if "EXPERIMENT" in line}
    assert len(ids) == 1, f"one experiment, created once: {ids}"


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from orchestrator.sweep.driver import driver_lock
    with driver_lock(Path(sys.argv[1])):
        print("HELD", flush=True)
        time.sleep(600)
    """
)


def test_the_sweep_lock_refuses_a_second_driver_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(SpecError, match=rf"another sla-sweep driver \(pid {holder.pid}\)"):
            with driver_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with driver_lock(tmp_path):  # a killed holder leaves no lock behind
        assert (tmp_path / "driver.lock").read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_do_what_ctrl_c_does(signum):
    seen, handler_before = [], signal.getsignal(signum)
    before = signal.signal(signal.SIGINT, lambda s, f: seen.append(s))  # as Tune's handler
    try:
        with stop_signals() as received:
            os.kill(os.getpid(), signum)
            time.sleep(0.1)
        assert seen == [signal.SIGINT] and received == [signum]
        signal.signal(signal.SIGINT, signal.default_int_handler)  # after Tune's one-shot handler
        with stop_signals() as received:
            os.kill(os.getpid(), signum)
            time.sleep(0.1)
            raise AssertionError("the second stop signal did not stop the block")
        assert received == [signum, signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, before)
    assert signal.getsignal(signum) == handler_before, "the handler is restored after the block"
    assert exit_code(signal.SIGTERM) == 143 and exit_code(signal.SIGHUP) == 129
    assert exit_code(None) == 130


def fake_sweep(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "sweep.json").write_text(json.dumps({"name": name}))
    return directory


def test_best_by_file_picks_exactly_that_experiment(tmp_path):
    spec = load_spec(SMOKE, cwd=tmp_path, gpus_available=0)
    runs = spec.storage.results_dir
    own = fake_sweep(runs / "smoke-20261201-101010", "smoke")
    fake_sweep(runs / "smoke-x-20261202-101010", "smoke-x")  # newer, of another experiment
    fake_sweep(runs / "smoke-20261201-09", "smoke")  # not a sweep directory's name
    assert find_sweep(spec) == own
    again = fake_sweep(runs / "smoke-20261201-101010-1", "smoke")  # same second, second sweep
    assert find_sweep(spec) == again

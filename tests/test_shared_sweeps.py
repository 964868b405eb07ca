"""tests/shared_sweeps.py: every module whose tests request a shared sweep, directly or through a
fixture built on one, runs on one pytest-xdist worker, so the sweep runs once; no list of
modules to keep. Checked on a small project run the way the suite runs (`-n 2 --dist loadscope`),
whose fake sweep fixtures count their runs in files."""

from __future__ import annotations

import re

from tests.paths import REPO

CONFTEST = """
import os
from pathlib import Path

import pytest

RUNS = Path(os.environ["SWEEP_RUNS"])


def _ran(name):
    (RUNS / f"{name}-{os.getpid()}").touch()
    return name


@pytest.fixture(scope="session")
def smoke_sweep():
    return _ran("smoke_sweep")


@pytest.fixture(scope="session")
def lora_repeats():
    return _ran("lora_repeats")


@pytest.fixture(scope="module")
def checkpoint(smoke_sweep):
    return smoke_sweep + "/checkpoint"
"""

# The two largest modules go first, one to each worker, unless they are one scope.
MODULES = {
    "test_direct.py": "def test_d{i}(smoke_sweep): pass\n",
    "test_through_a_fixture.py": "def test_t{i}(checkpoint): pass\n",
    "test_lora.py": "def test_l{i}(lora_repeats, smoke_sweep): pass\n",
    "test_plain_a.py": "def test_a{i}(): pass\n",
    "test_plain_b.py": "def test_b{i}(): pass\n",
}
SIZES = {"test_direct.py": 4, "test_through_a_fixture.py": 4, "test_lora.py": 1}


def test_modules_reading_a_shared_sweep_share_one_worker(pytester, monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("SWEEP_RUNS", str(runs))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # for -p tests.shared_sweeps
    pytester.makeconftest(CONFTEST)
    for name, line in MODULES.items():
        pytester.makepyfile(
            **{name[:-3]: "".join(line.format(i=i) for i in range(SIZES.get(name, 2)))}
        )
    result = pytester.runpytest_subprocess(
        "-p", "tests.shared_sweeps", "-n", "2", "--dist", "loadscope", "-v", "-p", "no:cacheprovider"
    )  # fmt: skip
    result.assert_outcomes(passed=sum(SIZES.get(n, 2) for n in MODULES))
    ran_on = {}
    for worker, nodeid in re.findall(r"\[(gw\d)\] \[ *\d+%\] PASSED (\S+)", result.stdout.str()):
        ran_on.setdefault(nodeid.split("::")[0], set()).add(worker)
    shared = ran_on["test_direct.py"] | ran_on["test_through_a_fixture.py"] | ran_on["test_lora.py"]
    assert len(shared) == 1, f"the modules reading a shared sweep ran on {ran_on}"
    assert sorted(p.name.split("-")[0] for p in runs.iterdir()) == ["lora_repeats", "smoke_sweep"]

"""Run a Python script in a fresh interpreter (the Triton interpreter is set per process) from the
repository root, and return the JSON object its last stdout line holds."""

import json
import subprocess
import sys
from pathlib import Path


def run_json_script(*args: str, timeout: float = 600) -> dict:
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

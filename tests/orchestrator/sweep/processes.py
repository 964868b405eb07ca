"""What the sweep fault tests share: `sla-sweep` subprocesses and their output, waiting on a
condition, the session cluster's Ray Train worker processes, the checkpoints Ray Train
registered, and comparing two trials' final weights and metrics."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

from orchestrator.storage import Location, open_location
from sla_kernel_glue import read_sla_state


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`sla-sweep ARGS` in a subprocess (unbuffered), stdout and stderr merged into one pipe."""
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def reader(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    """A daemon thread appending each line proc prints to `lines` as it comes."""
    thread = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    thread.start()
    return thread


def wait_for(predicate, what: str, lines: list[str], timeout_s: float = 420):
    """predicate()'s first truthy value, polled every 50 ms; an AssertionError with the output
    so far after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n" + "".join(lines))


def train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of THIS session's cluster (its raylet is our child), never
    those of another cluster on the host."""
    found = []
    for raylet in (p for p in psutil.Process().children(recursive=True) if _name(p) == "raylet"):
        for p in raylet.children(recursive=True):
            try:
                if "RayTrainWorker" in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:  # exited (or a zombie) while we looked: not a live worker
                continue
    return found


def _name(p: psutil.Process) -> str:
    """The process name, or "" for one that exited while the tree was being read."""
    try:
        return p.name()
    except psutil.Error:
        return ""


def trial_names(sweep: Location) -> list[str]:
    """The trials that have files under the sweep's train/ (a local folder or a bucket)."""
    train = sweep.join("train")
    return sorted({train.relative(f).split("/", 1)[0] for f in train.files()})


def registered(trial: Location) -> list[tuple[float, int]]:
    """(report time, step) of each checkpoint Ray Train registered for a trial, from its
    snapshot (a local folder or one in a bucket); [] before the first."""
    snapshot = trial.join("checkpoint_manager_snapshot.json")
    try:
        results = snapshot.read_json()["checkpoint_results"] if snapshot.exists() else []
    except (OSError, ValueError):  # being replaced, or gone, while we read it
        return []
    out = []
    for c in results:
        stamp = c["checkpoint_dir_name"].removeprefix("checkpoint_")
        when = datetime.datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S.%f").timestamp()
        out.append((when, int(c["metrics"]["step"])))
    return sorted(out)


def assert_same_weights(a: Path, b: Path) -> None:
    """Two checkpoints hold the same SLA and model tensors, bit for bit (the same code path ran
    both: CPU, one thread per worker)."""
    sla_a, sla_b = read_sla_state(a / "sla_attention.pt"), read_sla_state(b / "sla_attention.pt")
    assert sla_a["layers"].keys() == sla_b["layers"].keys()
    for layer, entry in sla_a["layers"].items():
        for key, tensor in entry["state"].items():
            assert torch.equal(tensor, sla_b["layers"][layer]["state"][key]), (layer, key)
    model_a, model_b = (
        load_file(str(a / "model.safetensors")),
        load_file(str(b / "model.safetensors")),
    )
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def quality(metrics: dict) -> dict:
    """A trial's metrics without what the machine measured (step times, CPU and memory use),
    which differ between any two runs."""
    return {k: v for k, v in metrics.items() if not k.startswith(("perf/", "system/"))}


def assert_resumed_after(trial: Location, kill_time: float, out: str, steps: int) -> None:
    """A trial whose workers were killed at kill_time (after a checkpoint) restarted from its
    last registered checkpoint: its first checkpoint after the kill is the next one (every 2
    steps), it reached `steps`, and the driver's output `out` shows step 0 evaluated once."""
    checkpoints = registered(trial)
    before = [step for when, step in checkpoints if when < kill_time]
    after = [step for when, step in checkpoints if when > kill_time]
    assert before and after, checkpoints
    assert max(before) >= 2 and min(after) == max(before) + 2 and after[-1] == steps, checkpoints
    seen = [int(s) for s in re.findall(rf"trial {trial.name} step (\d+)", out)]
    assert seen.count(0) == 1 and seen[-1] == steps, seen  # step 0 not evaluated again


def wait_for_first_checkpoint(lines: list[str], step: int = 2) -> tuple[Location, str]:
    """(the bucket sweep the driver's output `lines` names, its first trial) once Ray Train has
    registered that trial's checkpoint at `step` or later."""
    found = wait_for(lambda: [re.search(r"\] sweep (s3://\S+)", ln) for ln in lines if "] sweep " in ln],
                     "the sweep's URI", lines)  # fmt: skip
    sweep = open_location(found[0].group(1))

    def first_checkpointed():
        trials = trial_names(sweep)
        first = trials and sweep.join("train", trials[0])
        return first and any(s >= step for _, s in registered(first)) and trials[0]

    return sweep, wait_for(first_checkpointed, f"the first trial's step-{step} checkpoint", lines)

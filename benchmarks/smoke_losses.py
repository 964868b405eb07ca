"""The smoke study's per-trial losses, to show a refactor changed no result (bit for bit on the CPU).

    python -m benchmarks.smoke_losses run --tree /tmp/before --out before.json
    python -m benchmarks.smoke_losses run --tree . --out after.json
    python -m benchmarks.smoke_losses compare before.json after.json

`run` runs `sla-sweep experiments/smoke.yaml` from the source tree TREE (its code on PYTHONPATH,
so an older commit's clone runs its own code) into a temporary results directory, then reads
every trial's train/loss and val/loss history from the sweep's MLflow store and writes them,
keyed by the trial's config, as JSON with each value's float.hex() (exact). `compare` exits 1 and
names the first difference when two such files differ anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

METRICS = ("train/loss", "val/loss")


def stable_name(run_name: str) -> str:
    """A trial's run name without Tune's random experiment prefix: "2f185_00001 topk=0.5" ->
    "00001 topk=0.5" (the index and the config are the same from run to run)."""
    return re.sub(r"^[0-9a-f]+_(\d+)", r"\1", run_name)


def read_losses(results: Path) -> dict[str, dict[str, list[list]]]:
    """{config: {metric: [[step, value.hex()], ...]}} from the sweep's MLflow store (the child
    runs: one per trial, named by its config in the sla.config param or the run name)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    out: dict[str, dict[str, list[list]]] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            histories = {
                m: client.get_metric_history(run.info.run_id, m) for m in METRICS
            }  # fmt: skip
            if not any(histories.values()):
                continue  # the parent run: a summary, no history
            name = stable_name(run.info.run_name or run.info.run_id)
            out[name] = {
                m: [[p.step, float(p.value).hex()] for p in sorted(h, key=lambda p: p.step)]
                for m, h in histories.items()
            }  # fmt: skip
    return dict(sorted(out.items()))


def run(tree: Path, out: Path) -> dict:
    tree = tree.resolve()
    with tempfile.TemporaryDirectory(prefix="smoke-losses-") as tmp:
        results = Path(tmp) / "runs"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        argv = [sys.executable, "-m", "orchestrator", "experiments/smoke.yaml",
                "--set", f"storage.results_dir={results}"]  # fmt: skip
        subprocess.run(argv, cwd=tree, env=env, check=True)
        losses = read_losses(results)
    if not losses:
        raise SystemExit(f"no trial losses found in the smoke sweep run from {tree}")
    out.write_text(json.dumps(losses, indent=1) + "\n")
    return losses


def compare(a: Path, b: Path) -> int:
    left, right = (
        {stable_name(k): v for k, v in json.loads(p.read_text()).items()} for p in (a, b)
    )
    if sorted(left) != sorted(right):
        print(f"trials differ: {sorted(left)} vs {sorted(right)}")
        return 1
    for trial in left:
        for metric in METRICS:
            if left[trial][metric] != right[trial][metric]:
                print(f"{trial} {metric} differs: {left[trial][metric]} vs {right[trial][metric]}")
                return 1
    points = sum(len(v) for t in left.values() for v in t.values())
    print(f"identical: {len(left)} trials, {points} loss values bit for bit")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.smoke_losses")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--tree", type=Path, default=Path("."))
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("compare")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.tree, args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    raise SystemExit(main())

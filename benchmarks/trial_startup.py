"""Where a trial's start-up goes, and the whole study's wall time, for one or more source trees.

    python -m benchmarks.trial_startup run --tree before=/tmp/before --tree after=. \
        [--experiment experiments/topk.yaml] [--rounds 2] [--imports] --out startup.json
    python -m benchmarks.trial_startup show startup.json
    python -m benchmarks.trial_startup pool [--actors 5]

`run` runs `sla-sweep EXPERIMENT` from each tree in turn (its code on PYTHONPATH), round after
round, so that trees compared are measured side by side on the same (shared) machine; the
machine's load (`uptime`) is recorded before and after each run. Each run gets its own results
directory; all runs share one model cache (SLA_SWEEP_CACHE), warmed first by an untimed run when
its base model is missing, so that no timed run pays the base model's pre-training. For each
run: the wall time, the sweep's own timings.json (per-trial means: Ray start-up split into the
Tune actor's start, the Train worker's spawn and its init; the recipe's set-up; training;
teardown), the final val/loss of every trial and every loss value (for "same results").

--imports also sets PYTHONPROFILEIMPORTTIME=1 for the driver and every Ray process (a local
Ray's processes inherit the driver's environment) and gives Ray its own temporary directory;
the run then lists every process Ray started (the worker log files: one pair per process, named
by its actor or task), how long each spent importing and the modules that cost it most. Import
profiling slows imports a little: compare walls of runs without it.

`pool` asks whether Ray could hand a trial's actors warm processes: on a private 2-CPU Ray it
creates actors one after another and says which landed on a worker Ray had prestarted and which
on a new process (and how long each took to answer). Ray prestarts as many workers as CPUs once,
for the first driver, and does not refill them for actors (nor with RAY_enable_worker_prestart=1).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from benchmarks.smoke_losses import read_losses, stable_name

IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def imported_packages(text: str) -> set[str]:
    """The top-level packages `python -X importtime` output shows imported (for the install:
    which distributions a run needs)."""
    return {m.group(4).split(".")[0] for m in map(IMPORT_LINE.match, text.splitlines()) if m}


def parse_imports(text: str) -> tuple[float, list[tuple[float, str]]]:
    """(seconds spent importing, [(cumulative seconds, module)] of the top-level imports, most
    first) from `python -X importtime` output (its self times add up to the whole)."""
    total, top = 0, []
    for line in text.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        total += int(m.group(1))
        if len(m.group(3)) <= 1:  # a top-level import: one space of indent
            top.append((int(m.group(2)) / 1e6, m.group(4)))
    return total / 1e6, sorted(top, reverse=True)


def process_role(out_text: str, err_text: str) -> str:
    """What a Ray worker process ran: its actor's class, else its first task, else IDLE."""
    for text in (out_text, err_text):
        m = re.search(r"^:actor_name:(\S+)", text, re.M)
        if m:
            return m.group(1)
    m = re.search(r"^:task_name:(\S+)", out_text + "\n" + err_text, re.M)
    return f"task:{m.group(1)}" if m else "IDLE (prestarted, never used)"


def ray_processes(ray_tmp: Path) -> list[dict]:
    """Every Python worker process of the run's Ray session: role, pid, import seconds, the five
    costliest top-level imports."""
    out = []
    for err in sorted(ray_tmp.glob("**/logs/worker-*.err")):
        pid = err.stem.rsplit("-", 1)[-1]
        err_text = err.read_text(errors="replace")
        out_file = err.with_suffix(".out")
        out_text = out_file.read_text(errors="replace") if out_file.exists() else ""
        seconds, top = parse_imports(err_text)
        out.append({"role": process_role(out_text, err_text), "pid": int(pid),
                    "import_s": round(seconds, 2), "packages": imported_packages(err_text),
                    "top": [[round(s, 2), m] for s, m in top[:5]]})  # fmt: skip
    return out


def by_role(processes: list[dict]) -> dict[str, dict]:
    """Processes grouped by role: how many, mean import seconds, the modules most often costly."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for p in processes:
        groups[p["role"]].append(p)
    out = {}
    for role, ps in sorted(groups.items()):
        modules: dict[str, list[float]] = defaultdict(list)
        for p in ps:
            for s, m in p["top"]:
                modules[m].append(s)
        top = sorted(((sum(v) / len(ps), m) for m, v in modules.items()), reverse=True)[:5]
        out[role] = {"processes": len(ps),
                     "packages": sorted(set().union(*(p["packages"] for p in ps))),
                     "mean_import_s": round(sum(p["import_s"] for p in ps) / len(ps), 2),
                     "top_imports": [[round(s, 2), m] for s, m in top]}  # fmt: skip
    return out


def uptime_load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def sweep_dir(results: Path) -> Path:
    dirs = [p for p in results.iterdir() if (p / "timings.json").exists()]
    if len(dirs) != 1:
        raise SystemExit(f"expected one finished sweep in {results}, found {len(dirs)}")
    return dirs[0]


def final_losses(sweep: Path) -> dict[str, str]:
    """{trial index: final val/loss as written in results.csv} (the table the user reads)."""
    with open(sweep / "results.csv", newline="") as f:
        return {stable_name(row["trial_id"]): row["val/loss"] for row in csv.DictReader(f)}


def run_study(tree: Path, experiment: str, cache: Path, *, imports: bool) -> dict:
    """One `sla-sweep EXPERIMENT` from `tree` into a fresh results directory: its measurements."""
    tree = tree.resolve()
    with tempfile.TemporaryDirectory(prefix="trial-startup-") as tmp:
        tmp_path = Path(tmp)
        results = tmp_path / "runs"
        env = {**os.environ, "PYTHONPATH": str(tree), "SLA_SWEEP_CACHE": str(cache)}
        if imports:
            env.update(PYTHONPROFILEIMPORTTIME="1", RAY_TMPDIR=str(tmp_path / "r"))
        argv = [sys.executable, "-m", "orchestrator", experiment,
                "--set", f"storage.results_dir={results}"]  # fmt: skip
        load_before = uptime_load()
        cpu0, t0 = _children_cpu(), time.monotonic()
        done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
        wall, cpu = time.monotonic() - t0, _children_cpu() - cpu0
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"sla-sweep failed from {tree} (exit {done.returncode})")
        sweep = sweep_dir(results)
        record = {"tree": str(tree), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": load_before,
                  "load_after": uptime_load(),
                  "timings": json.loads((sweep / "timings.json").read_text()),
                  "final_val_loss": final_losses(sweep),
                  "losses": {stable_name(k): v for k, v in read_losses(results).items()}}  # fmt: skip
        if imports:
            seconds, top = parse_imports(done.stderr)
            record["driver_imports"] = {"import_s": round(seconds, 2),
                                        "packages": sorted(imported_packages(done.stderr)),
                                        "top": [[round(s, 2), m] for s, m in top[:8]]}  # fmt: skip
            record["processes"] = by_role(ray_processes(tmp_path / "r"))
        return record


def _children_cpu() -> float:
    """User + system CPU seconds of this process's reaped children (sla-sweep and the Ray
    processes reaped through it): less sensitive than wall time to a shared machine's load."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# What each kind of process imports before it works, as `python -c` lines: the driver's modules
# and what a preset sweep's driver runs before Ray; the trial worker's train loop and recipe.
IMPORT_PATHS = {
    "driver": "import orchestrator.sweep.run, orchestrator.cli",
    "worker": "import orchestrator.sweep.worker; from orchestrator.recipe import run_trial; "
    "import orchestrator.recipe.train; from orchestrator.data.digits_clips import _digit_images; "
    "_digit_images(); from orchestrator.recipe.base_model import load_base_model; "
    "import diffusers.models.transformers.transformer_wan",
}


def import_paths(trees: list[tuple[str, Path]], repeat: int) -> list[dict]:
    """Each import path from each tree, `repeat` rounds, trees in turn: wall and CPU seconds of a
    fresh interpreter doing it."""
    out = []
    for r in range(repeat):
        for label, tree in trees:
            for name, code in IMPORT_PATHS.items():
                env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
                cpu0, t0 = _children_cpu(), time.monotonic()
                subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True,
                               capture_output=True)  # fmt: skip
                out.append({"tree": label, "path": name, "round": r,
                            "wall_s": round(time.monotonic() - t0, 2),
                            "cpu_s": round(_children_cpu() - cpu0, 2),
                            "load": uptime_load().split("average:")[-1].strip()})  # fmt: skip
    return out


def has_base_model(cache: Path) -> bool:
    return any((cache / "base_models").glob("*/*")) if (cache / "base_models").is_dir() else False


def run(trees: list[tuple[str, Path]], experiment: str, rounds: int, imports: bool,
        cache: Path, out: Path) -> dict:  # fmt: skip
    """Every tree once per round, in turn; results saved after each run."""
    cache.mkdir(parents=True, exist_ok=True)
    report: dict = {"experiment": experiment, "cpus": os.cpu_count(), "runs": []}
    if not has_base_model(cache):
        print(f"[trial_startup] warming the model cache {cache} (untimed)", flush=True)
        run_study(trees[0][1], experiment, cache, imports=False)
    for r in range(rounds):
        for label, tree in trees:
            record = {"label": label, "round": r,
                      **run_study(tree, experiment, cache, imports=imports)}  # fmt: skip
            report["runs"].append(record)
            out.write_text(json.dumps(report, indent=1) + "\n")
            print(f"[trial_startup] {label} round {r}: wall {record['wall_s']} s "
                  f"({record['load_before']})", flush=True)  # fmt: skip
    return report


def pool(actors: int) -> list[dict]:
    """Whether Ray gives a new actor a warm process: a private Ray of 2 CPUs, then `actors` actors
    one after another (each killed before the next), each noted as landing on a worker Ray had
    prestarted (idle before it) or on a new process, with its creation-to-first-call seconds."""
    import ray  # heavy: only this subcommand starts Ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:

        @ray.remote(num_cpus=1)
        class Probe:
            def pid(self) -> int:
                return os.getpid()

        time.sleep(6)  # the first driver's prestarted workers come up
        out = []
        for _ in range(actors):
            idle = _idle_workers()
            t0 = time.monotonic()
            actor = Probe.remote()
            pid = ray.get(actor.pid.remote())
            out.append({"pid": pid, "prestarted": pid in idle, "idle_before": len(idle),
                        "seconds": round(time.monotonic() - t0, 2)})  # fmt: skip
            ray.kill(actor)
            time.sleep(3)
        return out
    finally:
        ray.shutdown()


def _idle_workers() -> set[int]:
    """Worker processes of this process's own Ray (its descendants) waiting for work (ray::IDLE),
    never another Ray instance's on the host."""
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "ray::IDLE" in " ".join(p.cmdline()):
                found.add(p.pid)
        except psutil.Error:
            continue  # gone meanwhile
    return found


TIMING_KEYS = ("trial_ray_start_s", "trial_tune_actor_start_s", "trial_worker_spawn_s",
               "trial_worker_init_s", "trial_recipe_setup_s", "trial_training_s",
               "trial_ray_teardown_s", "ray_start_s", "fit_s", "total_s")  # fmt: skip


def show(report: dict) -> str:
    """The runs side by side: wall, per-trial timings, results, and (with --imports) processes."""
    runs = report["runs"]
    lines = [f"experiment {report['experiment']}, {report['cpus']} CPUs"]
    lines.append("run | " + " | ".join(f"{r['label']}#{r['round']}" for r in runs))
    lines.append("wall_s | " + " | ".join(f"{r['wall_s']:.1f}" for r in runs))
    for key in TIMING_KEYS:
        cells = [f"{r['timings'][key]:.1f}" if key in r["timings"] else "-" for r in runs]
        lines.append(f"{key} | " + " | ".join(cells))
    total = [
        r["timings"].get("trial_ray_start_s", 0) + r["timings"].get("trial_recipe_setup_s", 0)
        for r in runs
    ]
    lines.append("trial start until first report | " + " | ".join(f"{t:.1f}" for t in total))
    lines.append(
        "load before | " + " | ".join(r["load_before"].split("average:")[-1] for r in runs)
    )
    first = runs[0]
    for r in runs[1:]:
        same = r["losses"] == first["losses"]
        lines.append(f"losses {r['label']}#{r['round']} vs {first['label']}#{first['round']}: "
                     f"{'identical bit for bit' if same else 'DIFFERENT'}")  # fmt: skip
    lines.append("final val/loss: " + json.dumps(first["final_val_loss"]))
    for r in runs:
        if "processes" not in r:
            continue
        lines.append(
            f"\n{r['label']}#{r['round']} driver imports {r['driver_imports']['import_s']} s: "
            + ", ".join(f"{m} {s}" for s, m in r["driver_imports"]["top"][:5])
        )
        for role, g in r["processes"].items():
            lines.append(
                f"  {g['processes']} x {role}: imports {g['mean_import_s']} s each; "
                + ", ".join(f"{m} {s}" for s, m in g["top_imports"])
            )
    return "\n".join(lines)


def _medians(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{"tree path": {"wall_s": median, "cpu_s": median}}."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[f"{row['tree']} {row['path']}"].append(row)
    return {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "cpu_s")}
            for k, v in groups.items()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trial_startup")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--tree", action="append", required=True, help="LABEL=DIR (repeatable)")
    p.add_argument("--experiment", default="experiments/topk.yaml")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--imports", action="store_true")
    p.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "trial-startup-cache"
    )
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("pool", help="does a new actor get a warm (prestarted) process?")
    p.add_argument("--actors", type=int, default=5)
    p = sub.add_parser("imports", help="the driver's and the worker's imports, trees in turn")
    p.add_argument("--tree", action="append", required=True, help="LABEL=DIR (repeatable)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("show")
    p.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pool":
        print(json.dumps({"load": uptime_load(), "actors": pool(args.actors)}, indent=1))
        return 0
    if args.command == "show":
        print(show(json.loads(args.report.read_text())))
        return 0
    trees = []
    for item in args.tree:  # run and imports
        label, sep, directory = item.partition("=")
        if not sep or not Path(directory).is_dir():
            parser.error(f"--tree {item!r}: expected LABEL=DIR with DIR a source tree")
        trees.append((label, Path(directory)))
    if args.command == "imports":
        rows = import_paths(trees, args.repeat)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps(_medians(rows), indent=1))
        return 0
    report = run(trees, args.experiment, args.rounds, args.imports, args.cache, args.out)
    print(show(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

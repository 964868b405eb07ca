"""The MLflow UI (`sla-sweep ui`) on the smoke sweep's real store, opened in headless Chromium:
the experiment, the parent and child runs, their sla.* params and val/* metrics are on the pages.

The pages' DOM is dumped with Chromium's own --dump-dom after a virtual-time budget (MLflow's UI
is a JavaScript app); screenshots of every page opened (runs table, compare view, sweep run, a
trial's system metrics, the registered model) are kept under $ARTIFACT_DIR (or the test's
tmp_path) and their paths printed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.ui import UIServer, resolve_store, sweep_links

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(), reason="needs Debian's chromium (/usr/bin/chromium)"
    ),
]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
           "--window-size=1920,1200",
           *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def dump_dom(profile: Path, url: str, *needles: str, tries: int = 3) -> str:
    """The page's DOM; dumped again (up to `tries` times) until every needle is in it: on a
    loaded machine a chart's data can arrive after the virtual-time budget."""
    for _ in range(tries):
        page = chromium(profile, "--dump-dom", url).stdout
        if all(n in page for n in needles):
            break
    return page


@pytest.fixture(scope="module")
def ui(smoke_sweep, tmp_path_factory):
    _, outcome = smoke_sweep
    logs = tmp_path_factory.mktemp("ui")
    with UIServer(resolve_store(str(outcome.sweep_dir)), log_path=logs / "server.log") as server:
        yield outcome, server


def test_server_listens_on_loopback_and_serves_the_store(ui):
    outcome, server = ui
    assert server.url.startswith("http://127.0.0.1:")
    query = urllib.parse.urlencode({"experiment_name": "smoke"})
    with urllib.request.urlopen(
        f"{server.url}/api/2.0/mlflow/experiments/get-by-name?{query}"
    ) as r:
        experiment = json.load(r)["experiment"]
    assert experiment["experiment_id"] == server.store.experiment_id


def test_pages_show_experiment_runs_params_and_metrics(ui, smoke_sweep, tmp_path):
    """The links `sla-sweep ui` prints, opened as printed: the runs table with the trials and their
    sla.topk and val/loss columns in the training views, the compare view of every trial, the
    sweep's run with its Pareto plot inline, a trial's system metrics, the registered model."""
    spec, outcome = smoke_sweep
    _, server = ui
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    children = {r.trial_id: client.get_run(r.run_id) for r in outcome.rows}
    printed = sweep_links(server)
    assert set(printed) == {"runs", "compare", "sweep run", "registered model"}, printed
    profile = tmp_path / "chromium-profile"

    runs_page = dump_dom(profile, printed["runs"])
    for run in children.values():
        assert run.info.run_name in runs_page, run.info.run_name
    assert (
        "sla.topk" in runs_page and "val/loss" in runs_page and "flops/attention_ratio" in runs_page
    )
    assert "Machine learning" in runs_page or "Model training" in runs_page  # not the GenAI views
    assert "Judges" not in runs_page

    page = dump_dom(profile, printed["compare"])
    for run in children.values():
        assert run.info.run_name in page, run.info.run_name
    assert "sla.topk" in page and "train.steps" in page
    assert "val/loss" in page and "flops/attention_ratio" in page

    best = children[outcome.best.trial_id]
    best_url = server.page(f"experiments/{server.store.experiment_id}/runs/{best.info.run_id}")
    system_url = f"{best_url}/system-metrics?workflowType=machine_learning"
    run_page = dump_dom(profile, best_url)
    assert best.info.run_name in run_page
    sla_params = [k for k in best.data.params if k.startswith("sla.")]
    val_metrics = [k for k in best.data.metrics if k.startswith("val/")]
    assert sla_params and val_metrics
    for key in sla_params + val_metrics:
        assert key in run_page, key
    page = dump_dom(  # the system-metrics charts are the last to fill on a busy machine
        profile, system_url, "cpu_utilization_percentage", "system_memory_usage_megabytes", tries=6
    )
    assert "cpu_utilization_percentage" in page and "system_memory_usage_megabytes" in page

    parent_page = dump_dom(profile, printed["sweep run"])
    description = parent.data.tags.get("mlflow.note.content", "")
    assert outcome.best.trial_id in description  # the sweep summary names the best trial
    assert outcome.best.trial_id in parent_page
    assert re.search(r"<img[^>]+src=\"[^\"]*get-artifact\?path=pareto\.png", parent_page), (
        "no inline plot"
    )
    assert "best/val/loss" in parent_page and "control/val/loss" in parent_page

    page = dump_dom(profile, printed["registered model"])
    assert spec.name in page and "Version 1" in page
    assert outcome.best.trial_id in page  # the version's description and tags name the trial

    artifacts = Path(os.environ.get("ARTIFACT_DIR", tmp_path)).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    shots = {"mlflow-ui-runs-table.png": printed["runs"],
             "mlflow-ui-compare-trials.png": printed["compare"],
             "mlflow-ui-sweep-run.png": printed["sweep run"],
             "mlflow-ui-trial-system-metrics.png": system_url,
             "mlflow-ui-registered-model.png": printed["registered model"]}  # fmt: skip
    for name, url in shots.items():
        shot = artifacts / name
        chromium(profile, f"--screenshot={shot}", url)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        print(f"screenshot of the MLflow UI: {shot}")


def test_stop_ends_the_server_process_group(smoke_sweep, tmp_path):
    _, outcome = smoke_sweep
    server = UIServer(
        resolve_store(str(outcome.sweep_dir)), log_path=tmp_path / "server.log"
    ).start()
    pid = server.proc.pid
    server.stop()
    assert server.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of the group is left


def test_cli_prints_the_url_and_ctrl_c_stops_everything(smoke_sweep, tmp_path):
    """`sla-sweep ui DIR --port P` prints the runs page URL; SIGINT (Ctrl-C) ends it and its server."""
    import signal
    import sys
    import time

    from orchestrator.ui import free_port

    _, outcome = smoke_sweep
    port = free_port()
    cmd = [sys.executable, "-m", "orchestrator", "ui", str(outcome.sweep_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("MLflow UI for sqlite:///"), lines
        url = lines[1].strip()
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/"), url
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server's process group is gone: the port is free
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        except OSError:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the MLflow server still answers on port {port} after Ctrl-C")


def test_inferred_samples_are_served_by_the_ui(ui, tmp_path):
    """Samples that `infer` logged to the best trial's run come back through the UI's server."""
    from orchestrator.infer.command import run_infer

    outcome, server = ui
    result = run_infer(
        str(outcome.sweep_dir), out=tmp_path / "s", num_samples=2, seed=7, device="cpu"
    )
    query = urllib.parse.urlencode(
        {"path": "samples/sla-seed7/grid.png", "run_uuid": result.run_id}
    )
    with urllib.request.urlopen(f"{server.url}/get-artifact?{query}", timeout=30) as r:
        served = r.read()
    assert served == (result.out_dir / "grid.png").read_bytes()

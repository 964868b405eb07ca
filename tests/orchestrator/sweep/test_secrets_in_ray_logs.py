"""AWS credentials in the driver's environment reach no file of Ray's session folder.

`sla-sweep run` with its own local Ray instance (no --address; Ray's temporary root a fresh
RAY_TMPDIR, so the session folder is this run's alone), storage a bucket on a real S3-compatible
server (moto's, on 127.0.0.1: tests/s3_server.py), one SLA trial of two steps. The access key
and the secret are fresh random values: the trial still checkpoints into the bucket (its Train
worker inherits the local instance's environment), and neither value is in any file under the
session folder (Tune used to copy them into every trial actor's runtime_env, which Ray's
runtime_env agent writes to runtime_env_agent.log), nor in what the driver printed.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.orchestrator.sweep.processes import cli
from tests.paths import REPO
from tests.s3_server import s3_server

SMOKE = REPO / "experiments" / "smoke.yaml"

pytestmark = pytest.mark.slow


def files_holding(root: Path, values: list[str]) -> dict[str, list[str]]:
    """file (relative to root) -> the values found in its bytes, for every file that has one."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            data = path.read_bytes()
        except OSError:  # a socket or a file Ray removed meanwhile
            continue
        hits = [v for v in values if v.encode() in data]
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


@pytest.fixture(scope="module")
def secret_sweep(base_cache, tmp_path_factory):
    """(the driver's exit status and output, Ray's temporary root, the secrets, the bucket's keys)."""
    key_id, secret = f"AKIA{secrets.token_hex(8).upper()}", secrets.token_urlsafe(30)
    ray_tmp = Path(tempfile.mkdtemp(prefix="sla-ray-", dir="/tmp"))  # short: Ray's socket paths
    cwd = tmp_path_factory.mktemp("secret_sweep")
    try:
        with s3_server() as s3:
            env = {**s3.env, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
                   "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""}  # fmt: skip
            proc = cli("run", str(SMOKE), "--set", "name=secrets", "--set", "control=false",
                       "--set", "sla.topk={grid: [0.25]}", "--set", "train.steps=2",
                       "--set", f"storage.results_dir={s3.uri('runs')}",
                       "--set", f"storage.tracking_uri=sqlite:///{cwd / 'mlflow.db'}",
                       "--set", f"train.base_cache_dir={base_cache}", cwd=cwd, env=env)  # fmt: skip
            out, _ = proc.communicate(timeout=480)
            keys = s3.keys("runs/")
        yield proc.returncode, out, ray_tmp, [key_id, secret], keys
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_sweep_reached_the_bucket_from_its_workers(secret_sweep):
    rc, out, _, _, keys = secret_sweep
    assert rc == 0, out
    assert any("/train/" in k and k.endswith("/sla_attention.pt") for k in keys), keys


def test_no_credential_in_any_file_of_the_ray_session(secret_sweep):
    rc, out, ray_tmp, values, _ = secret_sweep
    assert rc == 0, out
    (session,) = [p for p in (ray_tmp / "ray").glob("session_2*") if p.is_dir()]
    assert (session / "logs" / "runtime_env_agent.log").is_file()  # the agent ran and logged
    assert files_holding(session, values) == {}
    assert not [v for v in values if v in out]


def test_tune_propagates_no_secret_while_connected():
    """While connected, Tune propagates no secret variable; afterwards its own list is back."""
    from ray.tune.execution import class_cache

    from orchestrator.sweep.cluster import secrets_kept_out_of_tune_actors

    before = class_cache.ENV_VARS_TO_PROPAGATE
    assert "AWS_SECRET_ACCESS_KEY" in before  # what Tune does by itself
    with secrets_kept_out_of_tune_actors():
        kept = class_cache.ENV_VARS_TO_PROPAGATE
        assert not {n for n in kept if n.startswith("AWS_")}
        assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in kept  # Train's own settings still go
    assert class_cache.ENV_VARS_TO_PROPAGATE is before

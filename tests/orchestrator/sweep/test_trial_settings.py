"""What every trial gets from the driver: Ray Train's preemption watcher off on the local
instance of one machine, Ray's default (on) on a joined cluster, the user's setting kept."""

from __future__ import annotations

import pytest

from orchestrator.spec import load_spec
from orchestrator.storage.sweep_place import new_place
from orchestrator.sweep.tune_setup import PREEMPTION_WATCHER_ENV, TRAIN_POLL_ENV, trial_settings
from tests.paths import REPO


@pytest.mark.parametrize(
    ("local", "user", "expected"),
    [(True, None, "0"), (False, None, None), (True, "1", "1"), (False, "0", "0")],
)
def test_the_preemption_watcher_is_off_only_on_the_local_instance(
    tmp_path, monkeypatch, local, user, expected
):
    if user is None:
        monkeypatch.delenv(PREEMPTION_WATCHER_ENV, raising=False)
    else:
        monkeypatch.setenv(PREEMPTION_WATCHER_ENV, user)
    spec = load_spec(REPO / "experiments" / "smoke.yaml", cwd=tmp_path, gpus_available=0)
    settings = trial_settings(spec, new_place(tmp_path / "runs", "smoke"), local=local)
    assert settings.controller_env.get(PREEMPTION_WATCHER_ENV) == expected
    assert TRAIN_POLL_ENV in settings.controller_env

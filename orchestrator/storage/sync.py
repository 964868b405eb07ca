"""The driver's Tune callback that keeps a bucket's copy of the sweep's own files current."""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from orchestrator.storage import open_location
from orchestrator.storage.sweep_place import SweepPlace


class SyncCallback(Callback):
    """Pushes the working copy after every trial event (results at most once a second); runs
    after the progress callback, which writes trials.json. Pickled with Tune's state as the
    bucket's URI and the working copy's path only."""

    def __init__(self, place: SweepPlace, min_interval_s: float = 1.0) -> None:
        self.uri, self.local, self.min_interval_s = place.uri, str(place.local), min_interval_s
        self.place: SweepPlace | None = place
        self.last = 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "place": None}

    def _push(self, force: bool = False) -> None:
        if self.place is None:
            self.place = SweepPlace(Path(self.local), open_location(self.uri, what="sweep"))
        if force or time.monotonic() - self.last >= self.min_interval_s:
            self.place.push()
            self.last = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._push(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._push()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._push(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._push(force=True)

    def on_experiment_end(self, trials, **info) -> None:
        self._push(force=True)

"""What runs on each Ray Train worker of a trial: the training recipe, reporting through Ray.

Ray Train has set up torch.distributed before this runs, so the recipe's Accelerator() joins
that process group. Every rank calls ray.train.report the same number of times (it is a barrier);
every rank hands its own checkpoint directory, and Ray merges them into one checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow.fs
import ray.train

from orchestrator.spec.recipe import build_train_config
from orchestrator.storage import is_uri
from orchestrator.storage.records import (
    LOOP_START_KEY,
    STEP_KEY,
    TRAINABLE_START_KEY,
    WORKER_CREATED_KEY,
)
from orchestrator.tracking.system_metrics import SystemSampler
from sla_kernel_glue import SLAConfig


class RayReportCallback:
    """The recipe's callback protocol (on_metrics / on_checkpoint) -> ray.train.report."""

    def __init__(self, trainable_start: float | None = None, scratch: Path | None = None) -> None:
        # For the sweep's overhead accounting: Tune actor -> Train start-up -> recipe.
        self.scratch = scratch  # this worker's own folder: checkpoints in it are moved, not copied
        self.loop_start = time.time()
        self.trainable_start = trainable_start
        self.worker_created = psutil.Process().create_time()
        self.system = SystemSampler().start()  # system/... figures in every report

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        ray.train.report(self._payload(step, metrics))

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, Any]) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(directory))
        upload = None
        if self.scratch is not None and Path(directory).absolute().is_relative_to(self.scratch):
            upload = move_or_copy_checkpoint
        ray.train.report(
            self._payload(step, metrics), checkpoint=checkpoint, checkpoint_upload_fn=upload
        )

    def _payload(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        payload = {
            **_numeric(metrics),
            **self.system.figures(),
            STEP_KEY: int(step),
            LOOP_START_KEY: self.loop_start,
            WORKER_CREATED_KEY: self.worker_created,
        }
        if self.trainable_start is not None:
            payload[TRAINABLE_START_KEY] = self.trainable_start
        return payload


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one trial on this worker: config = {"train": TrainConfig kwargs, "sla": dict|None,
    "trainable_start": unix time (optional), "reference_cache": a directory (optional)}."""
    # Imported here, not at the top: the trial's Tune actor imports this module only to hand the
    # function to Ray Train, and diffusers, accelerate and the kernels cost it seconds per trial.
    from orchestrator.recipe import run_trial
    from orchestrator.recipe.base_outputs import reference_dir

    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory(prefix=f"sla-sweep-rank{rank}-") as scratch:
        workdir = Path(scratch).absolute()
        callback = RayReportCallback(config.get("trainable_start"), scratch=workdir)
        train = build_train_config(config["train"])
        # the SLA settings crossed into this process as a dict: read once, the object from here
        sla = None if config["sla"] is None else SLAConfig.from_dict(config["sla"])
        cache, encoded = config.get("reference_cache"), config.get("encoded")
        common = {
            "callback": callback,
            "reference_cache": None if cache is None else reference_dir(cache),  # a URI: a mirror
            "encoded": None if encoded is None else _encoded_manifest(encoded),
        }
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            run_trial(train, sla, Path(workdir), **common)
            return
        # A restarted worker (failure_config) or a resumed sweep continues from the last checkpoint.
        with checkpoint.as_directory() as resume_dir:
            if _report_if_final(Path(resume_dir), train.steps, callback, rank):
                return
            run_trial(train, sla, Path(workdir), resume_from=Path(resume_dir), **common)


def move_or_copy_checkpoint(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
    """Ray Train's checkpoint upload, as a move where it can be: a checkpoint in this worker's
    scratch folder going to storage on the same local filesystem has its files renamed into
    place (no second copy on disk, no seconds spent copying: a 1.3B full fine-tune's checkpoint
    is 17 GB); any other storage (a bucket, another filesystem) gets Ray's own copy. Ranks that
    write into the same checkpoint merge their files, as Ray's copy does."""
    storage = ray.train.get_context().get_storage()
    source = Path(checkpoint.path)
    destination = Path(storage.build_checkpoint_path_from_name(name))
    local = isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
    if not (local and isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem)):
        return storage.persist_current_checkpoint(checkpoint, name)
    storage._check_validation_file()  # as Ray's copy does: a node-local storage path is refused
    destination.mkdir(parents=True, exist_ok=True)
    if source.stat().st_dev != destination.stat().st_dev:
        return storage.persist_current_checkpoint(checkpoint, name)
    for here, _dirs, files in os.walk(source):
        target_dir = destination / Path(here).relative_to(source)
        target_dir.mkdir(parents=True, exist_ok=True)
        for file in files:
            os.replace(Path(here) / file, target_dir / file)
    return ray.train.Checkpoint(str(destination), filesystem=storage.storage_filesystem)


def _encoded_manifest(encoded: str) -> Path:
    """The manifest of a pipeline's encoded data: the driver's path, or for a bucket sweep a
    local copy of the shared entries (fetched once per node)."""
    if not is_uri(encoded):
        return Path(encoded)
    from orchestrator.data.shared_encoded import fetch_encoded  # imports torch: heavy

    return fetch_encoded(encoded)


def _report_if_final(directory: Path, steps: int, callback: RayReportCallback, rank: int) -> bool:
    """A checkpoint of the last step: the trial trained to the end, but its last report may never
    have reached Tune (the driver was stopped in between). Report it again (rank 0 hands the
    checkpoint) instead of training nothing and reporting nothing; True when it did."""
    from orchestrator.recipe.checkpoint import read_trial  # imports torch and accelerate: heavy

    trial = read_trial(directory)
    if trial["step"] < steps:
        return False
    metrics = dict(trial.get("metrics") or {})
    if rank == 0:
        callback.on_checkpoint(trial["step"], directory, metrics)
    else:
        callback.on_metrics(trial["step"], metrics)
    return True


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }

"""Disk full while a trial writes its second checkpoint: the run stops with the disk error, and
the first checkpoint stays intact (same bytes) and loadable; the half-written one has no
trial.json, so nothing takes it for a complete checkpoint.

Two ways to fill the disk: a real 3 MiB tmpfs as the trial's workdir (a tiny-model checkpoint
is about 1.8 MB; needs root and mount), and ENOSPC raised by torch.save at one precise point,
half-way through writing the second checkpoint's sla_attention.pt (after its accelerate state).
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from orchestrator.infer.model import load_checkpoint_model
from orchestrator.recipe import RecordingCallback, TrainConfig, run_trial
from orchestrator.recipe import checkpoint as checkpoint_module
from orchestrator.recipe.checkpoint import latest_checkpoint
from sla_kernel_glue import SLAConfig, read_sla_state

SLA = SLAConfig(topk=0.25, blkq=32, blkk=32)


def config(base_cache: Path) -> TrainConfig:
    return TrainConfig(model="tiny", data={"num_train": 32, "num_val": 2}, steps=2, batch_size=2,
                       log_every=1, checkpoint_every=1, sample_steps=2, base_steps=10,
                       warmup_steps=1, base_cache_dir=str(base_cache))  # fmt: skip


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def check_first_checkpoint_survives(workdir: Path, first_digest: dict[str, str]) -> None:
    first = workdir / "checkpoint_000001"
    assert digest(first) == first_digest, "the first checkpoint changed"
    assert latest_checkpoint(workdir) == first, "a half-written checkpoint counts as complete"
    assert not (workdir / "checkpoint_000002" / "trial.json").exists()
    assert not list(workdir.rglob("*.tmp")), "temporary files left behind"
    loaded = load_checkpoint_model(first, attention="sla", device=torch.device("cpu"))
    saved = read_sla_state(first / "sla_attention.pt")
    for path, layer in loaded.handle.layers.items():
        for key, tensor in saved["layers"][path]["state"].items():
            assert torch.equal(layer.state_dict()[key], tensor), (path, key)


class FirstCheckpointDigest(RecordingCallback):
    """Remembers checkpoint 1's bytes as the recipe reported it complete."""

    def on_checkpoint(self, step, directory, metrics):
        if step == 1:
            self.first = digest(Path(directory))
        super().on_checkpoint(step, directory, metrics)


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.strip()}); the ENOSPC test covers it"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_real_full_tmpfs_keeps_the_previous_checkpoint(small_tmpfs, base_cache):
    workdir = small_tmpfs / "trial"
    recorder = FirstCheckpointDigest()
    with pytest.raises((OSError, RuntimeError)) as info:
        run_trial(config(base_cache), SLA, workdir, callback=recorder)
    # torch's zip writer reports ENOSPC as "RuntimeError: [enforce fail ...] unexpected pos"
    assert shutil.disk_usage(small_tmpfs).free < 1_000_000, (
        f"failed, but not for space: {info.value!r}"
    )
    assert [s for s, _, _ in recorder.checkpoints] == [1]
    check_first_checkpoint_survives(workdir, recorder.first)


@pytest.mark.slow
def test_enospc_while_writing_sla_attention_keeps_the_previous_checkpoint(
    base_cache, tmp_path, monkeypatch
):
    real_save_state, real_torch_save = checkpoint_module.save_sla_state, torch.save

    def disk_fills_half_way(obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real_torch_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def save_sla_state(handle, directory, **kwargs):
        if Path(directory).name != "checkpoint_000002":
            return real_save_state(handle, directory, **kwargs)
        with monkeypatch.context() as m:
            m.setattr(torch, "save", disk_fills_half_way)
            return real_save_state(handle, directory, **kwargs)

    # where save_checkpoint looks it up (imported into orchestrator.recipe.checkpoint)
    monkeypatch.setattr(checkpoint_module, "save_sla_state", save_sla_state)
    recorder = FirstCheckpointDigest()
    with pytest.raises(OSError) as info:
        run_trial(config(base_cache), SLA, tmp_path / "trial", callback=recorder)
    assert info.value.errno == errno.ENOSPC
    second = tmp_path / "trial" / "checkpoint_000002"
    assert (second / "model.safetensors").is_file(), (
        "ENOSPC was meant to hit after the accelerate state"
    )
    assert not (second / "sla_attention.pt").exists()
    check_first_checkpoint_survives(tmp_path / "trial", recorder.first)

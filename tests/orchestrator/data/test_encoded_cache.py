"""The encoded-data cache gives no wrong data silently: the tiny real Wan pipeline encodes real MP4
clips, and the files under it are then changed as a user, a copy or a shared mount would."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch

import orchestrator.data.cache as cache_module
from orchestrator.data.cache import TensorCache
from orchestrator.data.encoded import (
    LATENTS,
    TEXTS,
    EncodedClips,
    EncodeError,
    EncodeSettings,
    encode_dataset,
    read_manifest,
)
from tests.media import write_test_clip
from tests.read_only import read_only

SETTINGS = EncodeSettings(frames=9, size=(32, 32), prompts=("a red square",))


def _encode(pipeline: Path, clips: Path, cache: Path, settings: EncodeSettings = SETTINGS):
    """(manifest path, manifest, the lines logged)."""
    lines: list[str] = []
    path = encode_dataset(
        pipeline, clips, settings, cache_root=cache, device=torch.device("cpu"), log=lines.append
    )
    return path, read_manifest(path), lines


def _computed(manifest: dict) -> tuple[int, int]:
    stats = manifest["stats"]
    return stats.get(LATENTS, {}).get("computed", 0), stats.get(TEXTS, {}).get("computed", 0)


def _same_size_clips(tmp: Path) -> tuple[bytes, bytes]:
    """Two different 9-frame MP4 clips of exactly one size (each ends in an MP4 'free' box)."""
    made = []
    for seed in (10, 11):
        write_test_clip(tmp / f"seed{seed}.mp4", frames=9, seed=seed)
        made.append((tmp / f"seed{seed}.mp4").read_bytes())
    size = max(map(len, made)) + 16

    def padded(data: bytes) -> bytes:
        gap = size - len(data)
        return data + struct.pack(">I", gap) + b"free" + bytes(gap - 8)

    return padded(made[0]), padded(made[1])


def test_a_clip_replaced_with_the_same_size_and_mtime_is_encoded_again(
    tiny_pipeline_dir, caption_folder, tmp_path, monkeypatch
):
    # The memo answers for files unchanged for 10 ms (2 s in use): the test needs no sleep of 2 s.
    monkeypatch.setattr(cache_module, "RACY_NS", 10_000_000, raising=False)
    clips = tmp_path / "clips"
    shutil.copytree(caption_folder, clips)
    first_bytes, second_bytes = _same_size_clips(tmp_path)
    target = clips / "clip_000.mp4"
    target.write_bytes(first_bytes)
    time.sleep(0.05)
    _, before, _ = _encode(tiny_pipeline_dir, clips, tmp_path / "cache")
    stat = target.stat()

    target.write_bytes(second_bytes)  # other pictures, the same size, its mtime put back
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    _, after, _ = _encode(tiny_pipeline_dir, clips, tmp_path / "cache")

    assert _computed(after)[0] == 1, "the replaced clip is encoded again, and only it"
    assert after["train"][0]["latent"] != before["train"][0]["latent"]
    assert [r["latent"] for r in after["train"][1:]] == [r["latent"] for r in before["train"][1:]]
    old, new = (EncodedClips(m, "train")[0][0] for m in (before, after))
    assert not torch.equal(old, new)


def test_an_entry_copied_over_another_is_detected_and_recomputed(
    tiny_pipeline_dir, caption_folder, tmp_path
):
    cache = tmp_path / "cache"
    _, manifest, _ = _encode(tiny_pipeline_dir, caption_folder, cache)
    store = TensorCache(cache)
    first, second = (row["latent"] for row in manifest["train"][:2])
    wanted = {k: v.clone() for k, v in store.load(LATENTS, second).items()}  # not the mmap
    shutil.copyfile(store.path(LATENTS, first), store.path(LATENTS, second))

    # A trial reading the cache refuses it rather than training on the other clip.
    with pytest.raises(FileNotFoundError, match="missing or damaged"):
        EncodedClips(manifest, "train")[1]
    shutil.copyfile(store.path(LATENTS, first), store.path(LATENTS, second))
    text = manifest["train"][0]["text"]
    shutil.copyfile(store.path(TEXTS, manifest["train"][1]["text"]), store.path(TEXTS, text))

    # The driver's next encode reports both and recomputes them, as it does a damaged entry.
    _, again, lines = _encode(tiny_pipeline_dir, caption_folder, cache)
    assert _computed(again) == (1, 1)
    assert again["stats"][LATENTS]["damaged"] == [str(store.path(LATENTS, second))]
    assert again["stats"][TEXTS]["damaged"] == [str(store.path(TEXTS, text))]
    assert any("copied or moved" in line for line in lines)
    for name, tensor in TensorCache(cache).load(LATENTS, second).items():
        assert torch.equal(tensor, wanted[name])


def test_only_what_the_models_load_is_in_the_keys(tiny_pipeline_dir, caption_folder, tmp_path):
    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_pipeline_dir, pipeline)
    cache = tmp_path / "cache"
    _, first, _ = _encode(pipeline, caption_folder, cache)

    # Beside and below what from_pretrained reads: a nested copy of the parts, an old version, notes.
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(pipeline / part, pipeline / "backup" / part)
        shutil.copytree(pipeline / part, tmp_path / "old")
        shutil.move(tmp_path / "old", pipeline / part / "old")
        (pipeline / part / "README.md").write_text("downloaded on Monday\n")
    _, second, _ = _encode(pipeline, caption_folder, cache)
    assert _computed(second) == (0, 0)
    assert second["train"] == first["train"]

    # What they do read is: a changed VAE config re-encodes the clips, a changed text encoder
    # config the texts.
    for part, edited in (("vae", (1, 0)), ("text_encoder", (0, 1))):
        config = pipeline / part / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "_edited": part}))
        _, third, _ = _encode(pipeline, caption_folder, cache)
        assert _computed(third) == (edited[0] * 6, edited[1] * 8)  # 6 clips; 6 captions, 2 prompts


def test_a_read_only_cache_holding_every_entry_is_used(
    tiny_pipeline_dir, caption_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLA_SWEEP_CACHE", str(tmp_path / "home"))
    cache = tmp_path / "cache"
    path, first, _ = _encode(tiny_pipeline_dir, caption_folder, cache)
    listing = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    with read_only(cache):
        again_path, again, lines = _encode(tiny_pipeline_dir, caption_folder, cache)
        assert again_path == path and again == first  # the manifest there, as it was
        assert not [line for line in lines if line.startswith("encoded")], lines

        # Another split of the same entries: its manifest goes to the user's own cache folder.
        other = EncodeSettings(frames=9, size=(32, 32), prompts=SETTINGS.prompts, num_val=2)
        other_path, split, lines = _encode(tiny_pipeline_dir, caption_folder, cache, other)
        assert other_path.parent == tmp_path / "home" / "manifests"
        assert _computed(split) == (0, 0) and len(split["val"]) == 2
        assert any(str(other_path) in line for line in lines)

        # An entry it lacks: one line naming the cache and what is missing, before any model loads.
        novel = EncodeSettings(frames=9, size=(32, 32), prompts=("a prompt never encoded",))
        with pytest.raises(EncodeError) as refused:
            _encode(tiny_pipeline_dir, caption_folder, cache, novel)
        line = str(refused.value)
        assert "\n" not in line and str(cache) in line and "read-only" in line
        assert "1 of 8 encoded texts" in line and "a prompt never encoded" in line
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == listing
    assert EncodedClips(split, "val")[1][0].shape == EncodedClips(first, "train")[0][0].shape


def test_sla_sweep_run_on_a_read_only_cache_lacking_an_entry_is_one_line(
    tiny_pipeline_dir, caption_folder, tmp_path, capsys, no_cluster
):
    import yaml

    from orchestrator.cli import main

    cache = tmp_path / "cache"
    _encode(tiny_pipeline_dir, caption_folder, cache)
    doc = {
        "name": "read_only_cache",
        "model": {"path": str(tiny_pipeline_dir)},
        "data": {"source": str(caption_folder), "frames": 9, "size": 32, "num_val": 1,
                 "cache_dir": str(cache)},
        "validation": {"prompts": ["a prompt never encoded"]},
        "train": {"steps": 1, "batch_size": 1},
        "sla": {"topk": {"grid": [0.5]}, "blkq": 16, "blkk": 16},
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc))
    capsys.readouterr()
    with read_only(cache):
        status = main(["run", str(tmp_path / "spec.yaml"),
                       "--set", f"storage.results_dir={tmp_path / 'runs'}"])  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, lines
    assert "read-only" in lines[0] and str(cache) in lines[0] and "encoded texts" in lines[0]
    assert not (tmp_path / "runs").exists()

"""The content-addressed tensor cache: keys, atomic entries, damage detected and recomputed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import orchestrator.data.cache as cache_module
from orchestrator.data.cache import FileDigests, TensorCache, canonical, key_of, tensor_digest


def _entry():
    g = torch.Generator().manual_seed(0)
    return {
        "mean": torch.randn(4, 3, 8, 8, generator=g),
        "std": torch.rand(4, 3, 8, 8, generator=g),
    }


def test_keys_depend_on_content_not_order():
    assert key_of({"a": 1, "b": [2, 3]}) == key_of({"b": [2, 3], "a": 1})
    assert key_of({"a": 1}) != key_of({"a": 2})


def test_entry_round_trips_and_counts_hits(tmp_path):
    cache = TensorCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return _entry()

    first = cache.get("latents", "ab" * 32, compute)
    second = TensorCache(tmp_path).get("latents", "ab" * 32, compute)
    assert len(calls) == 1
    for name in first:
        assert torch.equal(first[name], second[name])  # safetensors stores the bytes as they are
    assert cache.stats["latents"].computed == 1
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*")), "no temporary files left"


def test_an_entry_cut_in_half_is_detected_and_recomputed(tmp_path):
    lines: list[str] = []
    cache = TensorCache(tmp_path, log=lines.append)
    cache.save("latents", "cd" * 32, _entry())
    path = cache.path("latents", "cd" * 32)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert cache.load("latents", "cd" * 32) is None
    assert len(lines) == 1 and str(path) in lines[0] and "damaged" in lines[0]
    again = cache.get("latents", "cd" * 32, _entry)
    assert torch.equal(again["mean"], _entry()["mean"])
    assert cache.stats["latents"].damaged == [str(path)]


def test_an_entry_with_altered_bytes_is_detected(tmp_path):
    cache = TensorCache(tmp_path, log=lambda _line: None)
    cache.save("latents", "ef" * 32, _entry())
    path = cache.path("latents", "ef" * 32)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one byte of tensor data: the file still parses
    path.write_bytes(bytes(data))
    assert cache.load("latents", "ef" * 32) is None


def test_file_digests_are_memoised_and_follow_content(tmp_path):
    f = tmp_path / "clip.mp4"
    f.write_bytes(b"one")
    digests = FileDigests(tmp_path / "digests.json")
    first = digests.of(f)
    assert FileDigests(tmp_path / "digests.json").of(f) == first  # from the memo file
    f.write_bytes(b"two")
    os.utime(f, ns=(1, 1))  # a different mtime: the memo does not answer
    assert digests.of(f) != first


def test_an_entry_copied_over_another_is_not_loaded(tmp_path):
    lines: list[str] = []
    cache = TensorCache(tmp_path, log=lines.append)
    first, second = key_of({"clip": "first"}), key_of({"clip": "second"})
    cache.save("latents", first, _entry(), inputs={"clip": "first"})
    cache.save("latents", second, {"mean": torch.zeros(2)}, inputs={"clip": "second"})
    shutil.copyfile(cache.path("latents", first), cache.path("latents", second))
    assert cache.load("latents", second) is None
    assert "copied or moved" in lines[-1] and str(cache.path("latents", second)) in lines[-1]
    assert cache.get("latents", second, lambda: {"mean": torch.zeros(2)})["mean"].shape == (2,)

    other = tmp_path / "texts" / first[:2] / f"{first}.safetensors"  # the same key, another kind
    other.parent.mkdir(parents=True)
    shutil.copyfile(cache.path("latents", first), other)
    assert cache.load("texts", first) is None and "'latents'" in lines[-1]


def test_an_entry_whose_inputs_do_not_make_its_key_is_not_loaded(tmp_path):
    lines: list[str] = []
    cache = TensorCache(tmp_path, log=lines.append)
    key = key_of({"clip": "a"})
    tensors = {"mean": torch.ones(3)}
    metadata = {"kind": "latents", "key": key, "inputs": canonical({"clip": "b"}),
                "sha256": tensor_digest(tensors)}  # fmt: skip
    cache.path("latents", key).parent.mkdir(parents=True)
    save_file(tensors, cache.path("latents", key), metadata=metadata)
    assert cache.load("latents", key) is None and "do not hash to its key" in lines[-1]
    with pytest.raises(ValueError, match="not the key"):
        cache.save("latents", key, tensors, inputs={"clip": "b"})


def test_an_entry_of_the_previous_format_is_recomputed(tmp_path):
    """Entries written before entries named their key (only their digest in the metadata)."""
    cache = TensorCache(tmp_path, log=lambda _line: None)
    key = key_of({"clip": "a"})
    cache.path("latents", key).parent.mkdir(parents=True)
    old = {"mean": torch.ones(3)}
    save_file(old, cache.path("latents", key), metadata={"sha256": tensor_digest(old)})
    again = cache.get("latents", key, lambda: {"mean": torch.zeros(3)})
    assert torch.equal(again["mean"], torch.zeros(3)) and cache.stats["latents"].computed == 1


def _settled(monkeypatch):
    """Let the memo answer for `path` (files unchanged for 10 ms; 2 s in use)."""
    monkeypatch.setattr(cache_module, "RACY_NS", 10_000_000, raising=False)
    time.sleep(0.05)


def test_same_size_content_with_the_mtime_put_back_is_hashed_again(tmp_path, monkeypatch):
    f = tmp_path / "clip.mp4"
    f.write_bytes(b"one")
    _settled(monkeypatch)
    first = FileDigests(tmp_path / "digests.json").of(f)
    stat = f.stat()
    f.write_bytes(b"two")
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert FileDigests(tmp_path / "digests.json").of(f) == hashlib.sha256(b"two").hexdigest()
    assert first == hashlib.sha256(b"one").hexdigest()


def test_the_memo_answers_only_for_files_settled_when_hashed(tmp_path, monkeypatch):
    hashed: list[Path] = []
    real = cache_module._sha256_file
    monkeypatch.setattr(cache_module, "_sha256_file", lambda p: hashed.append(p) or real(p))
    fresh = tmp_path / "fresh.mp4"
    fresh.write_bytes(b"just written")
    FileDigests(tmp_path / "digests.json").of(fresh)
    FileDigests(tmp_path / "digests.json").of(fresh)
    assert len(hashed) == 2, "a file changed within RACY_NS of its hashing is not memoised"
    _settled(monkeypatch)
    FileDigests(tmp_path / "digests.json").of(fresh)
    FileDigests(tmp_path / "digests.json").of(fresh)
    assert len(hashed) == 3


def test_rehash_takes_every_digest_from_the_bytes(tmp_path, monkeypatch):
    """SLA_SWEEP_REHASH=1: the way out where ctime cannot be trusted (here the memo lies)."""
    f = tmp_path / "clip.mp4"
    f.write_bytes(b"one")
    _settled(monkeypatch)
    FileDigests(tmp_path / "digests.json").of(f)
    memo = json.loads((tmp_path / "digests.json").read_text())
    (record,) = memo["files"].values()
    record[-1] = "0" * 64
    (tmp_path / "digests.json").write_text(json.dumps(memo))
    assert FileDigests(tmp_path / "digests.json").of(f) == "0" * 64
    monkeypatch.setenv("SLA_SWEEP_REHASH", "1")
    assert FileDigests(tmp_path / "digests.json").of(f) == hashlib.sha256(b"one").hexdigest()
    monkeypatch.delenv("SLA_SWEEP_REHASH")
    assert FileDigests(tmp_path / "digests.json").of(f) == hashlib.sha256(b"one").hexdigest()


def test_a_memo_of_the_previous_format_is_not_trusted(tmp_path):
    f = tmp_path / "clip.mp4"
    f.write_bytes(b"one")
    st = f.stat()
    token = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"  # (path, size, mtime), as it was
    (tmp_path / "digests.json").write_text(json.dumps({token: "0" * 64}))
    assert FileDigests(tmp_path / "digests.json").of(f) == hashlib.sha256(b"one").hexdigest()

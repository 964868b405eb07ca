"""The content-addressed tensor cache: keys, atomic entries, damage detected and recomputed."""

from __future__ import annotations

import os

import torch

from orchestrator.data.cache import FileDigests, TensorCache, key_of


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

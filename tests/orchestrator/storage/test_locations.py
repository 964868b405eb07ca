"""orchestrator.storage against a real S3-compatible server (moto's, on 127.0.0.1): files and
trees round trip, a remote tree is fetched once into the content-keyed cache, bad locations are
refused with one line naming the value, and a bucket as results_dir needs a tracking store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.spec import SpecError, load_spec
from orchestrator.storage import (
    StorageError,
    check_reachable,
    download_dir,
    local_copy,
    open_location,
    upload_dir,
)
from tests.paths import REPO
from tests.s3_server import s3  # noqa: F401 (the module's S3 server fixture)

SMOKE = REPO / "experiments" / "smoke.yaml"


def test_text_json_and_trees_round_trip(s3, tmp_path):  # noqa: F811
    loc = open_location(s3.uri("unit/round"))
    assert loc.remote and not loc.exists()
    loc.join("a.json").write_json({"x": [1, 2]})
    loc.join("sub/b.txt").write_text("héllo")
    assert loc.join("a.json").read_json() == {"x": [1, 2]}
    assert loc.join("sub/b.txt").read_text() == "héllo"
    assert sorted(s3.keys("unit/round/")) == ["unit/round/a.json", "unit/round/sub/b.txt"]

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "w.bin").write_bytes(os.urandom(3 << 20))
    (src / "top.txt").write_text("1")
    assert upload_dir(src, loc.join("tree")) == 2
    assert download_dir(loc.join("tree"), tmp_path / "back") == 2
    assert (tmp_path / "back" / "d" / "w.bin").read_bytes() == (src / "d" / "w.bin").read_bytes()


def test_a_sweeps_push_leaves_host_only_files_out(s3, tmp_path):  # noqa: F811
    """The driver's files reach the bucket; its lock and the MLflow spool (hard links to this
    host's files, for artifacts not sent yet) do not, nor do Ray's own directories."""
    from orchestrator.storage.sweep_place import SweepPlace
    from orchestrator.tracking.mlflow_buffer import JOURNAL, SPOOL

    local = tmp_path / "sweep"
    for rel in ("sweep.json", "report/report.md", JOURNAL, "driver.lock", f"{SPOOL}/1-a/x.png",
                "train/t0/checkpoint/model.safetensors"):  # fmt: skip
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_text(rel)
    SweepPlace(local, open_location(s3.uri("unit/push"))).push(strict=True)
    pushed = sorted(k.removeprefix("unit/push/") for k in s3.keys("unit/push/"))
    assert pushed == sorted(["sweep.json", "report/report.md", JOURNAL])


def test_local_copy_is_fetched_once_and_keyed_by_content(s3, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLA_SWEEP_CACHE", str(tmp_path / "cache"))
    loc = open_location(s3.uri("unit/ckpt"))
    loc.join("trial.json").write_json({"step": 2})
    fetched: list[str] = []
    first = local_copy(loc, log=fetched.append)
    assert json.loads((first / "trial.json").read_text()) == {"step": 2}
    again = local_copy(loc, log=fetched.append)
    assert again == first and len(fetched) == 1, fetched  # the second call fetched nothing
    loc.join("trial.json").write_json({"step": 40})  # changed content (and size): a new copy
    changed = local_copy(loc, log=fetched.append)
    assert changed != first and json.loads((changed / "trial.json").read_text())["step"] == 40
    assert str(changed).startswith(str(tmp_path / "cache" / "remote"))
    with pytest.raises(StorageError, match="holds no files"):
        local_copy(open_location(s3.uri("unit/nothing-here")))


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("ftp://host/dir", "has scheme ftp://; allowed: a directory path, file://, s3://"),
        ("s3://", "names no bucket"),
        ("s3://AKIDSECRET:hunter2@bucket/x", "carries credentials in the URI"),
        ("s3://bucket/a/../b", "'.' or '..'"),
    ],
)
def test_bad_locations_are_one_line_naming_the_value(value, says):
    with pytest.raises(StorageError) as err:
        open_location(value)
    text = str(err.value)
    assert says in text and "\n" not in text
    assert "hunter2" not in text  # a credential is never echoed
    assert text.startswith("storage.results_dir (")


def test_missing_bucket_is_one_line(s3):  # noqa: F811
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket' does not exist"):
        check_reachable(open_location("s3://no-such-bucket/x"))


def test_spec_with_a_bucket_needs_a_tracking_store(s3, tmp_path):  # noqa: F811
    uri = s3.uri("unit/runs")
    with pytest.raises(SpecError) as err:
        load_spec(SMOKE, [f"storage.results_dir={uri}"], cwd=tmp_path)
    assert "storage.tracking_uri must be given" in str(err.value) and uri in str(err.value)
    spec = load_spec(
        SMOKE,
        [f"storage.results_dir={uri}/", "storage.tracking_uri=http://127.0.0.1:5000"],
        cwd=tmp_path,
    )
    assert spec.storage.remote and spec.storage.results_dir == uri
    with pytest.raises(SpecError, match="carries credentials") as err:
        load_spec(SMOKE, ["storage.results_dir=s3://K:hunter2@b/x"], cwd=tmp_path)
    assert "hunter2" not in str(err.value)
    local = load_spec(SMOKE, ["storage.results_dir=out"], cwd=tmp_path)
    assert not local.storage.remote and local.storage.results_dir == (tmp_path / "out").resolve()


@pytest.mark.parametrize("command", ["best", "resume", "infer", "compare", "ui"])
def test_a_uri_without_a_sweep_is_one_line(s3, command, capsys):  # noqa: F811
    from orchestrator.cli import main as cli_main

    target = s3.uri("unit/no-sweep-here")
    assert cli_main([command, target]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and target in err, err


@pytest.mark.slow
def test_base_model_is_pretrained_once_and_fetched_by_another_node(s3, tmp_path):  # noqa: F811
    """Two caches stand for two nodes: the first pre-trains and uploads, the second fetches."""
    import dataclasses

    import torch

    from orchestrator.recipe.base_model import load_base_model
    from orchestrator.recipe.config import resolve_mixed_precision
    from orchestrator.spec.recipe import build_train_config

    train = build_train_config(load_spec(SMOKE, [], cwd=tmp_path).train)
    mixed = resolve_mixed_precision(train.mixed_precision, cuda=False)
    store = s3.uri("unit/bases")
    said: dict[str, list[str]] = {"a": [], "b": []}
    models = {}
    for node in ("a", "b"):
        on_node = dataclasses.replace(train, base_cache_dir=str(tmp_path / node))
        models[node], base_id = load_base_model(on_node, device=torch.device("cpu"),
                                                mixed_precision=mixed, store=store,
                                                log=said[node].append)  # fmt: skip
    assert any("pre-training base model" in line for line in said["a"]), said
    assert any("uploaded base model" in line for line in said["a"]), said
    assert not any("pre-training" in line for line in said["b"]), said["b"]
    assert any("fetched base model" in line for line in said["b"]), said["b"]
    assert f"unit/bases/{base_id}/config.json" in s3.keys("unit/bases/")
    a, b = models["a"].state_dict(), models["b"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_encoded_data_is_shared_through_the_bucket(s3, tmp_path, monkeypatch):  # noqa: F811
    """A pipeline's encoded clips and captions, uploaded once with exactly the entries their
    manifest names, read back on another node (another cache root) as the same tensors."""
    import torch

    from orchestrator.data.cache import TensorCache
    from orchestrator.data.encoded import LATENTS, CaptionTable, EncodedClips, read_manifest
    from orchestrator.data.shared_encoded import entries, fetch_encoded, share_encoded
    from orchestrator.recipe import TrainConfig
    from orchestrator.recipe.pipeline_data import prepare_encoded
    from tests.pipelines import tiny_pipeline

    config = TrainConfig.from_dict({
        "model": str(tiny_pipeline(tmp_path / "pipelines")), "steps": 1, "batch_size": 2,
        "data": {"source": "digits", "frames": 9, "size": 32, "num_train": 4, "num_val": 2,
                 "cache_dir": str(tmp_path / "cache")},
        "validation": {"prompts": ["a handwritten digit seven"], "steps": 2, "seeds": [0]},
    })  # fmt: skip
    manifest_path = prepare_encoded(config)
    manifest = read_manifest(manifest_path)
    TensorCache(Path(manifest["cache"])).save(LATENTS, "f" * 64, {"x": torch.ones(1)})  # not named
    store = open_location(s3.uri("unit/encoded"))
    uri = share_encoded(manifest_path, store)
    named = entries(manifest)
    uploaded = [k for k in s3.keys("unit/encoded/") if "/cache/" in k]
    assert len(uploaded) == len(named) and not any("f" * 64 in k for k in uploaded)
    assert share_encoded(manifest_path, store) == uri  # a set is uploaded once
    # the MLflow dataset input of a bucket sweep names the same data as the manifest's
    from orchestrator.tracking.datasets import _encoded

    assert _encoded(uri)[2] == _encoded(str(manifest_path))[2]

    monkeypatch.setenv("SLA_SWEEP_CACHE", str(tmp_path / "other_node"))
    local = fetch_encoded(uri)
    assert local.is_relative_to(tmp_path / "other_node") and fetch_encoded(uri) == local
    there = read_manifest(local)
    assert Path(there["cache"]).is_relative_to(tmp_path / "other_node")
    for split in ("train", "val"):
        a, b = EncodedClips(manifest, split), EncodedClips(there, split)
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            (latent_a, caption_a), (latent_b, caption_b) = a[i], b[i]
            assert torch.equal(latent_a, latent_b) and caption_a == caption_b
        texts_a, texts_b = (
            CaptionTable.of_split(manifest, split),
            CaptionTable.of_split(there, split),
        )
        every = list(range(len(texts_a)))
        assert torch.equal(texts_a[every], texts_b[every])

"""The experiment YAML -> ExperimentSpec boundary: shipped files load, bad files fail early."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.spec import SpecError, load_spec
from tests.paths import REPO

SHIPPED = sorted((REPO / "experiments").glob("*.yaml"))

VALID = {
    "name": "t",
    "model": "tiny",
    "train": {"steps": 2},
    "sla": {"topk": {"grid": [0.1, 0.2]}},
}


def write(tmp_path: Path, doc: dict | str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def with_(**changes) -> dict:
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items()}
    doc.update(changes)
    return doc


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_yaml_loads(path, tmp_path, request):
    raw = yaml.safe_load(path.read_text())
    sets = []
    if isinstance(raw.get("model"), dict) and "/path/to/" in str(raw["model"].get("path")):
        # a study of the user's pipeline and clips: as is, one clear error naming the path
        with pytest.raises(SpecError, match=r"model \('/path/to/.*the path does not exist"):
            load_spec(path, cwd=tmp_path, gpus_available=1)
        pipeline = request.getfixturevalue("tiny_pipeline_dir")
        clips = request.getfixturevalue("caption_folder")
        sets = [f"model.path={pipeline}", f"data.source={clips}"]
    gpus = (raw.get("resources") or {}).get("gpus_per_worker", 0)
    gpu_only = gpus > 0  # h200.yaml, h200-study.yaml
    if gpu_only:  # on a machine without GPUs it is one clear error, before anything starts
        with pytest.raises(
            SpecError,
            match=rf"resources.gpus_per_worker \({gpus:g}\) asks for GPUs but this machine has none",
        ):
            load_spec(path, sets, cwd=tmp_path, gpus_available=0)
    spec = load_spec(path, sets, cwd=tmp_path, gpus_available=1 if gpu_only else 0)
    assert spec.name == path.stem
    assert spec.control is True
    assert spec.varying, "a shipped sweep varies at least one SLA field"
    assert spec.storage.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'sla_runs' / 'mlflow.db'}"
    assert not (tmp_path / "sla_runs").exists(), "loading a spec writes nothing"
    for profile in raw.get("profiles", {}):  # each profile is one setting away and valid
        scaled = load_spec(path, [f"profile={profile}"], cwd=tmp_path, gpus_available=1)
        assert scaled.resources.gpus_per_worker > 0
        assert scaled.train["model"] != spec.train["model"]


def test_topk_yaml_is_the_default_study(tmp_path):
    spec = load_spec(REPO / "experiments" / "topk.yaml", cwd=tmp_path, gpus_available=0)
    (topk,) = spec.varying
    assert (topk.field, topk.kind, topk.values) == ("topk", "grid", (0.05, 0.1, 0.2, 0.5))
    assert spec.train["model"] == "tiny" and spec.resources.gpus_per_worker == 0


def test_overrides_set_dotted_keys_with_yaml_values(tmp_path):
    path = write(tmp_path, VALID)
    spec = load_spec(
        path, ["train.steps=7", "sla.topk={grid: [0.3, 0.4, 0.6]}", "storage.results_dir=out"],
        cwd=tmp_path, gpus_available=0,
    )  # fmt: skip
    assert spec.train["steps"] == 7
    assert spec.varying[0].values == (0.3, 0.4, 0.6)
    assert spec.storage.results_dir == (tmp_path / "out").resolve()


CASES = {
    "wrong type": (with_(train={"steps": "ten"}), ["steps ('ten') must be a positive integer"]),
    "unknown top key": (with_(epochs=3), ["unknown key epochs; allowed: name,"]),
    "unknown sla key": (with_(sla={"topkk": 0.1}), ["unknown key sla.topkk; allowed: topk, blkq"]),
    "unknown train key": (with_(train={"stpes": 3}), ["unknown key train.stpes; allowed: steps"]),
    "empty search space": (with_(sla={}), ["sla: empty search space"]),
    "empty grid": (with_(sla={"topk": {"grid": []}}), ["sla.topk.grid must be a non-empty list"]),
    "topk out of range": (with_(sla={"topk": {"grid": [0.1, 1.5]}}), ["sla.topk: topk (1.5) must be a number in (0, 1]"]),
    "gpus without any": (with_(resources={"gpus_per_worker": 1}),
                         ["resources.gpus_per_worker (1) asks for GPUs but this machine has none"]),
    "bad algorithm": (with_(search={"algorithm": "bayes"}), ["search.algorithm ('bayes') must be one of grid, random, optuna"]),
    "choice under grid": (with_(sla={"topk": {"choice": [0.1, 0.2]}}), ["sla.topk: choice needs search.algorithm random or optuna"]),
    "bad metric": (with_(metric="val/accuracy"), ["metric ('val/accuracy') must be one of train/loss, val/loss"]),
    "bad scheduler": (with_(scheduler={"name": "hyperband"}), ["scheduler.name ('hyperband') must be one of none, asha"]),
    "bad preset": (with_(model={"preset": "huge"}), ["model.preset ('huge') must be one of tiny"]),
    "bad range": (with_(sla={"topk": {"uniform": [0.5, 0.1]}}, search={"algorithm": "random"}),
                  ["sla.topk.uniform ([0.5, 0.1]) must be [lo, hi] numbers with lo < hi"]),
    "yaml syntax": ("name: t\nsla: {topk: [0.1\n", ["not valid YAML at line"]),
    "not a mapping": ("- just\n- a list\n", ["top level must be a mapping"]),
    "missing name": ({"sla": {"topk": 0.1}}, ["name (None) is required"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_file_fails_before_anything_starts(case, tmp_path, monkeypatch):
    doc, expected = CASES[case]
    path = write(tmp_path, doc)
    monkeypatch.chdir(tmp_path)
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    with pytest.raises(SpecError) as info:
        load_spec(path, gpus_available=0)
    message = str(info.value)
    assert "\n" not in message, "one line"
    for fragment in expected:
        assert fragment in message
    assert message.startswith(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"], "no partial files"
    # The session's Ray cluster may be up from earlier tests; validation must not start one.
    # (test_fault_bad_input checks the same through the CLI in a fresh process.)
    if "ray" in sys.modules and not ray_was_up:
        assert not sys.modules["ray"].is_initialized()


def test_all_errors_are_reported_at_once(tmp_path):
    doc = with_(
        train={"steps": 0, "lr": -1},
        sla={"topk": {"grid": [2.0]}, "feature_map": "tanh"},
        resources={"workers_per_trial": 0},
        mode="lowest",
    )
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, doc), cwd=tmp_path, gpus_available=0)
    errors = info.value.errors
    joined = " | ".join(errors)
    for fragment in ("topk (2.0)", "feature_map ('tanh') must be one of softmax, elu, relu",
                     "resources.workers_per_trial (0)", "mode ('lowest') must be one of min, max"):  # fmt: skip
        assert fragment in joined
    assert len(errors) >= 4


def test_joint_sla_constraints_are_checked_per_combination(tmp_path):
    doc = with_(sla={"topk": {"grid": [0.5, 0.9]}, "kl": 0.3})
    with pytest.raises(SpecError, match=r"topk \+ kl \(0.9 \+ 0.3\) must not exceed 1"):
        load_spec(write(tmp_path, doc), cwd=tmp_path, gpus_available=0)


def test_relative_paths_become_absolute(tmp_path):
    doc = with_(storage={"results_dir": "runs", "tracking_uri": "sqlite:///db/m.db"},
                train={"steps": 2, "base_cache_dir": "cache"})  # fmt: skip
    spec = load_spec(write(tmp_path, doc), cwd=tmp_path, gpus_available=0)
    assert spec.storage.results_dir == tmp_path.resolve() / "runs"
    assert spec.storage.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'db' / 'm.db'}"
    assert spec.train["base_cache_dir"] == str(tmp_path.resolve() / "cache")

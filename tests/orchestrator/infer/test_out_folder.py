"""`sla-sweep infer --out DIR` touches and uploads only what it wrote (orchestrator.infer.outputs).

Both paths, on real checkpoints trained here without Ray: a preset trial (PNG/GIF samples) and
a pipeline trial (MP4s through WanPipeline). A folder infer did not write is refused when not
empty, with every file in it unchanged; a rerun into its own folder replaces its earlier outputs
and nothing else; a file there it did not write is never overwritten; only the files of the run
reach the trial's MLflow run (a real sqlite store, the sweep directory around the checkpoint
written as the driver writes it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main as cli_main
from orchestrator.infer.outputs import MANIFEST
from orchestrator.recipe import TrainConfig, run_trial
from orchestrator.tracking.mlflow_log import artifact_location
from tests.orchestrator.infer.test_pipeline_infer import PROMPT, SLA, train_pipeline_trial

pytestmark = pytest.mark.slow  # every test reads a trained trial's checkpoint

KINDS = ("preset", "pipeline")
ARGS = {"preset": ["--num-samples", "2"], "pipeline": ["--prompt", PROMPT, "--steps", "1"]}
# a file of the user's whose name looks like an output of each path
LOOKALIKE = {"preset": "clip00_class0.png", "pipeline": "00_a-handwritten-digit-seven_seed0.mp4"}
ARTIFACTS = {"preset": "samples", "pipeline": "videos"}


@pytest.fixture(scope="module")
def checkpoints(tiny_pipeline_dir, tmp_path_factory) -> dict[str, Path]:
    """A real SLA checkpoint of each kind (never modified)."""
    tmp = tmp_path_factory.mktemp("out_folder_trials")
    train = TrainConfig(model="tiny", data={"num_train": 4, "num_val": 2}, steps=1, batch_size=2,
                        log_every=1, sample_steps=1, base_steps=1, warmup_steps=1,
                        base_cache_dir=str(tmp / "base"))  # fmt: skip
    run_trial(train, SLA, tmp / "preset")
    pipeline = train_pipeline_trial(tiny_pipeline_dir, tmp / "pipeline")
    return {"preset": tmp / "preset" / "checkpoint_000001", "pipeline": pipeline}


def infer(target: Path, out: Path, kind: str, *args: str) -> int:
    return cli_main(["infer", str(target), "--out", str(out), "--device", "cpu", "--no-mlflow",
                     *ARGS[kind], *args])  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def user_files(folder: Path, kind: str) -> None:
    """What a user keeps in a folder: notes, a file named like an output, a private subfolder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine\n")
    (folder / LOOKALIKE[kind]).write_bytes(b"my own file, not a sample")
    (folder / "private").mkdir()
    (folder / "private" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")


def listed(out: Path) -> list[str]:
    return json.loads((out / MANIFEST).read_text())["files"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_empty_folder_it_did_not_write_is_refused_untouched(kind, checkpoints, tmp_path,
                                                                  capsys):  # fmt: skip
    out = tmp_path / "home"
    user_files(out, kind)
    before = snapshot(out)
    assert infer(checkpoints[kind], out, kind) == 2
    err = one_error_line(capsys)
    assert f"--out ({out}) is not empty" in err and MANIFEST in err, err
    assert snapshot(out) == before  # nothing removed, nothing written


@pytest.mark.parametrize("kind", KINDS)
def test_a_rerun_replaces_its_own_outputs_only(kind, checkpoints, tmp_path, capsys):
    out = tmp_path / "samples"
    assert infer(checkpoints[kind], out, kind, "--seed", "0") == 0
    first = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    (out / first[0]).unlink()  # the user removed one of its outputs; it is not an error
    mine = tmp_path / "mine"
    user_files(mine, kind)  # the user's files put into the folder after the first run
    (mine / LOOKALIKE[kind]).rename(mine / LOOKALIKE[kind].replace("00", "07"))
    for path in mine.iterdir():
        shutil.move(path, out / path.name)
    kept = {k: v for k, v in snapshot(out).items() if k not in first and k != MANIFEST}
    assert len(kept) == 3

    assert infer(checkpoints[kind], out, kind, "--seed", "1") == 0, capsys.readouterr().err
    assert {k: v for k, v in snapshot(out).items() if k in kept} == kept  # the user's unchanged
    second = listed(out)
    assert all((out / name).is_file() for name in second)
    assert not [n for n in first if n not in second and (out / n).exists()]  # earlier ones gone
    assert set(snapshot(out)) == {*second, MANIFEST, *kept}


@pytest.mark.parametrize("kind", KINDS)
def test_a_rerun_never_overwrites_a_file_it_did_not_write(kind, checkpoints, tmp_path, capsys):
    out = tmp_path / "samples"
    assert infer(checkpoints[kind], out, kind) == 0
    capsys.readouterr()  # (the first run's progress bars)
    # a name the rerun writes that the first run did not: a third clip, or another seed
    rerun, stranger = {"preset": (["--num-samples", "3"], "clip02_class2.gif"),
                       "pipeline": (["--seed", "3"], LOOKALIKE[kind].replace("seed0", "seed3"))}[kind]  # fmt: skip
    assert not (out / stranger).exists()
    (out / stranger).write_text("the user's, under a name the rerun writes")
    before = snapshot(out)
    assert infer(checkpoints[kind], out, kind, *rerun) == 2
    err = one_error_line(capsys)
    assert f"{out / stranger} exists and sla-sweep infer did not write it" in err, err
    assert snapshot(out) == before  # refused before removing or writing anything


def sweep_around(checkpoint: Path, tmp: Path) -> tuple[Path, MlflowClient, str]:
    """A sweep directory holding `checkpoint` as trial t1, its run in a real sqlite store."""
    sweep = tmp / "sweep"
    shutil.copytree(checkpoint, sweep / "trial_t1" / checkpoint.name)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("out", artifact_location=artifact_location(uri))
    run_id = client.create_run(experiment).info.run_id
    (sweep / "sweep.json").write_text(json.dumps({"tracking_uri": uri}))
    row = {"trial_id": "t1", "sla": SLA.to_dict(), "checkpoint": str(sweep / "trial_t1"),
           "run_id": run_id}  # fmt: skip
    (sweep / "trials.json").write_text(json.dumps([row]))
    return sweep, client, run_id


def artifacts(client: MlflowClient, run_id: str, path: str) -> set[str]:
    """Every artifact under `path`, at any depth."""
    found = set()
    for a in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_files_it_wrote_go_to_mlflow(kind, checkpoints, tmp_path, capsys):
    sweep, client, run_id = sweep_around(checkpoints[kind], tmp_path)
    out = tmp_path / "samples"
    argv = ["infer", str(sweep), "--trial", "t1", "--out", str(out), "--device", "cpu",
            *ARGS[kind]]  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    user_files(tmp_path / "mine", kind)
    (tmp_path / "mine" / LOOKALIKE[kind]).unlink()  # (the rerun writes that name)
    for path in (tmp_path / "mine").iterdir():
        shutil.move(path, out / path.name)
    assert cli_main(argv) == 0, capsys.readouterr().err  # the same run again: its own folder
    where = f"{ARTIFACTS[kind]}/sla-seed0"
    logged = artifacts(client, run_id, where)
    assert not [a for a in logged if "notes" in a or "private" in a], logged  # the user's stay
    assert logged == {f"{where}/{name}" for name in listed(out)}

"""A checkpoint's model weights whole or sharded (orchestrator.recipe.checkpoint_weights), and a
checkpoint resumed with the other train.parallel refused in one line.

The sharded folders here are written by torch.distributed.checkpoint in one process (no_dist), in
the layout a sharded trial writes: {"model": ..., "optim": ...}; tests/orchestrator/recipe/
test_parallel.py and tests/orchestrator/sweep/test_fsdp_sweep.py read real 2-process ones.
"""

import json
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from safetensors.torch import save_file

from orchestrator.recipe.checkpoint import load_checkpoint
from orchestrator.recipe.checkpoint_weights import CheckpointWeightsError, model_state
from orchestrator.recipe.parallel import ShardedState


def model_tensors():
    g = torch.Generator().manual_seed(0)
    return {"blocks.0.attn1.to_q.weight": torch.randn(4, 4, generator=g),
            "blocks.0.attn1.sla.proj_l.bias": torch.randn(4, generator=g)}  # fmt: skip


def write_sharded(directory, model):
    optim = {"state": {"blocks.0.attn1.to_q.weight": {"step": torch.tensor(3.0)}},
             "param_groups": [{"lr": 1e-4, "params": ["blocks.0.attn1.to_q.weight"]}]}  # fmt: skip
    dcp.save(
        {"model": model, "optim": optim}, checkpoint_id=str(directory / "sharded"), no_dist=True
    )


def test_sharded_model_state_is_the_model_part_whole(tmp_path):
    model = model_tensors()
    write_sharded(tmp_path, model)
    state = model_state(tmp_path)
    assert state.keys() == model.keys()  # the optimizer's entries are not read
    assert all(torch.equal(state[k], model[k]) for k in model)


def test_whole_model_state_reads_model_safetensors(tmp_path):
    model = model_tensors()
    save_file(model, str(tmp_path / "model.safetensors"))
    assert all(torch.equal(model_state(tmp_path)[k], v) for k, v in model.items())


def test_no_weights_named_in_one_line(tmp_path):
    with pytest.raises(CheckpointWeightsError) as caught:
        model_state(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: no model weights (model.safetensors, pytorch_model.bin or sharded/)"
    )


# A pickle that calls builtins.print when loaded, written out by hand: pickling the print
# object itself would name whatever replaced builtins.print in this process (Ray's tqdm
# patches it to ray.experimental.tqdm_ray.safe_print once a test has run a Ray job here).
PLANTED = b"cbuiltins\nprint\n(S'planted code ran'\ntR."


def test_index_with_foreign_code_is_refused_unrun(tmp_path, capsys):
    write_sharded(tmp_path, model_tensors())
    (tmp_path / "sharded" / ".metadata").write_bytes(PLANTED)
    with pytest.raises(
        CheckpointWeightsError, match=r"builtins\.print is not part of a checkpoint index"
    ):
        model_state(tmp_path)
    assert "planted" not in capsys.readouterr().out


def test_index_naming_a_file_outside_its_folder_is_refused(tmp_path):
    write_sharded(tmp_path, model_tensors())
    index = tmp_path / "sharded" / ".metadata"
    metadata = pickle.loads(index.read_bytes())
    for info in metadata.storage_data.values():
        info.relative_path = "../../elsewhere.distcp"
    index.write_bytes(pickle.dumps(metadata))
    with pytest.raises(
        CheckpointWeightsError, match=r"names '\.\./\.\./elsewhere\.distcp', not a file of"
    ):
        model_state(tmp_path)


def checkpoint_dir(tmp_path, *, sharded):
    directory = tmp_path / "checkpoint_000002"
    directory.mkdir()
    (directory / "trial.json").write_text(json.dumps({"step": 2, "sla": None, "base_model": "b"}))
    if sharded:
        write_sharded(directory, model_tensors())
    else:
        save_file(model_tensors(), str(directory / "model.safetensors"))
    return directory


def test_sharded_checkpoint_resumed_by_a_whole_model_run_is_refused_in_one_line(tmp_path):
    directory = checkpoint_dir(tmp_path, sharded=True)
    with pytest.raises(ValueError) as caught:
        load_checkpoint(Accelerator(cpu=True), None, directory, sla=None, base_model="b")
    assert str(caught.value) == (
        f"cannot resume from {directory}: it is a sharded checkpoint (train.parallel fsdp: model "
        "and optimizer in sharded/) and this run holds the whole model (train.parallel ddp, or "
        "fsdp on one worker); resume it with train.parallel fsdp on as many workers"
    )


def test_whole_checkpoint_resumed_by_a_sharded_run_is_refused_in_one_line(tmp_path):
    directory = checkpoint_dir(tmp_path, sharded=False)
    sharded = ShardedState(torch.nn.Linear(4, 4), None)
    with pytest.raises(ValueError) as caught:
        load_checkpoint(Accelerator(cpu=True), None, directory, sla=None, base_model="b",
                        sharded=sharded)  # fmt: skip
    assert str(caught.value) == (
        f"cannot resume from {directory}: it is a whole-model checkpoint (train.parallel ddp, or "
        "fsdp on one worker) and this run shards its model (train.parallel fsdp); resume it "
        "with train.parallel ddp"
    )

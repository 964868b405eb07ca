"""A checkpoint's transformer weights, whole, whether the trial replicated or sharded its model.

A replicated (ddp) trial's accelerate state holds them whole: model.safetensors, or
pytorch_model.bin (loaded weights-only). A sharded (fsdp) trial's are in sharded/, written by
torch.distributed.checkpoint (one .distcp file per worker and a .metadata index): they are joined
here in one process, without a process group, reading only the model's entries (not the
optimizer's, which is twice the model under AdamW).

torch.distributed.checkpoint unpickles .metadata with plain pickle and the non-tensor entries it
reads with torch.load(weights_only=False). Here .metadata is read by an unpickler that builds only
the checkpoint index's own types, every file it names must be a plain file of sharded/, tensors
load weights-only, and so do plain values (ShardReader, SafeLoadPlanner; resume uses them too).
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader, Metadata
from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner uses
from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata

SHARDED_DIR = "sharded"  # a sharded checkpoint's torch.distributed.checkpoint files
MODEL_KEY = "model"  # the model's part of sharded/ (beside the optimizer's "optim")
WHOLE_FILES = ("model.safetensors", "pytorch_model.bin")  # accelerate's first model

# What .metadata may build: torch.distributed.checkpoint's index types and the torch values in them.
_INDEX_TYPES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a layout by its name (torch.strided)
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip
_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


class CheckpointWeightsError(ValueError):
    """A checkpoint's model weights are missing or not readable as they must be."""


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _INDEX_TYPES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class ShardReader(FileSystemReader):
    """FileSystemReader whose .metadata builds only index types and names only files of its
    own folder."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            with open(path, "rb") as stream:
                metadata = _IndexUnpickler(stream).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
            raise CheckpointWeightsError(f"{path}: not a checkpoint index ({exc})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointWeightsError(f"{path}: not a checkpoint index")
        for info in (metadata.storage_data or {}).values():
            name = getattr(info, "relative_path", None)
            if not isinstance(name, str) or not _FILE_NAME.match(name) or name in (".", ".."):
                raise CheckpointWeightsError(f"{path} names {name!r}, not a file of {path.parent}")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # as FileSystemReader does
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor values (an optimizer's hyperparameters) load
    weights-only, as plain values."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def model_state(directory: Path) -> dict[str, torch.Tensor]:
    """The whole model state of a checkpoint directory, {name: tensor} on the CPU: accelerate's
    model.safetensors or pytorch_model.bin (a replicated trial's), else sharded/ joined (a sharded
    trial's). A CheckpointWeightsError names the directory when it holds none of them."""
    directory = Path(directory)
    safetensors_file, bin_file = (directory / name for name in WHOLE_FILES)
    if safetensors_file.is_file():
        return load_file(str(safetensors_file))
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    if (directory / SHARDED_DIR).is_dir():
        return sharded_model_state(directory / SHARDED_DIR)
    raise CheckpointWeightsError(
        f"{directory}: no model weights ({', '.join(WHOLE_FILES)} or {SHARDED_DIR}/)"
    )


def sharded_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The model's entries of a torch.distributed.checkpoint folder, joined into whole tensors
    in this process (no process group)."""
    reader = ShardReader(str(path))
    metadata = reader.read_metadata()
    prefix = MODEL_KEY + "."
    state: dict[str, torch.Tensor] = {}
    for key, entry in metadata.state_dict_metadata.items():
        if not key.startswith(prefix):
            continue  # the optimizer's state
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointWeightsError(f"{path}: model entry {key!r} is not a tensor")
        state[key[len(prefix) :]] = torch.empty(entry.size, dtype=entry.properties.dtype)
    if not state:
        raise CheckpointWeightsError(f"{path}: no {MODEL_KEY!r} entries (not a model checkpoint)")
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({MODEL_KEY: state}, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=True)
    return state

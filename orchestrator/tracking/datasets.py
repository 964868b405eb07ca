"""A sweep's training data as an MLflow dataset input (the runs table's Datasets column): its
name, where it comes from, and a digest of its content, computed once on the driver.

The digest is of what the trials train on: the generated digits clips' tensors (and labels), a
folder's file bytes (memoised by path, size and mtime in the cache's digests.json), or a
pipeline's encoded entries (content-addressed by the clip and caption files and the encoders'
files: their cache keys, in order).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Dataset, DatasetInput, InputTag

from orchestrator.models.wan_presets import PRESETS
from orchestrator.spec import parse_spec
from orchestrator.spec.recipe import build_train_config
from orchestrator.storage import is_uri, open_location
from orchestrator.storage.local import default_cache_root
from orchestrator.storage.records import SPEC_FILE, SWEEP_FILE, read_json
from orchestrator.tracking.tags import CONTEXT_TAG, SOURCE_NAME_TAG

DIGEST_CHARS = 32  # MLflow stores at most 36 characters of a digest


def training_input(sweep_dir: Path) -> DatasetInput:
    """The training data of the sweep in `sweep_dir` (its spec.yaml and sweep.json)."""
    sweep_dir = Path(sweep_dir)
    spec = parse_spec(yaml.safe_load((sweep_dir / SPEC_FILE).read_text()), source=str(sweep_dir))
    train = build_train_config(spec.train)
    encoded = read_json(sweep_dir / SWEEP_FILE).get("encoded")
    if train.is_pipeline and encoded:
        name, source, digest, profile = _encoded(encoded)
    elif train.data.source == "digits":
        name, source, digest, profile = _digits(train)
    else:
        name, source, digest, profile = _folder(Path(train.data.source), train.data.num_val)
    dataset = Dataset(
        name=name, digest=digest[:DIGEST_CHARS], source_type=source[0],
        source=json.dumps(source[1]), profile=json.dumps({**profile, "sha256": digest}),
    )  # fmt: skip
    return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, "training")])


def _digits(train) -> tuple[str, tuple[str, dict], str, dict[str, Any]]:
    """The digits clips the recipe builds (same arguments), hashed item by item."""
    from orchestrator.data import build_datasets  # imports torch: heavy

    frames, size = train.clip_shape
    preset = PRESETS.get(train.model)
    channels = (
        preset.in_channels
        if preset
        else int(json.loads((Path(train.model) / "config.json").read_text())["in_channels"])
    )
    train_set, _ = build_datasets("digits", channels=channels, frames=frames, size=size,
                                  num_train=train.data.num_train, num_val=train.data.num_val,
                                  seed=train.data_seed)  # fmt: skip
    h = hashlib.sha256()
    for i in range(len(train_set)):
        clip, label = train_set[i]
        h.update(clip.contiguous().numpy().tobytes())
        h.update(str(int(label)).encode())
    source = ("code", {"tags": {SOURCE_NAME_TAG: "orchestrator.data.digits_clips "
                                "(scikit-learn's digits, moving)"}})  # fmt: skip
    profile = {"clips": len(train_set), "frames": frames, "size": size, "channels": channels,
               "seed": train.data_seed}  # fmt: skip
    return f"digits-{len(train_set)}x{frames}x{size}", source, h.hexdigest(), profile


def _folder(root: Path, num_val: int) -> tuple[str, tuple[str, dict], str, dict[str, Any]]:
    """A folder of clips: every file's bytes (the val clips are in it too, held out by name)."""
    from orchestrator.data.cache import FileDigests  # imports torch: heavy

    root = root.expanduser().resolve()
    digest = FileDigests(default_cache_root() / "digests.json").of_tree(root)
    files = sum(1 for p in root.rglob("*") if p.is_file())
    source = ("local", {"uri": root.as_uri()})
    return root.name, source, digest, {"files": files, "num_val": num_val}


def _encoded(where: str) -> tuple[str, tuple[str, dict], str, dict[str, Any]]:
    """A pipeline's encoded clips and captions (the manifest's path, or the URI of the set a
    bucket sweep shares): the train split's cache keys, in order."""
    from orchestrator.data.shared_encoded import SHARED_MANIFEST  # imports torch: heavy

    if is_uri(where):
        loc = open_location(where, what="encoded data")
        manifest, uri, stem = json.loads(loc.join(SHARED_MANIFEST).read_text()), where, loc.name
    else:
        path = Path(where)
        manifest, uri, stem = json.loads(path.read_text()), path.as_uri(), path.stem
    rows = manifest["train"]
    h = hashlib.sha256()
    for row in rows:
        h.update(f"{row['latent']}:{row['text']};".encode())
    folders = sorted({str(Path(r["source"]).parent) for r in rows})
    source = ("local", {"uri": Path(folders[0]).as_uri() if folders else uri})
    profile = {"clips": len(rows), "latent_shape": manifest.get("latent_shape"),
               "manifest": where}  # fmt: skip
    name = Path(folders[0]).name if folders else stem
    return f"{name} (encoded)", source, h.hexdigest(), profile

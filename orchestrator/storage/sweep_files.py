"""Reading a sweep back (its spec and MLflow ids), finding a spec's latest sweep, and what the
driver prepares before any trial (the base model, a pipeline's encoded data).

A sweep is a directory or a bucket prefix (orchestrator.storage.sweep_place.SweepPlace); both
read through the place's working directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import yaml

from orchestrator.models.wan_presets import PRESETS
from orchestrator.recipe.config import resolve_mixed_precision
from orchestrator.spec import ExperimentSpec, SpecError, parse_spec
from orchestrator.spec.bounded_yaml import load_bounded
from orchestrator.spec.recipe import build_train_config
from orchestrator.storage import open_location
from orchestrator.storage.records import SPEC_FILE, SWEEP_FILE, TRIALS_FILE
from orchestrator.storage.sweep_place import SweepPlace, open_place

TUNE_DIR = "tune"
_OWN = r"-\d{8}-\d{6}(-\d+)?"  # <name>-YYYYmmdd-HHMMSS[-n]


def read_sweep(sweep: Path | str | SweepPlace) -> tuple[ExperimentSpec, dict[str, Any]]:
    """The spec and MLflow ids a sweep (a directory, a URI or a place) was started with."""
    place = sweep if isinstance(sweep, SweepPlace) else open_place(sweep)
    sweep_dir = place.local
    for name in (SPEC_FILE, SWEEP_FILE, f"{TUNE_DIR}/tuner.pkl"):
        if not place.exists(name):
            raise SpecError(place.uri, [f"not a sweep directory (no {name})"])
    loaded = {}
    for name, load in (
        (SPEC_FILE, load_bounded),  # sizes and alias expansion bounded, as an experiment file's
        (SWEEP_FILE, json.loads),
        (TRIALS_FILE, json.loads),
    ):
        path = sweep_dir / name
        try:
            loaded[name] = load(path.read_text()) if path.is_file() else None
        except (yaml.YAMLError, json.JSONDecodeError) as exc:  # damaged: one line, no traceback
            why = str(exc).strip().splitlines()[0]
            raise SpecError(str(path), [f"damaged sweep file, cannot be parsed ({why})"]) from None
    spec = parse_spec(loaded[SPEC_FILE], source=str(sweep_dir / SPEC_FILE))
    return spec, loaded[SWEEP_FILE]


def find_sweep(spec: ExperimentSpec) -> Path | str:
    """The most recent sweep of this spec's name (a directory, or a URI for a bucket)."""
    base = spec.storage.results_dir
    # <name>-YYYYmmdd-HHMMSS[-n] exactly: "smoke-*" would also match experiment "smoke-x"
    own = re.compile(re.escape(spec.name) + _OWN)
    if isinstance(base, str):
        root = open_location(base)
        listed = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))
        names = sorted(i.base_name for i in listed if i.type == pafs.FileType.Directory)
        found = [root.join(n).uri for n in names
                 if own.fullmatch(n) and root.join(n, SWEEP_FILE).is_file()]  # fmt: skip
    else:
        found = sorted(p for p in base.glob(f"{spec.name}-*")
                       if own.fullmatch(p.name) and (p / SWEEP_FILE).is_file())  # fmt: skip
    if not found:
        raise SpecError(spec.name, [f"no sweep named {spec.name!r} under {base}"])
    return found[-1]


def prepare_encoded_data(spec: ExperimentSpec) -> str | None:
    """A pipeline's clips and captions, encoded once before any trial (what the cache lacks),
    on this machine's GPU when it has one; the manifest's path, or for a bucket sweep the URI of
    the entries shared through it (None: not a pipeline). Problems
    with the data or the pipeline are a SpecError: every one listed, nothing started."""
    train = build_train_config(spec.train)
    if not train.is_pipeline:
        return None  # before the imports below: a preset's sweep needs none of them
    # torch, and the modules below that import it (diffusers): heavy (the CLI imports this module)
    import torch

    from orchestrator.data.encoded import EncodeError
    from orchestrator.data.prompts import PromptFileError
    from orchestrator.data.videos import VideoDataError
    from orchestrator.models.pipeline import PipelineError
    from orchestrator.recipe.pipeline_data import prepare_encoded

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    say = lambda msg: print(f"[sla-sweep] {msg}", flush=True)  # noqa: E731
    try:
        manifest = prepare_encoded(train, device=device, log=say)
    except (VideoDataError, PipelineError, EncodeError, PromptFileError) as exc:
        raise SpecError(spec.name, [str(exc)]) from None
    stats = json.loads(manifest.read_text())["stats"]
    say(f"encoded data: {manifest} ({stats['seconds']:.1f} s)")
    if not spec.storage.remote:
        return str(manifest)
    from orchestrator.data.shared_encoded import share_encoded  # imports torch: heavy

    # A bucket sweep's trials may run on any node: they fetch the entries from the bucket.
    shared = share_encoded(manifest, open_location(spec.storage.results_dir).join(ENCODED_DIR))
    say(f"encoded data shared with every node: {shared}")
    return shared


ENCODED_DIR = "_cache/encoded"  # under a bucket's results_dir: a pipeline's encoded data


def base_store(spec: ExperimentSpec) -> str | None:
    """Where a bucket sweep keeps its pre-trained bases for every node (None: a directory)."""
    from orchestrator.recipe.base_model import BASE_STORE_DIR  # imports torch: heavy

    if not spec.storage.remote:
        return None
    return open_location(spec.storage.results_dir).join(BASE_STORE_DIR).uri


def prepare_base_model(spec: ExperimentSpec) -> None:
    """Pre-train (or find cached) the full-attention base once, before any trial starts; with
    a bucket as storage, also fetched from or uploaded to it."""
    import torch  # heavy, as is recipe.base_model: the CLI imports this module

    from orchestrator.recipe.base_model import ensure_base_model

    train = build_train_config(spec.train)
    gpu = spec.resources.gpus_per_worker > 0
    if train.model not in PRESETS or train.base_steps == 0:
        return  # a local model directory or a seeded init: nothing to pre-train
    if gpu and not torch.cuda.is_available():
        return  # the workers' precision differs from this machine's: the first trial trains it
    mixed = resolve_mixed_precision(train.mixed_precision, cuda=gpu)
    device = torch.device("cuda" if gpu else "cpu")
    ensure_base_model(train, device=device, mixed_precision=mixed, store=base_store(spec),
                      log=lambda msg: print(f"[sla-sweep] {msg}", flush=True))  # fmt: skip

"""One tiny-preset trial per torchrun process, for tests/orchestrator/recipe/test_parallel.py:

    python -m torch.distributed.run --nproc-per-node 2 -m tests.orchestrator.recipe.parallel_trial \
        OUT CACHE PARALLEL [RESUME_FROM]

Runs the real recipe (TrialRecipe: setup, train, cleanup) on random base weights (base_steps 0),
or, with $PARALLEL_TRIAL_PIPELINE set, on that tiny pipeline directory (a two-expert one trains
both experts), or with $PARALLEL_TRIAL_LORA=RANK a LoRA adapter of that rank over the frozen
preset, and writes OUT/rank_<r>.json: the train/loss series, this rank's parameter elements after
setup (its shards under fsdp) and the model's total.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from orchestrator.recipe import RecordingCallback, TrainConfig
from orchestrator.recipe.parallel import local_numel
from orchestrator.recipe.train import TrialRecipe
from sla_kernel_glue import SLAConfig

SLA = SLAConfig(topk=0.25, blkq=32, blkk=32)
STEPS = 4


def config(cache: str, parallel: str) -> TrainConfig:
    pipeline = os.environ.get("PARALLEL_TRIAL_PIPELINE")
    if pipeline:  # its clips encoded into CACHE by the first rank, the other waits
        data = {"source": "digits", "frames": 9, "size": 32, "num_train": 4, "num_val": 2,
                "cache_dir": cache}  # fmt: skip
        return TrainConfig(
            model=pipeline, steps=STEPS, checkpoint_every=2, log_every=1, sample_steps=2,
            warmup_steps=1, max_grad_norm=0.5, batch_size=2, data=data, parallel=parallel,
            validation={"prompts": ["a digit"], "steps": 2},
        )  # fmt: skip
    lora = os.environ.get("PARALLEL_TRIAL_LORA")  # a rank: a LoRA trial over the frozen base
    frozen = {"lora": {"rank": int(lora)}, "train_base": False} if lora else {}
    if os.environ.get("PARALLEL_TRIAL_COMPILE"):
        frozen["compile"] = True  # torch.compile each block (before sharding)
    return TrainConfig(
        **frozen,
        steps=STEPS,
        checkpoint_every=2,
        base_steps=0,  # random weights: nothing to pre-train
        base_cache_dir=cache,
        log_every=1,
        sample_steps=2,
        warmup_steps=1,
        max_grad_norm=0.5,  # clipping acts: the norm over shards must be the whole gradient's
        gradient_checkpointing=True,
        data={"num_val": 4},
        parallel=parallel,
    )


def main(out: str, cache: str, parallel: str, resume_from: str | None = None) -> None:
    recorder = RecordingCallback()
    recipe = TrialRecipe(
        config(cache, parallel),
        SLA,
        Path(out),
        callback=recorder,
        resume_from=None if resume_from is None else Path(resume_from),
    )
    try:
        recipe.setup()
        local = local_numel(recipe.model)
        final = recipe.train()
        rank = recipe.accelerator.process_index
    finally:
        recipe.cleanup()
    record = {
        "local_numel": local,
        "n_params": recipe.n_params,
        "losses": [[step, loss] for step, loss in recorder.series("train/loss")],
        "final": {k: v for k, v in final.items() if k.startswith("val/")},
    }
    (Path(out) / f"rank_{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:])

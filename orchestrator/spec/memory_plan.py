"""The memory plan: a trial's memory per GPU at its settings, estimated from the model's config
(no weights read) before Ray starts, printed as a table, and a setting that cannot fit the GPU
it gets refused in one line.

Per GPU, in bytes. P: the transformer's parameters (counted exactly from its config, SLA's proj_l
included); T: the trainable ones (all for a full fine-tune; the adapter and proj_l for LoRA;
proj_l alone with train_base false); N: workers_per_trial under `parallel: fsdp`, else 1 (ddp
replicates); B: batch_size; S: latent tokens per clip; L, d, f: layers, hidden size, FFN size;
w: 2 under bf16/fp16 autocast, else 4; a = 14 d + 2 f (+ 7 d + f with LoRA): the elements one
block keeps per token for its backward.

    weights      4 P / N   float32 master weights (+ two blocks gathered at w bytes under fsdp)
    gradients    4 T / N   float32 (+ one gathered block's under fsdp)
    optimizer    8 T / N   AdamW's two float32 moments
    teacher      w P       objective distill with a full fine-tune: one frozen copy of the base
                           in the autocast dtype (bf16: 2.6 GiB at Wan2.1-1.3B, 26.6 GiB at 14B);
                           0 for LoRA and train_base false (the trial's own weights teach)
    activations  w B S (L d + a)   with gradient checkpointing: every block's input kept, one
                                   block's tensors while it runs backward
                 w B S L a         without

`a` is calibrated, not derived: 14 d + 2 f per block and 7 d + f more under LoRA (peft casts
each adapted linear's input again, so its backward keeps a second copy) put Wan2.1-1.3B's LoRA
step at 480x832x81 without checkpointing at 113.9 GiB, as measured (docs/benchmarks.md: 113.9
dense, 116.8 with SLA, whose saved tensors are not counted here). The full fine-tune with
checkpointing then comes to 26.4 GiB against 26.5 (eager) and 25.3 (compiled) measured. The
estimate is of memory allocated; the CUDA context and the allocator's cache come on top. The
teacher's forward runs under no_grad before the model's, so its activations are freed before the
model's are made and are not counted.

A Wan2.2 A14B pipeline's trial holds both experts (P twice in the weights, and in a distill
teacher's copy) and trains those train.experts names (T for each); a step runs one expert, so
the activations are one's.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.recipe.config import TrainConfig
from orchestrator.spec.loader import SpecError
from orchestrator.spec.schema import ExperimentSpec
from orchestrator.spec.search import _set_dotted
from orchestrator.spec.sizes import GIB, Shape, trial_shape

FREQ_DIM = 256  # Wan's sinusoidal timestep width
MAX_SETTINGS = 256  # searched combinations looked at
COLUMNS = ("weights", "gradients", "optimizer", "teacher", "activations", "total", "GPU has")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One trial setting's estimate, bytes per GPU."""

    label: str
    weights: int
    gradients: int
    optimizer: int
    activations: int
    tokens: int
    teacher: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.teacher + self.activations


def block_params(s: Shape) -> int:
    """A WanTransformerBlock's parameters: two attentions with q/k norms, the cross-attention's
    norm, the FFN and the modulation table."""
    d, f = s.hidden, s.ffn
    return 8 * d * d + 2 * d * f + 21 * d + f


def model_params(s: Shape) -> int:
    """WanTransformer3DModel's parameters (text-to-video) from its config, without SLA."""
    d, patch = s.hidden, s.patch[0] * s.patch[1] * s.patch[2]
    embed = s.channels * patch * d + d  # patch embedding
    embed += FREQ_DIM * d + d + d * d + d + 6 * d * d + 6 * d  # timestep embedding and projection
    embed += s.text_dim * d + d + d * d + d  # text projection
    out = d * s.channels * patch + s.channels * patch + 2 * d
    return s.layers * block_params(s) + embed + out


def proj_l_params(s: Shape) -> int:
    head = s.hidden // max(s.heads, 1)
    return s.layers * (head * head + head)


def lora_params(s: Shape, rank: int) -> int:
    """Adapters on every block's attention projections and FFN linears (the recipe's targets)."""
    d, f = s.hidden, s.ffn
    per_block = 8 * rank * 2 * d + rank * (d + f) * 2
    return s.layers * per_block


def estimate(train: TrainConfig, shape: Shape, tokens: int, *, workers: int, label: str) -> Plan:
    """The plan of one trial setting (the formula in the module's docstring)."""
    n = workers if train.parallel == "fsdp" else 1
    w = 2 if train.mixed_precision != "no" else 4
    held, trained = expert_counts(train)
    base, sla = model_params(shape), trained * proj_l_params(shape)
    adapter = lora_params(shape, train.lora.rank) if train.lora is not None else 0
    if train.lora is not None:
        trainable = adapter + sla
    else:
        trainable = trained * base + sla if train.train_base else sla
    base *= held
    d, f = shape.hidden, shape.ffn
    per_block = 14 * d + 2 * f + ((7 * d + f) if train.lora is not None else 0)
    if train.gradient_checkpointing:
        act = w * train.batch_size * tokens * (shape.layers * d + per_block)
    else:
        act = w * train.batch_size * tokens * shape.layers * per_block
    gathered = (2 * w * block_params(shape), 4 * block_params(shape)) if n > 1 else (0, 0)
    return Plan(
        label,
        weights=4 * (base + sla + adapter) // n + gathered[0],
        gradients=4 * trainable // n + gathered[1],
        optimizer=8 * trainable // n,
        activations=act,
        tokens=tokens,
        teacher=teacher_bytes(train, shape) * held,
    )


def expert_counts(train: TrainConfig) -> tuple[int, int]:
    """(transformers held, transformers trained): (2, 2 or 1) for a Wan2.2 A14B pipeline's two
    experts by train.experts, else (1, 1). A step runs one expert, so activations are one's."""
    if not train.is_pipeline:
        return 1, 1
    from orchestrator.models.experts import pipeline_experts  # imports torch: heavy

    if len(pipeline_experts(train.model)) == 1:
        return 1, 1
    return 2, (2 if train.experts == "both" else 1)


def teacher_bytes(train: TrainConfig, shape: Shape) -> int:
    """The distill teacher's own copy: a full fine-tune's frozen base in the autocast dtype."""
    if train.objective != "distill" or train.frozen_base:
        return 0
    return (2 if train.mixed_precision != "no" else 4) * model_params(shape)


def trial_settings(spec: ExperimentSpec) -> Iterator[tuple[str, TrainConfig]]:
    """(label, TrainConfig) of the base settings and of each searched combination (a range by
    its two ends), up to MAX_SETTINGS."""
    yield "as set", TrainConfig.from_dict(dict(spec.train))
    axes = [[(p.field, v) for v in p.values] for p in spec.train_space]
    if not axes:
        return
    for combo in itertools.islice(itertools.product(*axes), MAX_SETTINGS):
        kwargs: dict[str, Any] = dict(spec.train)
        if isinstance(kwargs.get("lora"), Mapping):
            kwargs["lora"] = dict(kwargs["lora"])
        for field, value in combo:
            _set_dotted(kwargs, field.removeprefix("train."), value)
        yield (
            ", ".join(f"{f.removeprefix('train.')}={v}" for f, v in combo),
            TrainConfig.from_dict(kwargs),
        )


def plans(spec: ExperimentSpec) -> list[Plan]:
    """One plan per distinct estimate over the spec's trial settings (none for a model whose
    shape or token count is not known here)."""
    out: dict[tuple[int, ...], Plan] = {}
    for label, train in trial_settings(spec):
        shape, tokens, _ = trial_shape(train)
        if shape is None or tokens <= 0:
            continue
        p = estimate(train, shape, tokens, workers=spec.resources.workers_per_trial, label=label)
        out.setdefault((p.weights, p.gradients, p.optimizer, p.teacher, p.activations), p)
    return list(out.values())


def table(found: list[Plan], have: int | None, *, parallel: str, workers: int) -> str:
    """The plans as a small text table, GiB per GPU."""
    head = f"memory plan per GPU (GiB), {parallel} over {workers} worker(s):"
    rows = [("setting", "tokens", *COLUMNS)]
    for p in found:
        nums = (p.weights, p.gradients, p.optimizer, p.teacher, p.activations, p.total)
        rows.append((p.label, f"{p.tokens:,}", *(f"{x / GIB:,.1f}" for x in nums),
                     "?" if have is None else f"{have / GIB:,.1f}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in
                       enumerate(zip(r, widths, strict=True)))  # fmt: skip
             for r in rows]  # fmt: skip
    return "\n".join([head, *lines])


def refusal(found: list[Plan], have: int, *, fraction: float, gpu: str) -> list[str]:
    """One line for the largest plan over `have` bytes (the GPU's memory x gpus_per_worker)."""
    over = [p for p in found if p.total > have]
    if not over:
        return []
    p = max(over, key=lambda p: p.total)
    return [
        f"a trial ({p.label}) needs about {p.total / GIB:,.1f} GiB per GPU (weights "
        f"{p.weights / GIB:,.1f}, gradients {p.gradients / GIB:,.1f}, optimizer "
        f"{p.optimizer / GIB:,.1f}, teacher {p.teacher / GIB:,.1f}, activations {p.activations / GIB:,.1f} at {p.tokens:,} "
        f"tokens) but gets {have / GIB:,.1f} GiB ({fraction:g} of {gpu}); use train.parallel "
        "fsdp over more workers, gradient_checkpointing, LoRA, a smaller batch or clip"
    ]


def gpu_memory(spec: ExperimentSpec, *, local: bool) -> tuple[str, int | None]:
    """(what, bytes) of one GPU a trial gets: resources.gpu_memory_gib, else (Ray starting here)
    torch.cuda's first GPU; (.., None) when neither says."""
    if spec.resources.gpu_memory_gib is not None:
        gib = spec.resources.gpu_memory_gib
        return f"resources.gpu_memory_gib {gib:g}", int(gib * GIB)
    if not local:
        return "a GPU of the cluster", None
    import torch  # heavy: the spec check (and so the CLI) runs without it

    if not torch.cuda.is_available():
        return "a GPU", None
    props = torch.cuda.get_device_properties(0)
    return f"the GPU ({props.name}, {props.total_memory / GIB:,.1f} GiB)", int(props.total_memory)


def check_plan(spec: ExperimentSpec, *, local: bool) -> str:
    """The plan's table of a spec whose trials ask for GPUs ("" otherwise); a SpecError (one
    line, the estimate in it) when a trial setting does not fit the share of a GPU it gets."""
    r = spec.resources
    found = plans(spec) if r.gpus_per_worker > 0 else []
    if not found:
        return ""
    gpu, per_gpu = gpu_memory(spec, local=local)
    fraction = min(r.gpus_per_worker, 1.0)  # a worker's model lives on one GPU
    have = None if per_gpu is None else int(per_gpu * fraction)
    text = table(found, have, parallel=spec.train.get("parallel", "ddp"),
                 workers=r.workers_per_trial)  # fmt: skip
    problems = [] if have is None else refusal(found, have, fraction=fraction, gpu=gpu)
    if problems:
        raise SpecError(spec.name, problems)
    return text

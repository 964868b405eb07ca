"""Evaluation on a fixed held-out batch, and the FLOPs of one optimizer step.

Everything random here is fixed: the val clips, their noise, their timesteps (evenly spaced in
(0, 1)) and the sampling noise come from the trial seed alone, so the SLA model, the dense
control and the full-attention base are scored on exactly the same inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import Dataset

from orchestrator.models.wan_presets import ModelShape
from sla_kernel_glue import SLAConfig, attention_flops

from .flow_matching import euler_sample, flow_loss, noisy_input, predict_velocity

_VAL_NOISE_OFFSET = 7919  # val noise seed = trial seed + this (never the training stream's)
PSNR_CAP_DB = 100.0  # identical samples would be +inf dB; reported as this cap
Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclasses.dataclass(frozen=True)
class ValBatch:
    """The fixed validation inputs, on the training device."""

    clips: torch.Tensor  # (n, C, F, H, W)
    context: torch.Tensor  # (n, L, text_dim)
    noise: torch.Tensor  # (n, C, F, H, W): for val/loss
    timesteps: torch.Tensor  # (n,): evenly spaced in (0, 1)
    sample_noise: torch.Tensor  # (n, C, F, H, W): the start of the sampling ODE

    def chunks(self, size: int):
        """(clips, context, noise, timesteps, sample_noise) in slices of at most `size`."""
        for start in range(0, self.clips.shape[0], size):
            s = slice(start, start + size)
            yield (
                self.clips[s],
                self.context[s],
                self.noise[s],
                self.timesteps[s],
                self.sample_noise[s],
            )


def make_val_batch(
    dataset: Dataset, prompts: torch.Tensor, *, seed: int, device: torch.device
) -> ValBatch:
    """All clips of the val dataset, with fixed noise and timesteps from the seed."""
    items = [dataset[i] for i in range(len(dataset))]
    clips = torch.stack([clip for clip, _ in items])
    labels = torch.tensor([label for _, label in items])
    generator = torch.Generator().manual_seed(seed + _VAL_NOISE_OFFSET)
    n = clips.shape[0]
    return ValBatch(
        clips=clips.to(device),
        context=prompts[labels].to(device),
        noise=torch.randn(clips.shape, generator=generator).to(device),
        timesteps=((torch.arange(n) + 0.5) / n).to(device),
        sample_noise=torch.randn(clips.shape, generator=generator).to(device),
    )


@torch.no_grad()
def val_loss(model: nn.Module, val: ValBatch, *, batch_size: int, autocast: Autocast) -> float:
    """Flow-matching loss on the whole val batch (mean over clips)."""
    total, count = 0.0, 0
    for clips, context, noise, t, _ in val.chunks(batch_size):
        with autocast():
            loss = flow_loss(model, clips, noise, t, context)
        total += float(loss) * clips.shape[0]
        count += clips.shape[0]
    return total / count


@torch.no_grad()
def val_velocities(
    model: nn.Module, val: ValBatch, *, batch_size: int, autocast: Autocast
) -> torch.Tensor:
    """The model's velocity (float32) at every val clip's fixed noise and timestep: the base's is
    what val/distill_loss compares a trial's with."""
    out = []
    for clips, context, noise, t, _ in val.chunks(batch_size):
        with autocast():
            out.append(predict_velocity(model, noisy_input(clips, noise, t), t, context))
    return torch.cat(out)


@torch.no_grad()
def val_losses(
    model: nn.Module, val: ValBatch, targets: torch.Tensor, *, batch_size: int, autocast: Autocast
) -> tuple[float, float]:
    """(val_loss, the distillation loss: the MSE to `targets`, the base's val_velocities), both
    from one forward per chunk and means over clips; the first is val_loss's computation."""
    total, distilled, count = 0.0, 0.0, 0
    for start, (clips, context, noise, t, _) in zip(
        range(0, len(val.clips), batch_size), val.chunks(batch_size), strict=True
    ):
        with autocast():
            prediction = predict_velocity(model, noisy_input(clips, noise, t), t, context)
            loss = F.mse_loss(prediction, (noise - clips).float())
        target = targets[start : start + clips.shape[0]]
        total += float(loss) * clips.shape[0]
        distilled += float(F.mse_loss(prediction, target)) * clips.shape[0]
        count += clips.shape[0]
    return total / count, distilled / count


@torch.no_grad()
def samples(
    model: nn.Module,
    val: ValBatch,
    *,
    batch_size: int,
    steps: int,
    shift: float,
    autocast: Autocast,
) -> torch.Tensor:
    """Euler samples from the fixed sampling noise, float32 (n, C, F, H, W)."""
    out = [
        euler_sample(model, noise, context, steps=steps, shift=shift, autocast=autocast)
        for _, context, _, _, noise in val.chunks(batch_size)
    ]
    return torch.cat(out)


def psnr(x: torch.Tensor, reference: torch.Tensor, *, data_range: float = 2.0) -> float:
    """PSNR in dB of x against reference, both clamped to the data range [-1, 1]; capped."""
    mse = F.mse_loss(x.float().clamp(-1, 1), reference.float().clamp(-1, 1)).item()
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(data_range**2 / mse))


class AttentionErrorProbe:
    """While active, records ||SLA(q, k, v) - SDPA(q, k, v)|| / ||SDPA(q, k, v)|| per SLA layer.

    Forward hooks on the SLA modules see each layer's actual q, k, v (B, H, N, d) and SLA output;
    the dense reference is the aten SDPA op in float32, called through torch.ops so that the SLA
    router (which stands in for torch.nn.functional's SDPA inside the layer) cannot catch it.
    """

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.errors: dict[str, list[float]] = {path: [] for path in layers}
        self._hooks: list = []

    def __enter__(self) -> AttentionErrorProbe:
        for path, module in self.layers.items():
            self._hooks.append(module.register_forward_hook(self._hook(path)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _hook(self, path: str):
        def record(_module: nn.Module, args: tuple, output) -> None:
            q, k, v = (a.float() for a in args[:3])
            out = (output[0] if isinstance(output, tuple) else output).float()
            with torch.autocast(device_type=q.device.type, enabled=False):
                dense = torch.ops.aten.scaled_dot_product_attention(q, k, v)
            self.errors[path].append(float((out - dense).norm() / dense.norm().clamp_min(1e-12)))

        return record

    def mean(self) -> float:
        """Mean over layers of each layer's mean relative error."""
        per_layer = [sum(e) / len(e) for e in self.errors.values() if e]
        if not per_layer:
            raise RuntimeError("AttentionErrorProbe saw no SLA call: is SLA injected and active?")
        return sum(per_layer) / len(per_layer)


@torch.no_grad()
def attention_rel_err(
    model: nn.Module,
    layers: dict[str, nn.Module],
    val: ValBatch,
    *,
    batch_size: int,
    autocast: Autocast,
) -> float:
    """val/attn_rel_err on the first val chunk (0.0 without SLA layers: dense is exact)."""
    if not layers:
        return 0.0
    clips, context, noise, t, _ = next(val.chunks(batch_size))
    with AttentionErrorProbe(layers) as probe, autocast():
        flow_loss(model, clips, noise, t, context)
    return probe.mean()


def step_flops(
    shape: ModelShape,
    *,
    batch: int,
    tokens: int,
    sla: SLAConfig | None,
    n_params: int,
    step: int = 0,
) -> dict[str, float]:
    """The FLOPs of the training step that made `step` optimizer steps, at its topk
    (sla.at_step(step): a topk schedule's value there), for `batch` clips of `tokens` tokens.

    flops/attention: forward+backward of every self-attention layer; flops/attention_ratio: over
    dense; flops/step = 6 * params * tokens + attention; flops/attention_mean: flops/attention
    averaged over the training steps run so far (1..step; at step 0, the current value), which
    differs from flops/attention only while a schedule moves topk.
    """

    def attention(config: SLAConfig | None) -> tuple[float, float]:
        per_layer = attention_flops(
            batch, shape.heads, tokens, shape.head_dim, config, backward=True
        )
        return per_layer.sla * shape.layers, per_layer.dense * shape.layers

    now, dense = attention(None if sla is None else sla.at_step(step))
    mean = now
    if sla is not None and sla.topk_schedule is not None and step > 0:
        ramp = min(step, sla.topk_schedule.warmup_steps)  # steps 1..ramp move; the rest at end
        total = sum(attention(sla.at_step(s))[0] for s in range(1, ramp + 1))
        mean = (total + (step - ramp) * attention(sla.at_step(step))[0]) / step
    return {
        "flops/attention": now,
        "flops/attention_ratio": now / dense,
        "flops/attention_mean": mean,
        "flops/step": 6.0 * n_params * batch * tokens + now,
    }

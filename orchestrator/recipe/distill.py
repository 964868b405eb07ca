"""The distill objective: the trial's model (SLA on) learns the dense base's velocity.

The teacher is the untouched base with full attention, frozen. It costs no second copy where
the base does not train: for a LoRA trial or `train_base: false` it is the trial's own model with
the adapter disabled and SLA bypassed (handle.dense(): torch's dense SDPA in every injected
layer) for the teacher's call only, under no_grad. A full fine-tune changes the base's weights,
so its teacher is one frozen copy, made before SLA goes in, in the trial's autocast dtype (bf16
on a GPU; float32 where the trial runs without autocast, e.g. on the CPU), in eval mode.

The loss on one micro-batch: x_t = (1 - t) x0 + t noise as flow matching forms it; the teacher's
velocity at (x_t, t, text) first (no graph kept), then the model's; their mean squared error,
plus flow_weight times the flow-matching error of the same prediction when clips are the data.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .flow_matching import noisy_input, predict_velocity

Autocast = Callable[[], contextlib.AbstractContextManager]


class Teacher:
    """The dense base's velocity: the trial's own model seen as the base, or a frozen copy."""

    def __init__(
        self,
        *,
        own: Callable[[], nn.Module] | None = None,
        frozen: nn.Module | None = None,
        handle: Callable[[], object] = lambda: None,
        autocast: Autocast = contextlib.nullcontext,
    ) -> None:
        if (own is None) == (frozen is None):
            raise ValueError("a Teacher is either the trial's own model or a frozen copy")
        self._own, self.frozen, self._handle, self.autocast = own, frozen, handle, autocast

    @classmethod
    def copy_of(cls, model: nn.Module, dtype: torch.dtype, autocast: Autocast) -> Teacher:
        """A frozen copy of `model` (before SLA and LoRA go in) in `dtype`, in inference mode;
        the modules diffusers keeps in float32 (norms, time embedding, RoPE) stay float32."""
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        if dtype != torch.float32:
            keep = tuple(getattr(frozen, "_keep_in_fp32_modules", None) or ())
            for name, p in frozen.named_parameters():
                if not any(k in name.split(".") for k in keep):
                    p.data = p.data.to(dtype)
        return cls(frozen=frozen, autocast=autocast)

    @contextlib.contextmanager
    def _as_base(self) -> Iterator[nn.Module]:
        """The model that computes the base's velocity, for the length of the block."""
        if self.frozen is not None:
            yield self.frozen
            return
        model = self._own()
        handle = self._handle()
        dense = handle.dense() if handle is not None else contextlib.nullcontext()
        adapted = bool(getattr(model, "peft_config", None))
        with dense:
            if adapted:
                model.disable_adapters()
            try:
                yield model
            finally:
                if adapted:
                    model.enable_adapters()

    @torch.no_grad()
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The base's velocity (float32) at noised latents x_t, timesteps t (B,) and text."""
        with self._as_base() as model, self.autocast():
            return predict_velocity(model, x_t, t, context)


def objective_loss(
    model: nn.Module,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    *,
    teacher: Teacher | None,
    flow_weight: float = 0.0,
) -> torch.Tensor:
    """flow matching (teacher None): the MSE to noise - x0; distill: the MSE to the teacher's
    velocity (+ flow_weight times the flow-matching MSE of the same prediction)."""
    x_t = noisy_input(x0, noise, t)
    target = None if teacher is None else teacher.velocity(x_t, t, context)
    prediction = predict_velocity(model, x_t, t, context)
    flow = (noise - x0).float()
    if target is None:
        return nn.functional.mse_loss(prediction, flow)
    loss = nn.functional.mse_loss(prediction, target)
    if flow_weight:
        loss = loss + flow_weight * nn.functional.mse_loss(prediction, flow)
    return loss

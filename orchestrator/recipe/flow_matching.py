"""Flow matching as Wan is trained, and the fixed class-conditional text context.

x_t = (1 - t) x0 + t noise, t in (0, 1) (t = 1 is pure noise); the model predicts the velocity
noise - x0 and is given the timestep t * 1000. t is drawn logit-normal (sigmoid of a standard
normal) or uniform, then shifted towards noise with t' = s t / (1 + (s - 1) t).
Sampling integrates dx/dt = v from t = 1 to 0 with Euler steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

NUM_CLASSES = 10
PROMPT_SEED = 1234  # fixed: the same ten "prompts" for every trial and every base model
TIMESTEP_SCALE = 1000.0  # Wan's timestep embedding takes t in [0, 1000]


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 timestep shift: s t / (1 + (s - 1) t); shift 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    n: int, *, generator: torch.Generator, sampling: str = "logit_normal", shift: float = 1.0
) -> torch.Tensor:
    """(n,) float32 timesteps in (0, 1), drawn on the CPU from `generator`."""
    if sampling == "logit_normal":
        t = torch.sigmoid(torch.randn(n, generator=generator))
    elif sampling == "uniform":
        t = torch.rand(n, generator=generator)
    else:
        raise ValueError(f"timestep sampling ({sampling!r}) must be 'logit_normal' or 'uniform'")
    return shift_timesteps(t, shift).clamp(1e-4, 1 - 1e-4)


def noisy_input(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, with t (B,) broadcast over (B, C, F, H, W)."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def class_prompts(text_len: int, text_dim: int, *, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(num_classes, L, text_dim): one fixed random "prompt" embedding per digit class."""
    generator = torch.Generator().manual_seed(PROMPT_SEED)
    return torch.randn(num_classes, text_len, text_dim, generator=generator)


def predict_velocity(
    model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """The model's velocity for (B, C, F, H, W) latents at timesteps t (B,) in (0, 1), float32."""
    out = model(
        hidden_states=x_t,
        timestep=t * TIMESTEP_SCALE,
        encoder_hidden_states=context,
        return_dict=False,
    )[0]
    return out.float()


def flow_loss(
    model: nn.Module, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity noise - x0."""
    prediction = predict_velocity(model, noisy_input(x0, noise, t), t, context)
    return torch.nn.functional.mse_loss(prediction, (noise - x0).float())


@torch.no_grad()
def euler_sample(
    model: nn.Module,
    noise: torch.Tensor,
    context: torch.Tensor,
    *,
    steps: int,
    shift: float = 1.0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Integrate the flow ODE from noise (t = 1) to data (t = 0) in `steps` Euler steps."""
    return guided_euler_sample(
        model, noise, context, None, steps=steps, shift=shift, guidance=1.0, autocast=autocast
    )


@torch.no_grad()
def guided_euler_sample(
    model: nn.Module,
    noise: torch.Tensor,
    context: torch.Tensor,
    negative: torch.Tensor | None,
    *,
    steps: int,
    shift: float,
    guidance: float,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Euler steps of the flow ODE with classifier-free guidance: v = v_neg + g (v_pos - v_neg),
    the negative prompt's context in `negative` (guidance 1 skips it)."""
    grid = shift_timesteps(torch.linspace(1.0, 0.0, steps + 1), shift).tolist()
    x = noise.float()
    for t_now, t_next in zip(grid[:-1], grid[1:], strict=True):
        t = torch.full((x.shape[0],), t_now, device=x.device)
        with autocast():
            v = predict_velocity(model, x.to(noise.dtype), t, context)
            if guidance != 1.0:
                v_neg = predict_velocity(model, x.to(noise.dtype), t, negative)
                v = v_neg + guidance * (v - v_neg)
        x = x + (t_next - t_now) * v
    return x

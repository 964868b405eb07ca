"""Flow matching: the interpolation, the target, timestep sampling, prompts, the Euler sampler."""

import torch
from torch import nn

from orchestrator.recipe.evaluate import psnr
from orchestrator.recipe.flow_matching import (
    TIMESTEP_SCALE,
    class_prompts,
    euler_sample,
    flow_loss,
    noisy_input,
    sample_timesteps,
    shift_timesteps,
)


class ExactVelocity(nn.Module):
    """Knows the data x0: returns the true velocity (x_t - x0) / t = noise - x0 of the straight path."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        t = (timestep / TIMESTEP_SCALE).view(-1, 1, 1, 1, 1)
        return ((hidden_states - self.x0) / t,)


def test_interpolation_ends_and_loss_of_exact_model():
    x0, noise = torch.randn(2, 4, 2, 8, 8), torch.randn(2, 4, 2, 8, 8)
    assert torch.equal(noisy_input(x0, noise, torch.zeros(2)), x0)
    assert torch.equal(noisy_input(x0, noise, torch.ones(2)), noise)
    t = torch.tensor([0.3, 0.8])
    assert flow_loss(ExactVelocity(x0), x0, noise, t, torch.zeros(2, 1, 1)) < 1e-10


def test_euler_sampling_recovers_data_with_exact_velocity():
    x0, noise = torch.rand(3, 4, 2, 8, 8), torch.randn(3, 4, 2, 8, 8)
    sample = euler_sample(ExactVelocity(x0), noise, torch.zeros(3, 1, 1), steps=4, shift=3.0)
    assert torch.allclose(sample, x0, atol=1e-5)
    assert psnr(sample, x0) > 80


def test_timesteps_in_range_and_shift_moves_towards_noise():
    g = torch.Generator().manual_seed(0)
    for sampling in ("logit_normal", "uniform"):
        t = sample_timesteps(1000, generator=g, sampling=sampling)
        assert ((t > 0) & (t < 1)).all()
    t = torch.linspace(0.1, 0.9, 9)
    assert torch.equal(shift_timesteps(t, 1.0), t) and (shift_timesteps(t, 3.0) > t).all()
    a = sample_timesteps(5, generator=torch.Generator().manual_seed(1))
    b = sample_timesteps(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_class_prompts_are_fixed_and_distinct():
    p = class_prompts(8, 32)
    assert p.shape == (10, 8, 32) and torch.equal(p, class_prompts(8, 32))
    assert not torch.equal(p[0], p[1])

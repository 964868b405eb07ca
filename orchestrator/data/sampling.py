"""Which samples each optimizer step sees: a pure function of (seed, step), so resume is exact.

The training stream is the concatenation of per-epoch permutations of the dataset (epoch e
shuffled with seed (seed, e)). Global micro-batch g (= step * grad_accum + micro) takes the next
batch_size * world_size positions of the stream; rank r takes its own batch_size of them. There
is no loader state to save: restoring the step restores the data position.
"""

from __future__ import annotations

import functools

import numpy as np


class StepSampler:
    """Indices of the samples for (step, micro-batch, rank)."""

    def __init__(
        self, num_samples: int, *, batch_size: int, grad_accum: int, world_size: int, seed: int
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples ({num_samples}) must be positive")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.grad_accum, self.world_size, self.seed = grad_accum, world_size, seed

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few epochs, owned by one long-lived sampler
    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        """The dataset indices rank `rank` uses for micro-batch `micro` of optimizer step `step`."""
        g = step * self.grad_accum + micro
        start = (g * self.world_size + rank) * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, self.num_samples)
            out.append(int(self._epoch(epoch)[offset]))
        return out

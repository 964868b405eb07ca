"""Feature maps phi of the linear branch. None of them has parameters."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def _elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def _relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


FEATURE_MAP_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": _softmax,
    "elu": _elu,
    "relu": _relu,
}

# Added to the linear branch's denominator: with relu, phi(q) . z can be exactly 0.
LINEAR_EPS = 1e-6


def feature_map(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return FEATURE_MAP_FNS[name]
    except KeyError:
        raise ValueError(
            f"feature_map ({name!r}) must be one of {', '.join(FEATURE_MAP_FNS)}"
        ) from None

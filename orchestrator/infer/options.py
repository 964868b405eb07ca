"""What the inference commands (infer, compare, export) share on their command lines."""

from __future__ import annotations

import argparse

from orchestrator.infer.errors import InferenceError

DEVICES = ("cpu", "cuda", "auto")


def positive_int(text: str) -> int:
    """argparse type: a positive integer."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto", help="default: CUDA when present")


def add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow store to look a run id up in (default: $MLFLOW_TRACKING_URI or ./sla_runs/mlflow.db)",
    )


def pick_device(name: str):
    """torch.device for "cpu" | "cuda" | "auto" (CUDA when present); InferenceError for a missing GPU."""
    import torch  # heavy: the CLI imports this module to build its parser

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InferenceError(
            "--device cuda but torch sees no CUDA device; use --device cpu or auto"
        )
    return torch.device(name)

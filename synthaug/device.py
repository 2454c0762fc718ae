"""Which device and precision a stage runs on when the user does not say."""

from __future__ import annotations

import torch


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast for sampling on a GPU that supports it; None (float32) elsewhere."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def process_state(**kwargs):
    """This process's place among the ones ``accelerate launch`` (or ``torchrun``) started: accelerate's
    ``PartialState``, created once. Without a GPU the processes join over gloo on the CPU: accelerate only
    does that when told ``cpu=True`` (its ``--cpu`` flag instead runs a single process), so launch CPU runs
    with ``accelerate launch --multi_gpu --num_processes N`` or ``torchrun --nproc_per_node N``."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), **kwargs)

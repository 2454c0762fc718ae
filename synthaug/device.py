"""Which device and precision a stage runs on when the user does not say."""

from __future__ import annotations

import contextlib

import torch

from synthaug.errors import SynthaugError


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


@contextlib.contextmanager
def out_of_memory_advice(advice: str):
    """A GPU's out-of-memory error inside the block becomes one sentence, "The GPU ran out of memory ``advice``",
    which names the setting that fixes it (a ``SynthaugError``, exit code 1); what was written stays."""
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise SynthaugError(f"The GPU ran out of memory {advice}") from None

"""What a reference workload is: a real model, a seeded data stream, an AdamW loop.

    prefetch workloads

A workload builds a `Job` from a seed, on a torch device (the CPU by default; a GPU for
`prefetch run --device cuda`): the model is initialised on the CPU from the seed and
moved, and every batch is drawn on the CPU from (seed, step) and moved, so the same seed
gives the same model and data on every device. `Job.step(i)` runs optimizer step i completely
(every micro-step, evaluation pass or generation it involves) and returns the step's
loss as a Python float, so runs with and without prefetching compare bit for bit.
Everything is built from configs: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Job:
    """A built training job: the model and optimizer to wrap, and one call per step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[int], float]
    """Runs optimizer step i (all of it) and returns its loss."""
    config: dict[str, Any] = field(default_factory=dict)
    """The model config (for the trace manifest)."""


@dataclass(frozen=True)
class Workload:
    """A named reference training job."""

    name: str
    description: str
    dynamic: bool
    """True when the set or order of accesses changes from step to step."""
    build: Callable[..., Job]
    """build(seed, device="cpu") -> Job, with its model, optimizer state and every
    input on `device`. The same seed gives the same model, data and losses."""


class UnknownWorkloadError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want a plain line
        return str(self.args[0])

"""The reference training workloads, by name.

    prefetch workloads

Static ones (`gpt2`, `llama`, `vit`) repeat the same access order every step, where
replaying the last step is hard to beat; dynamic ones (`moe`, `accum-eval`,
`layerdrop`, `generate-train`) change it from step to step.
"""

from __future__ import annotations

from .base import Job, UnknownWorkloadError, Workload
from .dynamic import ACCUM_EVAL, GENERATE_TRAIN, LAYERDROP
from .lm import GPT2, LLAMA
from .moe import MOE, split_fused_experts
from .vision import VIT

WORKLOADS: dict[str, Workload] = {w.name: w for w in (GPT2, LLAMA, VIT, MOE, ACCUM_EVAL, LAYERDROP, GENERATE_TRAIN)}


def list_workloads() -> list[Workload]:
    """Every reference workload, static ones first."""
    return list(WORKLOADS.values())


def get_workload(name: str) -> Workload:
    """The workload called `name`; UnknownWorkloadError (a KeyError) names the choices."""
    try:
        return WORKLOADS[name]
    except KeyError:
        choices = ", ".join(WORKLOADS)
        raise UnknownWorkloadError(f"unknown workload {name!r}; choose from: {choices}") from None


__all__ = [
    "Job",
    "UnknownWorkloadError",
    "WORKLOADS",
    "Workload",
    "get_workload",
    "list_workloads",
    "split_fused_experts",
]

"""Mixture-of-experts workload: a small Mixtral (8 experts, top-2) with per-expert modules.

    prefetch record --workload moe --steps 20 --out traces/moe

In transformers 5.x the experts of a layer are one fused module holding two 3-D
parameters (`gate_up_proj` (E, 2I, H), `down_proj` (E, H, I)), so module hooks cannot
see which experts ran and a prefetcher can only move all of them or none.
`split_fused_experts` rebuilds each fused module as a list of per-expert modules with
their own 2-D parameters; only experts that receive tokens are called, so their hooks
fire and their parameters are touched (forward, backward and optimizer) only then.

Micro-batches are small (1 x 8 tokens) so the set and order of experts touched
changes from step to step; at 4 x 128 tokens every expert is used every step.
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .base import Job, Workload
from .lm import job_config, lm_step_fn, make_optimizer, require_transformers

if TYPE_CHECKING:
    from transformers import MixtralForCausalLM


class Expert(nn.Module):
    """One gated MLP expert: down(act(gate(x)) * up(x)), as one slice of a fused module."""

    def __init__(self, gate_up_proj: torch.Tensor, down_proj: torch.Tensor, act_fn: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(gate_up_proj.detach().clone())  # (2I, H)
        self.down_proj = nn.Parameter(down_proj.detach().clone())  # (H, I)
        self.act_fn = act_fn

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (n, H) -> (n, H)
        gate, up = F.linear(hidden_states, self.gate_up_proj).chunk(2, dim=-1)  # (n, I) each
        return F.linear(self.act_fn(gate) * up, self.down_proj)


class SplitExperts(nn.ModuleList):
    """Drop-in replacement for a fused experts module: the same forward signature and
    math (transformers' eager loop), but each expert is its own module, called only
    when it receives tokens. Being a ModuleList keeps parameter names short:
    `...mlp.experts.3.gate_up_proj`."""

    def __init__(self, experts: list[Expert]) -> None:
        super().__init__(experts)
        self.num_experts = len(experts)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (S, H), S = tokens in the micro-batch
        top_k_index: torch.Tensor,  # (S, K) int64
        top_k_weights: torch.Tensor,  # (S, K)
    ) -> torch.Tensor:
        final_hidden_states = torch.zeros_like(hidden_states)  # (S, H)
        with torch.no_grad():
            # (E+1, K, S); index E is the "no expert" slot some routers use for padding
            expert_mask = F.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            # note: CPU-GPU sync point (nonzero); the set of experts decides the control flow
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()

        for expert_idx in expert_hit.flatten().tolist():  # ascending, like the fused loop
            if expert_idx == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current = self[expert_idx](hidden_states[token_idx])  # (n, H)
            current = current * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current.to(final_hidden_states.dtype))
        return final_hidden_states


# the flags transformers' @use_experts_implementation sets on a fused experts module,
# with the values of the layout SplitExperts computes
_MIXTRAL_LAYOUT = {
    "has_bias": False,
    "is_transposed": False,
    "is_concatenated": True,
    "has_gate": True,
    "has_post_expert_norm": False,
}


def _fused_experts_error(module: nn.Module) -> str | None:
    """Why `module` (which has 3-D gate_up_proj/down_proj) cannot be split, or None."""
    name = type(module).__name__
    gate_up, down = module.gate_up_proj, module.down_proj
    if not hasattr(module, "act_fn"):
        return f"{name} has no act_fn"
    for flag, wanted in _MIXTRAL_LAYOUT.items():
        if getattr(module, flag, wanted) != wanted:
            return f"{name} has {flag}={not wanted}; only the Mixtral layout is supported"
    apply_gate = getattr(type(module), "_apply_gate", None)
    if apply_gate is not None and apply_gate.__name__ != "_default_apply_gate":
        return f"{name} has its own gating function"
    num_experts, two_inter, hidden = gate_up.shape
    if down.shape != (num_experts, hidden, two_inter // 2) or two_inter % 2:
        return f"{name} has gate_up_proj {tuple(gate_up.shape)} and down_proj {tuple(down.shape)}; expected (E, 2I, H), (E, H, I)"
    params = inspect.signature(module.forward).parameters
    if not {"top_k_index", "top_k_weights"} <= params.keys():
        return f"{name}.forward does not take (hidden_states, top_k_index, top_k_weights)"
    return None


def _is_fused_experts(module: nn.Module) -> bool:
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    return (
        isinstance(gate_up, nn.Parameter)
        and isinstance(down, nn.Parameter)
        and gate_up.dim() == 3
        and down.dim() == 3
    )


def split_fused_experts(model: nn.Module) -> int:
    """Replace every fused experts module in `model` by a `SplitExperts` of per-expert
    modules; returns the number of experts split (0 if there were none).

    Works for the transformers 5.x Mixtral layout (`gate_up_proj` (E, 2I, H) with gate
    then up, `down_proj` (E, H, I), no biases), which Qwen2-MoE, Qwen3-MoE and OLMoE
    share; any other fused layout raises ValueError rather than compute something else.
    The new parameters are copies: call this before building the optimizer. The split
    modules always run the eager loop, whatever `config._experts_implementation` says.
    """
    targets = [(name, m) for name, m in model.named_modules() if _is_fused_experts(m)]
    for name, module in targets:
        error = _fused_experts_error(module)
        if error is not None:
            raise ValueError(f"cannot split experts at {name!r}: {error}")

    count = 0
    for name, module in targets:
        experts = [
            Expert(module.gate_up_proj[e], module.down_proj[e], copy.deepcopy(module.act_fn))
            for e in range(module.gate_up_proj.shape[0])
        ]
        for expert in experts:
            expert.requires_grad_(module.gate_up_proj.requires_grad)
        split = SplitExperts(experts)
        split.train(module.training)
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, split)
        count += len(experts)
    return count


MOE_SHAPE = dict(
    vocab_size=512,
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=128,
)
MOE_DATA = dict(batch_size=1, seq_len=8)


def mixtral_model(seed: int, **shape) -> MixtralForCausalLM:
    """A Mixtral with eager attention and eager experts, no jitter, initialised from `seed`."""
    transformers = require_transformers()
    config = transformers.MixtralConfig(
        **shape,
        attention_dropout=0.0,
        router_jitter_noise=0.0,
        output_router_logits=True,  # adds the load-balancing loss to .loss
        router_aux_loss_coef=0.02,  # keeps every expert in use over long runs
        attn_implementation="eager",
        experts_implementation="eager",
    )
    torch.manual_seed(seed)
    return transformers.MixtralForCausalLM(config)


def build_moe(seed: int, device: torch.device | str = "cpu") -> Job:
    model = mixtral_model(seed, **MOE_SHAPE)
    split_fused_experts(model)
    model.to(device).train()
    optimizer = make_optimizer(model)
    step = lm_step_fn(model, optimizer, seed, vocab_size=MOE_SHAPE["vocab_size"], device=device, **MOE_DATA)

    return Job(model, optimizer, step, job_config(model, "moe", seed, **MOE_DATA))


MOE = Workload(
    name="moe",
    description=f"Mixtral MoE ({MOE_SHAPE['num_hidden_layers']} layers, d={MOE_SHAPE['hidden_size']}, "
                f"{MOE_SHAPE['num_local_experts']} experts top-{MOE_SHAPE['num_experts_per_tok']}, split per expert), "
                f"{MOE_DATA['batch_size']}x{MOE_DATA['seq_len']} tokens a step",
    dynamic=True,
    build=build_moe,
)

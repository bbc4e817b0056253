"""Reference workloads: they build, run, repeat bit for bit, and are as dynamic as claimed.

    python -m pytest tests/prefetch/test_workloads.py -q
"""

from __future__ import annotations

import copy
import functools
import json
import math

import pytest
import torch
from torch import nn

from prefetch.workloads import (
    WORKLOADS,
    UnknownWorkloadError,
    get_workload,
    list_workloads,
    split_fused_experts,
)
from prefetch.workloads.moe import Expert, SplitExperts

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)

NAMES = ["gpt2", "llama", "vit", "moe", "accum-eval", "layerdrop", "generate-train"]
STEPS = 3


@functools.cache
def _losses(name: str, seed: int, replica: int) -> tuple[float, ...]:
    """Losses of the first STEPS steps of a fresh build (replica tells builds apart)."""
    job = get_workload(name).build(seed)
    return tuple(job.step(i) for i in range(STEPS))


def test_registry_names_and_dynamic_flags():
    """The registry holds exactly the reference workloads, static ones marked static."""
    assert list(WORKLOADS) == NAMES
    assert [w.name for w in list_workloads()] == NAMES
    assert {w.name for w in list_workloads() if not w.dynamic} == {"gpt2", "llama", "vit"}


def test_unknown_workload_error_names_it():
    """Asking for an unknown workload raises an error naming it and the choices."""
    with pytest.raises(UnknownWorkloadError) as info:
        get_workload("resnet-9000")
    message = str(info.value)
    assert "'resnet-9000'" in message and "gpt2" in message and "generate-train" in message
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_runs_two_steps(name):
    """Each workload builds, runs two steps with finite losses and has a JSON config."""
    job = get_workload(name).build(0)
    losses = [job.step(i) for i in range(2)]
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses)
    assert job.model.training
    config = json.loads(json.dumps(job.config))
    assert config["workload"]["name"] == name and "model_type" in config


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_losses(name):
    """Two builds with the same seed give bit-identical losses."""
    assert _losses(name, 0, 0) == _losses(name, 0, 1)


@pytest.mark.parametrize("name", NAMES)
def test_different_seeds_give_different_losses(name):
    """Different seeds give different losses."""
    assert _losses(name, 0, 0) != _losses(name, 1, 0)


def _tiny_moe(kind: str, seed: int = 0) -> nn.Module:
    """A tiny MoE causal LM of one of the supported families, eager experts."""
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_experts_per_tok=2, attn_implementation="eager",
                  experts_implementation="eager")  # fmt: skip
    if kind == "mixtral":
        config = transformers.MixtralConfig(**common, intermediate_size=48, num_local_experts=4)
        model_cls = transformers.MixtralForCausalLM
    elif kind == "qwen2_moe":
        config = transformers.Qwen2MoeConfig(**common, moe_intermediate_size=48, shared_expert_intermediate_size=64,
                                             num_experts=4)  # fmt: skip
        model_cls = transformers.Qwen2MoeForCausalLM
    else:
        config = transformers.OlmoeConfig(**common, intermediate_size=48, num_experts=4)
        model_cls = transformers.OlmoeForCausalLM
    torch.manual_seed(seed)
    return model_cls(config).eval()


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "olmoe"])
def test_split_experts_match_fused(kind):
    """Splitting fused experts keeps outputs and gradients and yields per-expert names."""
    fused = _tiny_moe(kind)
    split = copy.deepcopy(fused)
    assert split_fused_experts(split) == 2 * 4
    names = {n for n, _ in split.named_parameters()}
    assert "model.layers.0.mlp.experts.3.gate_up_proj" in names
    assert "model.layers.1.mlp.experts.0.down_proj" in names
    assert not any(p.dim() == 3 for p in split.parameters())

    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    out_fused = fused(input_ids=ids, labels=ids)
    out_split = split(input_ids=ids, labels=ids)
    torch.testing.assert_close(out_split.logits, out_fused.logits, rtol=1e-6, atol=1e-6)

    out_fused.loss.backward()
    out_split.loss.backward()
    fused_grad = fused.model.layers[0].mlp.experts.gate_up_proj.grad  # (E, 2I, H)
    for e, expert in enumerate(split.model.layers[0].mlp.experts):
        torch.testing.assert_close(expert.gate_up_proj.grad, fused_grad[e], rtol=1e-5, atol=1e-7)


def test_split_rejects_unknown_layouts():
    """A fused layout other than Mixtral's (here transposed) is refused, not mis-split."""

    class TransposedExperts(nn.Module):
        is_transposed = True

        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.zeros(4, 8, 6))
            self.down_proj = nn.Parameter(torch.zeros(4, 3, 8))
            self.act_fn = nn.SiLU()

        def forward(self, hidden_states, top_k_index, top_k_weights):
            raise NotImplementedError

    model = nn.Sequential(TransposedExperts())
    with pytest.raises(ValueError, match="is_transposed"):
        split_fused_experts(model)
    assert split_fused_experts(nn.Linear(2, 2)) == 0


def test_moe_expert_set_changes_between_steps():
    """In `moe`, the experts called in some layer differ between steps, and skipped
    experts get no gradient."""
    job = get_workload("moe").build(0)
    calls: list[tuple[int, int]] = []  # (layer, expert) in call order
    for layer_idx, layer in enumerate(job.model.model.layers):
        assert isinstance(layer.mlp.experts, SplitExperts)
        for e, expert in enumerate(layer.mlp.experts):
            assert isinstance(expert, Expert)
            expert.register_forward_hook(lambda *_, key=(layer_idx, e): calls.append(key))

    per_step = []
    for i in range(4):
        calls.clear()
        job.step(i)
        per_step.append(list(calls))
        used = set(calls)
        for layer_idx, layer in enumerate(job.model.model.layers):
            for e, expert in enumerate(layer.mlp.experts):
                assert (expert.gate_up_proj.grad is not None) == ((layer_idx, e) in used)

    num_layers = len(job.model.model.layers)
    sets = [[frozenset(e for l, e in step if l == layer) for step in per_step] for layer in range(num_layers)]
    assert any(len(set(layer_sets)) > 1 for layer_sets in sets)
    assert any(len(s) < 8 for layer_sets in sets for s in layer_sets)  # not every expert every step


def test_layerdrop_skips_different_blocks_and_keeps_names():
    """`layerdrop` runs a different set of blocks across steps, with stable parameter names."""
    job = get_workload("layerdrop").build(0)
    plain = transformers.LlamaForCausalLM(job.model.config)
    assert [n for n, _ in job.model.named_parameters()] == [n for n, _ in plain.named_parameters()]

    ran: list[int] = []
    for k, layer in enumerate(job.model.model.layers):
        layer.register_forward_hook(lambda *_, k=k: ran.append(k))
    per_step = []
    for i in range(6):
        ran.clear()
        job.step(i)
        per_step.append(tuple(ran))
    num_layers = len(job.model.model.layers)
    assert len(set(per_step)) > 1
    assert any(len(s) < num_layers for s in per_step)
    # a skipped block gets no gradient and no optimizer state update
    skipped = set(range(num_layers)) - set(per_step[-1])
    for k in skipped:
        assert job.model.model.layers[k].self_attn.q_proj.weight.grad is None


def test_generate_train_lengths_vary():
    """`generate-train` samples completions whose lengths vary across steps, and
    returns the model to train mode."""
    job = get_workload("generate-train").build(0)
    decode_calls = []  # forward calls in eval mode, one per generated token
    job.model.register_forward_hook(lambda m, *_: decode_calls.append(0) if not m.training else None)
    lengths = []
    for i in range(6):
        decode_calls.clear()
        job.step(i)
        lengths.append(len(decode_calls))
        assert job.model.training
    max_new = job.config["workload"]["max_new_tokens"]
    assert all(1 <= n <= max_new for n in lengths)
    assert len(set(lengths)) > 1


def test_accum_eval_schedule():
    """`accum-eval` runs 4 training micro-steps every step and an eval pass every third step."""
    job = get_workload("accum-eval").build(0)
    modes: list[bool] = []
    job.model.register_forward_hook(lambda m, *_: modes.append(m.training))
    per_step = []
    for i in range(6):
        modes.clear()
        job.step(i)
        per_step.append((modes.count(True), modes.count(False)))
    assert per_step == [(4, 0), (4, 0), (4, 1), (4, 0), (4, 0), (4, 1)]

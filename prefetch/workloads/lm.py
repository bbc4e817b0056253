"""Causal language-model workloads (GPT-2, Llama) and the helpers every family shares.

    prefetch record --workload gpt2 --steps 20 --out traces/gpt2

Each model is a real `transformers` model built from a small config (nothing is
downloaded), trained with AdamW on a seeded synthetic token stream. The batch of step
i is a pure function of (seed, i), so any step can be regenerated on its own.
"""

from __future__ import annotations

import hashlib
import json
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from .base import Job, Workload

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

LEARNING_RATE = 1e-3


# --- helpers shared by every family -------------------------------------------------


def require_transformers() -> ModuleType:
    """The transformers module, imported on first build (not on import, so listing the
    workloads stays fast and works without it)."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "the reference workloads need transformers>=5: pip install 'learned-prefetch[zoo]'"
        ) from e
    return transformers


def step_seed(seed: int, step: int, stream: str = "data") -> int:
    """A 63-bit seed that depends only on (seed, step, stream); streams keep data,
    dropout masks and sampling independent of each other."""
    digest = hashlib.blake2b(f"{seed}:{step}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def step_generator(seed: int, step: int, stream: str = "data") -> torch.Generator:
    """A CPU generator seeded from (seed, step, stream)."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter; per-parameter loops (foreach=False) so the
    optimizer touches parameters, gradients and state one tensor at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.01, foreach=False)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def job_config(model: torch.nn.Module, workload: str, seed: int, **params: Any) -> dict[str, Any]:
    """The model config as a JSON-serialisable dict, plus the workload's own parameters
    under "workload" (name, seed and whatever shapes the data stream)."""
    raw = model.config.to_dict()
    config = {k: v for k, v in raw.items() if _jsonable(v)}
    config["workload"] = {"name": workload, "seed": seed, **params}
    return config


def loss_value(loss: torch.Tensor) -> float:
    """The loss as a Python float. note: CPU-GPU sync point when the loss is on a device."""
    return float(loss.detach().item())


# --- synthetic token stream ---------------------------------------------------------


def synthetic_tokens(
    gen: torch.Generator, batch_size: int, seq_len: int, vocab_size: int, low: int = 0
) -> torch.Tensor:
    """(B, T) int64 token ids in [low, vocab_size): strided runs x_t = a + b*t (mod range)
    with 10% of positions replaced by noise, so there is something to learn.
    Consumes `gen` in a fixed order, so the result is a pure function of its seed."""
    span = vocab_size - low
    start = torch.randint(0, span, (batch_size, 1), generator=gen)  # (B, 1)
    stride = torch.randint(1, 8, (batch_size, 1), generator=gen)  # (B, 1)
    t = torch.arange(seq_len).unsqueeze(0)  # (1, T)
    tokens = (start + stride * t) % span  # (B, T)
    noise = torch.randint(0, span, (batch_size, seq_len), generator=gen)
    noisy = torch.rand(batch_size, seq_len, generator=gen) < 0.1
    return torch.where(noisy, noise, tokens) + low


def lm_step_fn(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    seed: int,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    device: torch.device | str = "cpu",
):
    """One optimizer step per call on a fresh synthetic batch (drawn on the CPU, moved
    to `device`): the plain static loop."""

    def step(i: int) -> float:
        input_ids = synthetic_tokens(step_generator(seed, i), batch_size, seq_len, vocab_size).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        return loss_value(loss)

    return step


# --- model builders -----------------------------------------------------------------


def gpt2_model(
    seed: int, *, vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int
) -> GPT2LMHeadModel:
    """A GPT-2 with dropout off and eager attention, initialised from `seed`."""
    transformers = require_transformers()
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the class name does not say it; silences a warning
    return model


def llama_model(
    seed: int,
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    max_position_embeddings: int,
    bos_token_id: int = 0,
    eos_token_id: int = 1,
    pad_token_id: int | None = None,
) -> LlamaForCausalLM:
    """A Llama with eager attention (no dropout by default), initialised from `seed`."""
    transformers = require_transformers()
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        attention_dropout=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


# --- workloads ----------------------------------------------------------------------

GPT2_SHAPE = dict(vocab_size=1024, n_positions=128, n_embd=384, n_layer=4, n_head=6)
GPT2_DATA = dict(batch_size=4, seq_len=64)


def _static_lm_job(name: str, model: torch.nn.Module, seed: int, shape: dict, data: dict,
                   device: torch.device | str = "cpu") -> Job:
    """The plain loop around a freshly built causal LM: one AdamW step per batch."""
    model.to(device).train()
    optimizer = make_optimizer(model)
    step = lm_step_fn(model, optimizer, seed, vocab_size=shape["vocab_size"], device=device, **data)
    return Job(model, optimizer, step, job_config(model, name, seed, **data))


def build_gpt2(seed: int, device: torch.device | str = "cpu") -> Job:
    return _static_lm_job("gpt2", gpt2_model(seed, **GPT2_SHAPE), seed, GPT2_SHAPE, GPT2_DATA, device)


LLAMA_SHAPE = dict(
    vocab_size=512,
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
LLAMA_DATA = dict(batch_size=4, seq_len=64)


def build_llama(seed: int, device: torch.device | str = "cpu") -> Job:
    return _static_lm_job("llama", llama_model(seed, **LLAMA_SHAPE), seed, LLAMA_SHAPE, LLAMA_DATA, device)


GPT2 = Workload(
    name="gpt2",
    description=f"GPT-2 causal LM ({GPT2_SHAPE['n_layer']} layers, d={GPT2_SHAPE['n_embd']}), AdamW, static access order",
    dynamic=False,
    build=build_gpt2,
)

LLAMA = Workload(
    name="llama",
    description=f"Llama causal LM ({LLAMA_SHAPE['num_hidden_layers']} layers, d={LLAMA_SHAPE['hidden_size']}, GQA), AdamW, "
                "static access order",
    dynamic=False,
    build=build_llama,
)

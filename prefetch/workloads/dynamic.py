"""Workloads whose access order changes from step to step for reasons other than routing.

    prefetch record --workload layerdrop --steps 20 --out traces/layerdrop

- `accum-eval`: gradient accumulation (one optimizer step per 4 micro-steps) with an
  evaluation pass (eval mode, no grad) at the start of every third step.
- `layerdrop`: stochastic depth; each decoder block is skipped with probability 0.3,
  drawn per step from (seed, i).
- `generate-train`: an RL-style loop; each step samples completions of varying length
  with `generate()` (KV cache, eval mode, no grad), then trains on them weighted by a
  synthetic reward. A fixed stop hazard on EOS keeps lengths varied for the whole run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Job, Workload
from .lm import (
    gpt2_model,
    job_config,
    llama_model,
    loss_value,
    make_optimizer,
    require_transformers,
    step_generator,
    step_seed,
    synthetic_tokens,
)

# --- accum-eval ---------------------------------------------------------------------

ACCUM_SHAPE = dict(vocab_size=1024, n_positions=128, n_embd=384, n_layer=3, n_head=6)
ACCUM_DATA = dict(batch_size=2, seq_len=32, accum_steps=4, eval_every=3, eval_batch_size=8)


def build_accum_eval(seed: int, device: torch.device | str = "cpu") -> Job:
    model = gpt2_model(seed, **ACCUM_SHAPE)
    model.to(device).train()
    optimizer = make_optimizer(model)
    vocab = ACCUM_SHAPE["vocab_size"]
    batch_size, seq_len = ACCUM_DATA["batch_size"], ACCUM_DATA["seq_len"]
    accum_steps, eval_every = ACCUM_DATA["accum_steps"], ACCUM_DATA["eval_every"]
    # a fixed held-out batch, a function of the seed only
    eval_ids = synthetic_tokens(step_generator(seed, -1, "eval"), ACCUM_DATA["eval_batch_size"], seq_len, vocab).to(device)

    def step(i: int) -> float:
        if i % eval_every == eval_every - 1:
            model.eval()
            with torch.no_grad():
                model(input_ids=eval_ids, labels=eval_ids)  # the loss is computed, not returned
            model.train()
        gen = step_generator(seed, i)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accum_steps):
            input_ids = synthetic_tokens(gen, batch_size, seq_len, vocab).to(device)  # (B, T)
            loss = model(input_ids=input_ids, labels=input_ids).loss
            (loss / accum_steps).backward()
            total += loss_value(loss)
        optimizer.step()
        return total / accum_steps  # mean training loss over the micro-steps

    return Job(model, optimizer, step, job_config(model, "accum-eval", seed, **ACCUM_DATA))


# --- layerdrop ----------------------------------------------------------------------

_SKIPPABLE_CLASSES: dict[type, type] = {}


def _skippable_class(layer_cls: type) -> type:
    """A subclass of `layer_cls` whose call returns its input unchanged while `skip` is
    set in training mode, before any hook or submodule runs."""
    if layer_cls not in _SKIPPABLE_CLASSES:

        def __call__(self, hidden_states, *args, **kwargs):
            if self.skip and self.training:
                return hidden_states
            return super(cls, self).__call__(hidden_states, *args, **kwargs)

        cls = type(f"Skippable{layer_cls.__name__}", (layer_cls,), {"__call__": __call__, "skip": False})
        cls.__module__ = __name__
        _SKIPPABLE_CLASSES[layer_cls] = cls
    return _SKIPPABLE_CLASSES[layer_cls]


def make_layers_skippable(layers: nn.ModuleList) -> list[nn.Module]:
    """Turn each decoder layer into its skippable subclass in place.

    transformers 5.x decoder layers return the hidden states tensor itself (not a
    tuple) and the model loop passes it positionally, so "skip" is "return the input".
    Swapping the class in place keeps the module tree, parameter names and state_dict
    keys exactly as they were; a skipped layer fires no hooks and touches no tensor.
    """
    for layer in layers:
        if type(layer) not in _SKIPPABLE_CLASSES.values():  # idempotent
            layer.__class__ = _skippable_class(type(layer))
        layer.skip = False
    return list(layers)


LAYERDROP_SHAPE = dict(
    vocab_size=512,
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
LAYERDROP_DATA = dict(batch_size=4, seq_len=64, drop_prob=0.3)


def build_layerdrop(seed: int, device: torch.device | str = "cpu") -> Job:
    model = llama_model(seed, **LAYERDROP_SHAPE)
    layers = make_layers_skippable(model.model.layers)
    model.to(device).train()
    optimizer = make_optimizer(model)
    vocab = LAYERDROP_SHAPE["vocab_size"]
    batch_size, seq_len, drop_prob = LAYERDROP_DATA["batch_size"], LAYERDROP_DATA["seq_len"], LAYERDROP_DATA["drop_prob"]

    def step(i: int) -> float:
        drop = torch.rand(len(layers), generator=step_generator(seed, i, "layerdrop")) < drop_prob
        for layer, skip in zip(layers, drop.tolist()):
            layer.skip = skip
        input_ids = synthetic_tokens(step_generator(seed, i), batch_size, seq_len, vocab).to(device)
        optimizer.zero_grad(set_to_none=True)
        try:
            loss = model(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
        finally:
            for layer in layers:
                layer.skip = False
        optimizer.step()
        return loss_value(loss)

    return Job(model, optimizer, step, job_config(model, "layerdrop", seed, **LAYERDROP_DATA))


# --- generate-train -----------------------------------------------------------------

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


class StopHazard:
    """Logits processor: after the first generated token, set the EOS logit so that
    P(EOS) = `hazard` at every position, whatever the model has learnt.

    Without it, training on its own samples teaches the model to stop at once (in ~30
    steps every completion has 1 token plus EOS) and the workload stops being dynamic;
    with it, completion lengths stay geometric (capped at max_new_tokens) for the run.
    """

    def __init__(self, eos_token_id: int, hazard: float, prompt_len: int) -> None:
        self.eos_token_id = eos_token_id
        self.log_odds = math.log(hazard / (1.0 - hazard))
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # scores (B, V)
        scores = scores.clone()
        if input_ids.shape[1] <= self.prompt_len:  # the first generated token is never EOS
            scores[:, self.eos_token_id] = -math.inf
            return scores
        scores[:, self.eos_token_id] = -math.inf
        others = torch.logsumexp(scores, dim=-1)  # (B,)
        scores[:, self.eos_token_id] = others + self.log_odds
        return scores

GEN_SHAPE = dict(
    vocab_size=256,
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
GEN_DATA = dict(batch_size=4, prompt_len=16, max_new_tokens=20, stop_hazard=0.1)


def build_generate_train(seed: int, device: torch.device | str = "cpu") -> Job:
    model = llama_model(seed, **GEN_SHAPE, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.to(device).train()
    optimizer = make_optimizer(model)
    vocab = GEN_SHAPE["vocab_size"]
    batch_size, prompt_len = GEN_DATA["batch_size"], GEN_DATA["prompt_len"]
    generation_config = require_transformers().GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=GEN_DATA["max_new_tokens"],
        use_cache=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    stop = StopHazard(EOS_ID, GEN_DATA["stop_hazard"], prompt_len)

    def step(i: int) -> float:
        gen = step_generator(seed, i)
        body = torch.randint(EOS_ID + 1, vocab, (batch_size, prompt_len - 1), generator=gen)
        prompt = torch.cat([torch.full((batch_size, 1), BOS_ID), body], dim=1).to(device)  # (B, P)

        # rollout: eval mode, no grad, KV cache; sampling from a seed derived from (seed, i),
        # without disturbing the caller's global RNG
        model.eval()
        devices = [prompt.device] if prompt.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(step_seed(seed, i, "sample"))
            sequences = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                generation_config=generation_config,
                logits_processor=[stop],
            )  # (B, P + N), N <= max_new_tokens, padded with PAD_ID after EOS
        model.train()
        completion = sequences[:, prompt_len:]  # (B, N)

        # tokens up to and including the first EOS are real; later ones are padding
        is_eos = (completion == EOS_ID).int()
        after_eos = (torch.cumsum(is_eos, dim=1) - is_eos) > 0  # (B, N)
        real = ~after_eos
        # synthetic reward in [0, 1]: share of completion tokens in the upper half of the vocab
        upper = ((completion >= vocab // 2) & real).sum(dim=1).float()
        reward = upper / real.sum(dim=1).float()  # (B,)
        weight = 0.5 + reward  # (B,), reward-weighted likelihood

        attention_mask = torch.cat([torch.ones_like(prompt), real.long()], dim=1)  # (B, P + N)
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=sequences, attention_mask=attention_mask).logits  # (B, P + N, V)
        # position t predicts token t + 1: the completion is predicted from P-1 .. P+N-2
        pred = logits[:, prompt_len - 1 : -1].float()  # (B, N, V)
        nll = F.cross_entropy(pred.reshape(-1, vocab), completion.reshape(-1), reduction="none")
        nll = nll.view(completion.shape) * real  # (B, N)
        per_seq = nll.sum(dim=1) / real.sum(dim=1)  # (B,)
        loss = (weight * per_seq).mean()
        loss.backward()
        optimizer.step()
        return loss_value(loss)

    return Job(model, optimizer, step, job_config(model, "generate-train", seed, **GEN_DATA))


ACCUM_EVAL = Workload(
    name="accum-eval",
    description=f"GPT-2 ({ACCUM_SHAPE['n_layer']} layers, d={ACCUM_SHAPE['n_embd']}), {ACCUM_DATA['accum_steps']} micro-steps "
                f"per optimizer step, eval pass every {ACCUM_DATA['eval_every']} steps",
    dynamic=True,
    build=build_accum_eval,
)

LAYERDROP = Workload(
    name="layerdrop",
    description=f"Llama ({LAYERDROP_SHAPE['num_hidden_layers']} layers, d={LAYERDROP_SHAPE['hidden_size']}), each block "
                f"skipped with p={LAYERDROP_DATA['drop_prob']} per step (stochastic depth)",
    dynamic=True,
    build=build_layerdrop,
)

GENERATE_TRAIN = Workload(
    name="generate-train",
    description=f"Llama ({GEN_SHAPE['num_hidden_layers']} layers, d={GEN_SHAPE['hidden_size']}): sample completions with "
                "generate() (KV cache), train on them by reward",
    dynamic=True,
    build=build_generate_train,
)

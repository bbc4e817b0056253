"""Synthetic traces with the recorder's event structure, for tests and quick experiments.

    python -m predictor.synthetic --kind moe --steps 10 --seed 0 --out /tmp/syn/moe

A toy transformer (embedding, `num_layers` blocks of attention + MLP or mixture of
experts, head) emits the events the recorder would: forward reads parameters and writes
activations, backward reads activations and parameters and writes gradients, AdamW
reads gradient and state and writes the parameter; evaluation passes read parameters
only. Kinds of dynamism: `moe` (experts chosen per layer per micro-step, correlated
across layers), `accum` (micro-steps, optionally an evaluation pass every few steps),
`layerdrop` (blocks skipped at random). Tensor ids are given at first access, so two
seeds of a dynamic kind number tensors differently, as real recordings do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.trace_format import Access, Kind, Phase
from runtime.trace_writer import TraceWriter

KINDS = ("static", "moe", "accum", "layerdrop")


@dataclass(kw_only=True)
class SyntheticConfig:
    """The toy model and its dynamism."""

    num_layers: int = 4
    num_experts: int = 0
    """> 0: each block's MLP is a mixture of this many experts."""
    experts_per_layer: int = 2
    """Experts used per layer per micro-step (a random subset, in key order)."""
    expert_stickiness: float = 0.6
    """Chance an expert used at the previous layer is used again (cross-layer correlation)."""
    accum_steps: int = 1
    eval_every: int = 0
    """> 0: an evaluation pass starts every step i with i % eval_every == eval_every - 1."""
    layerdrop: float = 0.0

    @classmethod
    def of_kind(cls, kind: str) -> "SyntheticConfig":
        if kind == "static":
            return cls()
        if kind == "moe":
            return cls(num_experts=8)
        if kind == "accum":
            return cls(num_layers=3, accum_steps=3, eval_every=3)
        if kind == "layerdrop":
            return cls(num_layers=6, layerdrop=0.3)
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {', '.join(KINDS)}")

    def architecture(self) -> str:
        shape = json.dumps({"layers": self.num_layers, "experts": self.num_experts}, sort_keys=True)
        return f"SyntheticLM-{hashlib.sha1(shape.encode()).hexdigest()[:16]}"


def _modules(cfg: SyntheticConfig, layer: int) -> list[tuple[str, list[str]]]:
    p = f"model.layers.{layer}"
    mods = [(f"{p}.attn.qkv", ["weight", "bias"]), (f"{p}.attn.proj", ["weight"])]
    if cfg.num_experts:
        mods.append((f"{p}.mlp.router", ["weight"]))
    else:
        mods += [(f"{p}.mlp.fc", ["weight", "bias"]), (f"{p}.mlp.out", ["weight"])]
    return mods


class _Emitter:
    def __init__(self, writer: TraceWriter, rng: np.random.Generator) -> None:
        self.w = writer
        self.ids: dict[str, int] = {}
        self.seq = 0
        self.time = 0
        self.rng = rng
        self.step = 0
        self.micro = 0

    def tid(self, key: str, kind: Kind, module: str, layer: int) -> int:
        if key not in self.ids:
            self.ids[key] = len(self.ids)
            nbytes = int(65536 * (1 + len(key) % 7))  # all >= MIN_MANAGED_BYTES: every tensor is managed
            self.w.add_tensor(dict(tensor_id=self.ids[key], key=key, kind=int(kind), shape=[nbytes // 4],
                                   dtype="float32", nbytes=nbytes, module=module, layer=layer))  # fmt: skip
        return self.ids[key]

    def ev(self, phase: Phase, kind: Kind, access: Access, key: str, module: str, layer: int) -> None:
        t = self.tid(key, kind, module, layer)
        self.time += 1000
        self.w.add_event((self.step, self.micro, self.seq, int(phase), int(kind), int(access), t,
                          4096, self.time, -1, layer))  # fmt: skip
        self.seq += 1


def write_synthetic_trace(out: str | Path, cfg: SyntheticConfig, *, steps: int, seed: int, name: str = "synthetic") -> Path:
    """Write a trace of `steps` optimizer steps under `out`; return its stem."""
    rng = np.random.default_rng(seed)
    stem = Path(out) / f"{name}-s{seed}"
    manifest = dict(architecture=cfg.architecture(), model_class="SyntheticLM", workload=f"synthetic-{name}",
                    seed=seed, steps=steps, config=asdict(cfg))  # fmt: skip
    w = TraceWriter(stem, manifest)
    em = _Emitter(w, rng)
    P, A, G, O = Kind.PARAMETER, Kind.ACTIVATION, Kind.GRADIENT, Kind.OPTIMIZER_STATE
    R, W = Access.READ, Access.WRITE
    stateful: set[str] = set()
    for step in range(steps):
        em.step, em.seq, em.micro = step, 0, 0
        calls: dict[str, int] = {}
        grads: list[tuple[str, str, int]] = []  # (param name, module, layer), first-gradient order
        seen_grad: set[str] = set()
        if cfg.eval_every and step % cfg.eval_every == cfg.eval_every - 1:
            for module, names, layer in _forward_plan(cfg, rng, train=False):
                for n in names:
                    em.ev(Phase.EVAL, P, R, f"param:{module}.{n}", module, layer)
            em.micro += 1
        for _ in range(cfg.accum_steps):
            plan = _forward_plan(cfg, rng, train=True)
            saved = []
            for module, names, layer in plan:
                for n in names:
                    em.ev(Phase.FORWARD, P, R, f"param:{module}.{n}", module, layer)
                c = calls.get(module, 0)
                calls[module] = c + 1
                act = f"act:{module}:{c}:0"
                em.ev(Phase.FORWARD, A, W, act, module, layer)
                saved.append((module, names, layer, act))
            for module, names, layer, act in reversed(saved):
                em.ev(Phase.BACKWARD, A, R, act, module, layer)
                if module != "model.embed":
                    em.ev(Phase.BACKWARD, P, R, f"param:{module}.{names[0]}", module, layer)
                for n in reversed(names):
                    pname = f"{module}.{n}"
                    em.ev(Phase.BACKWARD, G, W, f"grad:{pname}", module, layer)
                    if pname not in seen_grad:
                        seen_grad.add(pname)
                        grads.append((pname, module, layer))
            em.micro += 1
        order = {name: i for i, name in enumerate(_param_order(cfg))}
        for pname, module, layer in sorted(grads, key=lambda g: order[g[0]]):
            em.ev(Phase.OPTIMIZER, G, R, f"grad:{pname}", module, layer)
            access = R if pname in stateful else W
            em.ev(Phase.OPTIMIZER, O, access, f"opt:{pname}:exp_avg", module, layer)
            em.ev(Phase.OPTIMIZER, O, access, f"opt:{pname}:exp_avg_sq", module, layer)
            em.ev(Phase.OPTIMIZER, P, W, f"param:{pname}", module, layer)
            stateful.add(pname)
        w.flush()
    w.close()
    return stem


def _param_order(cfg: SyntheticConfig) -> list[str]:
    names = ["model.embed.weight"]
    for layer in range(cfg.num_layers):
        for module, ps in _modules(cfg, layer):
            names += [f"{module}.{p}" for p in ps]
        for e in range(cfg.num_experts):
            names += [f"model.layers.{layer}.mlp.experts.{e}.{p}" for p in ("gate_up_proj", "down_proj")]
    return names + ["model.norm.weight", "lm_head.weight"]


def _forward_plan(cfg: SyntheticConfig, rng: np.random.Generator, train: bool) -> list[tuple[str, list[str], int]]:
    """Module calls of one forward pass: (module, parameter names, layer)."""
    plan = [("model.embed", ["weight"], -1)]
    prev: set[int] = set()
    for layer in range(cfg.num_layers):
        if train and cfg.layerdrop and rng.random() < cfg.layerdrop:
            continue
        plan += [(m, ps, layer) for m, ps in _modules(cfg, layer)]
        if cfg.num_experts:
            chosen = {e for e in prev if rng.random() < cfg.expert_stickiness}
            while len(chosen) < cfg.experts_per_layer:
                chosen.add(int(rng.integers(cfg.num_experts)))
            chosen = set(sorted(chosen)[: cfg.experts_per_layer]) if len(chosen) > cfg.experts_per_layer else chosen
            prev = chosen
            for e in sorted(chosen):
                plan.append((f"model.layers.{layer}.mlp.experts.{e}", ["gate_up_proj", "down_proj"], layer))
    plan += [("model.norm", ["weight"], -1), ("lm_head", ["weight"], -1)]
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=KINDS, default="moe")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    print(write_synthetic_trace(args.out, SyntheticConfig.of_kind(args.kind), steps=args.steps, seed=args.seed,
                                name=args.kind))  # fmt: skip


if __name__ == "__main__":
    main()

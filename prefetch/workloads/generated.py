"""Procedurally generated dynamic architectures in plain PyTorch: the generalisation suite's models.

    python benchmarks/generalisation.py --quick
    from prefetch.workloads.generated import generate, generated_workload
    arch = generate(1003); job = generated_workload(1003).build(seed=2)

A *generator seed* fixes an architecture (`generate(seed) -> GeneratedArch`): depth, width,
FFN multiplier, routed experts with top-k and an optional shared expert (routing is
data-dependent: a router Linear scores each token), stochastic depth, gradient
accumulation, an evaluation pass every k steps, several task heads (one drawn per
micro-batch, so the others get no gradient and the optimizer skips them) and an early
exit (after block e an exit head decides, from its own loss against a running mean, to
stop the forward there). A *run seed* (the `seed` of `Workload.build`) fixes the weights
and the data, as for the reference workloads: the same (generator seed, run seed) gives
the same model, batches, skips, routes, exits and losses, bit for bit.

These workloads are deliberately NOT in prefetch.workloads.WORKLOADS (the reference
suites stay seven): the suite measures how the policies do on architectures nobody
tuned them on. Generator seeds 0..99 are for tuning; the suite reports 1000 onwards
(benchmarks/generalisation.py), so what is reported was never tuned on.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Job, Workload
from .lm import loss_value, make_optimizer, step_generator, step_seed

TUNING_SEEDS = range(0, 100)
"""Generator seeds anyone may tune a policy on."""
REPORT_SEEDS = range(1000, 1020)
"""Generator seeds the generalisation suite reports: disjoint from TUNING_SEEDS."""
IN_DIM = 64
"""Input features per token."""


@dataclass(kw_only=True, frozen=True, slots=True)
class GeneratedArch:
    """One generated architecture (drawn by `generate`; every field checked here)."""

    seed: int
    """The generator seed it was drawn from (names the workload: gen-<seed>)."""
    depth: int
    """Residual blocks."""
    width: int
    """Hidden size."""
    ffn_mult: int
    """An MLP's inner size over the width."""
    num_experts: int
    """Routed experts per MoE block; 0: every block is a dense MLP."""
    top_k: int
    """Experts each token is routed to (0 when dense)."""
    shared_expert: bool
    """An MoE block also runs one always-on MLP (DeepSeek-style)."""
    moe_every: int
    """Every moe_every-th block (from the first) is MoE, the others dense."""
    drop_prob: float
    """Stochastic depth: each block is skipped with this probability per micro-batch (training only)."""
    accum_steps: int
    """Micro-batches per optimizer step."""
    eval_every: int
    """An evaluation pass (eval mode, no grad, every head) at the start of every eval_every-th step; 0: never."""
    num_heads: int
    """Task heads; each micro-batch trains one, drawn from the data stream."""
    num_classes: int
    """Classes per task head."""
    exit_after: int
    """Early exit after this block (1-based); 0: none."""
    batch_size: int
    tokens: int
    """Tokens per example; batch_size * tokens tokens are routed per micro-batch."""

    def __post_init__(self) -> None:
        checks = [
            (self.depth >= 1, "depth must be >= 1"),
            (self.width >= 8 and self.width % 8 == 0, "width must be a positive multiple of 8"),
            (self.ffn_mult >= 1, "ffn_mult must be >= 1"),
            (self.num_experts == 0 or self.num_experts >= 2, "num_experts must be 0 (dense) or >= 2"),
            ((self.num_experts == 0) == (self.top_k == 0), "top_k must be 0 exactly when dense"),
            (self.top_k <= self.num_experts, "top_k must be <= num_experts"),
            (self.num_experts > 0 or not self.shared_expert, "a shared expert needs routed experts"),
            (self.moe_every >= 1, "moe_every must be >= 1"),
            (0.0 <= self.drop_prob < 1.0, "drop_prob must be in [0, 1)"),
            (self.accum_steps >= 1, "accum_steps must be >= 1"),
            (self.eval_every >= 0, "eval_every must be >= 0"),
            (self.num_heads >= 1 and self.num_classes >= 2, "num_heads >= 1 and num_classes >= 2 are required"),
            (0 <= self.exit_after < self.depth, "exit_after must be in [0, depth)"),
            (self.batch_size >= 1 and self.tokens >= 1, "batch_size and tokens must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"GeneratedArch(seed={self.seed}): {msg}")

    @property
    def name(self) -> str:
        return f"gen-{self.seed}"

    def features(self) -> list[str]:
        """The dynamic features this architecture has (for tables and the coverage test)."""
        out = []
        if self.num_experts:
            out.append(f"moe{self.num_experts}/top{self.top_k}" + ("+shared" if self.shared_expert else ""))
        if self.drop_prob:
            out.append(f"drop{self.drop_prob:g}")
        if self.accum_steps > 1:
            out.append(f"accum{self.accum_steps}")
        if self.eval_every:
            out.append(f"eval/{self.eval_every}")
        if self.num_heads > 1:
            out.append(f"heads{self.num_heads}")
        if self.exit_after:
            out.append(f"exit@{self.exit_after}")
        return out

    def describe(self) -> str:
        return f"{self.depth}x{self.width} " + (" ".join(self.features()) or "static")


def generate(seed: int) -> GeneratedArch:
    """The architecture of generator seed `seed` (pure: the same seed, the same architecture).

    Each feature is drawn independently, mostly with probability 1/2 to 2/3, so twenty
    seeds cover every feature and most combinations. Sizes keep a step within 3-80 ms on
    one CPU thread (report seeds, measured on a loaded 2-core box; most 10-40 ms) and every
    block's weight matrices above the managed-tensor floor (64 KiB; small heads, routers
    and the embedding may fall below it and stay resident)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"generator seed must be an int >= 0, got {seed!r}")
    rng = random.Random(f"prefetch-generated:{seed}")  # str seeds hash with sha512: stable across runs
    depth = rng.randint(2, 6)
    num_experts = rng.choice([0, 4, 4, 6, 8, 8])  # 2/3 MoE
    top_k = min(rng.choice([1, 2, 2]), num_experts) if num_experts else 0
    return GeneratedArch(
        seed=seed,
        depth=depth,
        width=rng.choice([128, 192, 256]),
        ffn_mult=rng.choice([2, 3, 4]),
        num_experts=num_experts,
        top_k=top_k,
        shared_expert=bool(num_experts) and rng.random() < 0.5,
        moe_every=rng.choice([1, 1, 2]) if num_experts else 1,
        drop_prob=rng.choice([0.0, 0.1, 0.2, 0.3]),
        accum_steps=rng.choice([1, 1, 2, 3, 4]),
        eval_every=rng.choice([0, 0, 2, 3, 4]),
        num_heads=rng.choice([1, 2, 3, 4]),
        num_classes=rng.choice([16, 32, 64]) * 4,
        exit_after=rng.randrange(1, depth) if rng.random() < 0.5 else 0,
        batch_size=rng.choice([1, 2]),
        tokens=rng.choice([4, 6, 8]),
    )


# --- the model -------------------------------------------------------------------------------


class MLP(nn.Module):
    """down(gelu(up(x))): a dense block's FFN, one expert, or the shared expert."""

    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, inner)
        self.down = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, W) -> (N, W)
        return self.down(F.gelu(self.up(x)))


class RoutedExperts(nn.Module):
    """Top-k routed experts (softmax router, renormalised weights), plus an optional shared expert.

    Only experts that receive a token are called, so which expert parameters are read
    (forward, backward, optimizer) depends on the data: the access order a prefetcher faces."""

    def __init__(self, width: int, inner: int, num_experts: int, top_k: int, shared: bool) -> None:
        super().__init__()
        self.router = nn.Linear(width, num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(width, inner) for _ in range(num_experts))
        self.shared = MLP(width, inner) if shared else None
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, W) -> (N, W)
        probs = F.softmax(self.router(x), dim=-1)  # (N, E)
        weights, index = probs.topk(self.top_k, dim=-1)  # (N, K) each
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        # note: CPU-GPU sync point (unique, where): the routed set decides the control flow
        for e in torch.unique(index).tolist():  # ascending
            rows, slot = torch.where(index == e)
            out = out.index_add(0, rows, self.experts[e](x[rows]) * weights[rows, slot, None])
        return out + self.shared(x) if self.shared is not None else out


class Block(nn.Module):
    """Pre-norm residual block: x + ffn(norm(x)), the FFN dense or routed."""

    def __init__(self, arch: GeneratedArch, moe: bool) -> None:
        super().__init__()
        inner = arch.width * arch.ffn_mult
        self.norm = nn.LayerNorm(arch.width)
        self.ffn = (RoutedExperts(arch.width, inner, arch.num_experts, arch.top_k, arch.shared_expert)
                    if moe else MLP(arch.width, inner))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(self.norm(x))


class GeneratedNet(nn.Module):
    """embed -> blocks (some skipped, maybe exiting early) -> mean over tokens -> one task head."""

    def __init__(self, arch: GeneratedArch) -> None:
        super().__init__()
        self.arch = arch
        self.embed = nn.Linear(IN_DIM, arch.width)
        self.blocks = nn.ModuleList(
            Block(arch, moe=arch.num_experts > 0 and b % arch.moe_every == 0) for b in range(arch.depth))
        self.norm = nn.LayerNorm(arch.width)
        self.heads = nn.ModuleList(nn.Linear(arch.width, arch.num_classes) for _ in range(arch.num_heads))
        self.exit_head = nn.Linear(arch.width, arch.num_classes) if arch.exit_after else None
        self.exit_mean: float | None = None
        """Running mean of the exit head's training loss: exit when this batch's is below it."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, head: int,
                skip: list[bool] | None = None) -> tuple[torch.Tensor, bool]:
        """(loss, exited) for inputs x (B, T, IN_DIM), labels y (B,), task head `head`.

        Early exit (training only): after block `exit_after` the exit head's loss is
        compared with its running mean; below it, the rest of the network is not run and
        the exit loss is the loss (else it is added, weighted 0.3). The decision reads the loss (a sync point), so it is
        data-dependent and deterministic, and about half the batches exit all run long."""
        B, T, _ = x.shape
        exit_loss = None
        h = self.embed(x).reshape(B * T, -1)  # (N, W): tokens routed independently
        for b, block in enumerate(self.blocks):
            if not (skip and skip[b]):
                h = block(h)
            if self.exit_head is not None and self.training and b + 1 == self.arch.exit_after:
                exit_loss = F.cross_entropy(self.exit_head(h.view(B, T, -1).mean(dim=1)), y)
                value = loss_value(exit_loss)  # note: sync point: the exit decision reads the loss
                mean, self.exit_mean = self.exit_mean, value if self.exit_mean is None else 0.8 * self.exit_mean + 0.2 * value
                if mean is not None and value < mean:
                    return exit_loss, True
        logits = self.heads[head](self.norm(h).view(B, T, -1).mean(dim=1))  # (B, C)
        loss = F.cross_entropy(logits, y)
        return (loss if exit_loss is None else loss + 0.3 * exit_loss), False


def _batch(gen: torch.Generator, arch: GeneratedArch, proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(x (B, T, IN_DIM), y (B,), head): labels are a fixed random projection's argmax, per head."""
    head = int(torch.randint(arch.num_heads, (1,), generator=gen))
    x = torch.randn(arch.batch_size, arch.tokens, IN_DIM, generator=gen)
    y = (x.mean(dim=1) @ proj[head]).argmax(dim=-1)  # (B,)
    return x, y, head


def build_generated(arch: GeneratedArch, seed: int, device: torch.device | str = "cpu") -> Job:
    """The training job of `arch` with run seed `seed` (weights, data, skips: all from (seed, step))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(seed, -1, f"init:{arch.seed}"))
        model = GeneratedNet(arch)
    model.to(device).train()
    optimizer = make_optimizer(model)
    proj = torch.randn(arch.num_heads, IN_DIM, arch.num_classes, generator=step_generator(seed, -1, "labels"))
    eval_x, eval_y, _ = _batch(step_generator(seed, -1, "eval"), arch, proj)
    eval_x, eval_y = eval_x.to(device), eval_y.to(device)

    def step(i: int) -> float:
        if arch.eval_every and i % arch.eval_every == arch.eval_every - 1:
            model.eval()
            with torch.no_grad():
                for head in range(arch.num_heads):  # every head, no skips, no exit
                    model(eval_x, eval_y, head)
            model.train()
        gen = step_generator(seed, i)
        drops = step_generator(seed, i, "drop")
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(arch.accum_steps):
            x, y, head = _batch(gen, arch, proj)
            skip = (torch.rand(arch.depth, generator=drops) < arch.drop_prob).tolist() if arch.drop_prob else None
            loss, _ = model(x.to(device), y.to(device), head, skip)
            (loss / arch.accum_steps).backward()
            total += loss_value(loss)
        optimizer.step()
        return total / arch.accum_steps

    config = {"generated": asdict(arch), "workload": {"name": arch.name, "seed": seed}}
    return Job(model, optimizer, step, config)


def workload_for(arch: GeneratedArch) -> Workload:
    """The Workload of a given architecture (named gen-<generator seed>)."""
    return Workload(
        name=arch.name,
        description=f"generated: {arch.describe()}",
        dynamic=True,
        build=lambda seed, device="cpu": build_generated(arch, seed, device),
    )


def generated_workload(seed: int) -> Workload:
    """The Workload of generator seed `seed` (not in the reference registry)."""
    return workload_for(generate(seed))


__all__ = ["GeneratedArch", "GeneratedNet", "REPORT_SEEDS", "TUNING_SEEDS", "build_generated", "generate",
           "generated_workload", "workload_for"]

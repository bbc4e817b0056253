"""Router lookahead for mixture-of-experts models: which experts run next, said before they run.

    layers = find_routers(model)                       # or find_routers(model, ["model.layers.0.mlp.gate", ...])
    look = RouterLookahead(layers, param_ids, sink)    # sink(want, skip): tensor ids
    look.attach(wrap)                                  # ... look.detach()

A routed layer's experts are chosen by its router moments before they run, so a policy that
learned the access order cannot know them in advance (issue 11, item 3). Two things can be
known early, and a router hook says both:
- *this* layer's choice (depth 0), exactly, as soon as its router has scored the tokens: the
  experts that will run (`want`) and, as useful, those that will not (`skip`), whose queued
  copies would only take the link from something needed;
- the next layers' choice (depth 1..`depth`), predicted by applying *their* routers to this
  layer's input: the residual stream changes little from one layer to the next (inference
  offloaders report 80-97% one-layer-ahead accuracy with this; Eliseev & Mazur 2023,
  Pre-gated MoE, Hobbit). Their router weights are read from private copies taken when each
  router last ran (one optimizer step stale at most: a prediction, not a computation).

Nothing the model computes changes: the hook reads its input and the router's weight under
no_grad, computes on private tensors and draws no random numbers. Its price is one small
matmul and a top-k per layer and depth, plus a device-to-host read of the chosen indices
(on CUDA a sync point, next to the one every eager MoE loop already has to pick its experts).
Measured in benchmarks/router_lookahead.py.

Finding routers (`find_routers`): a module with a child whose 2-D `weight` has one row per
expert (the router, `nn.Linear(H, E)` or transformers' `*TopKRouter`) and a `ModuleList` child
of that many sibling modules with parameters (the experts), and a top-k from its `top_k` /
`num_experts_per_tok` or its router's. That covers transformers' Mixtral, Qwen-MoE and OLMoE
once their fused experts are split (prefetch.workloads.moe.split_fused_experts), and plain
PyTorch written the usual way. When it finds nothing, name the routers:
`prefetching(..., routers=["blocks.0.ffn.router", ...])` (`path:K` gives the top-k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_graph_task_id = torch._C._current_graph_task_id  # -1 outside autograd's backward (a recompute runs inside)

AUTO = "auto"
OFF = "off"
DEFAULT_DEPTH = 2
"""Layers ahead predicted at each router (besides its own layer's exact choice)."""
_EXPERT_LISTS = (nn.ModuleList,)


class RouterError(ValueError):
    """A router named by the user that is not one (the message names it and why)."""


@dataclass(frozen=True)
class RoutedLayer:
    """One routed block: its router (scores each token: a 2-D weight, one row per expert) and its experts."""

    path: str
    """The router's module path."""
    router: nn.Module
    experts: tuple[nn.Module, ...]
    top_k: int

    @property
    def num_experts(self) -> int:
        return len(self.experts)


def _weight(router: nn.Module) -> torch.Tensor | None:
    w = getattr(router, "weight", None)
    return w if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def _top_k(block: nn.Module, router: nn.Module, model: nn.Module) -> int | None:
    for obj in (block, router, getattr(model, "config", None)):
        for name in ("top_k", "num_experts_per_tok"):
            k = getattr(obj, name, None)
            if isinstance(k, int) and not isinstance(k, bool) and k > 0:
                return k
    return None


def _experts_of(block: nn.Module, num: int) -> tuple[nn.Module, ...] | None:
    """The block's child list of `num` sibling experts with parameters, if it has one."""
    for child in block.children():
        if isinstance(child, _EXPERT_LISTS) and len(child) == num and num > 1:
            kids = list(child)
            if all(next(k.parameters(), None) is not None for k in kids) and len({type(k) for k in kids}) == 1:
                return tuple(kids)
    return None


def _routed(model: nn.Module, block: nn.Module, router_path: str, router: nn.Module,
            top_k: int | None) -> RoutedLayer | str:
    """The routed layer `router` (a child of `block`) decides for, or why it is none."""
    w = _weight(router)
    if w is None:
        return "it has no 2-D weight (one row per expert)"
    experts = _experts_of(block, w.shape[0])
    if experts is None:
        return f"its parent has no list of {w.shape[0]} sibling expert modules (one per row of its weight)"
    k = top_k or _top_k(block, router, model)
    if k is None:
        return "its top-k is unknown (no top_k / num_experts_per_tok): give it as PATH:K"
    if not 0 < k <= len(experts):
        return f"top-k {k} is not in 1..{len(experts)}"
    return RoutedLayer(router_path, router, experts, k)


def find_routers(model: nn.Module, routers: str | Sequence[str] | None = AUTO) -> list[RoutedLayer]:
    """The model's routed layers in forward (registration) order.

    routers: "auto" (find them: module docstring), "off" or None (none), or the router
    modules' paths, each optionally `PATH:K` with its top-k; a named path that is not a
    router raises RouterError naming it and why."""
    if routers is None or routers == OFF:
        return []
    modules = dict(model.named_modules())
    if routers == AUTO:
        found = []
        for path, block in modules.items():
            for name, child in block.named_children():
                if _weight(child) is None:
                    continue
                layer = _routed(model, block, f"{path}.{name}" if path else name, child, None)
                if isinstance(layer, RoutedLayer):
                    found.append(layer)
        return found
    if isinstance(routers, str):
        routers = [r for r in routers.split(",") if r]
    found = []
    for spec in routers:
        path, _, k = spec.partition(":")
        if path not in modules or not path:
            raise RouterError(f"router {path!r}: no such module in {type(model).__name__}")
        if k and not k.isdigit():
            raise RouterError(f"router {spec!r}: the top-k after ':' must be a positive integer")
        parent = modules[path.rpartition(".")[0]]
        layer = _routed(model, parent, path, modules[path], int(k) if k else None)
        if isinstance(layer, str):
            raise RouterError(f"router {path!r}: {layer}")
        found.append(layer)
    return found


class RouterLookahead:
    """Forward hooks on each router that tell `sink(want, skip)` which experts' parameters
    are read next (module docstring). `param_ids(module)` names a module's parameters as
    tensor ids; `sink` is the device tier's hint (runtime.store.TensorStore.hint)."""

    def __init__(self, layers: Sequence[RoutedLayer], param_ids: Callable[[nn.Module], list[int]],
                 sink: Callable[[list[int], list[int]], None], depth: int = DEFAULT_DEPTH,
                 clock: Callable[[], int] | None = None):
        if depth < 0:
            raise ValueError(f"router lookahead depth must be >= 0, got {depth}")
        self.layers = list(layers)
        self.depth = depth
        self.sink = sink
        self.clock = clock
        """Read first in each hook: on the simulated device, one read fixes the hook's time
        (runtime.link.ComputeClock.now_ns), so the hints' copies start when the router ran,
        not after the lookahead's own arithmetic (which is bookkeeping, off the clock)."""
        self._ids = [[param_ids(e) for e in layer.experts] for layer in self.layers]
        self._shadow: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(self.layers)
        self._handles: list[Any] = []
        self.hints = 0
        """Hints given (one per layer and depth at each router call)."""
        self.on_choice: Callable[[int, int, set[int]], None] | None = None
        """Told (layer, depth, experts chosen) at each hint, when set: benchmarks/router_lookahead.py
        scores the predictions against each layer's own choice."""

    def attach(self, wrap: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda fn: fn) -> "RouterLookahead":
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.router.register_forward_hook(wrap(self._hook(i))))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i: int) -> Callable[..., None]:
        router = self.layers[i].router

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            w = _weight(router)
            if (not args or not isinstance(args[0], torch.Tensor) or w is None or args[0].shape[-1] != w.shape[1]
                    or _graph_task_id() != -1):
                return  # no hidden state of the router's width, or a recompute inside backward (already said)
            if self.clock is not None:
                self.clock()
            with torch.no_grad():
                x = args[0].detach().reshape(-1, w.shape[1])
                bias = getattr(router, "bias", None)
                self._say(i, 0, x, w, bias if isinstance(bias, torch.Tensor) else None)
                for d in range(1, self.depth + 1):
                    shadow = self._shadow[i + d] if i + d < len(self.layers) else None
                    if shadow is not None and shadow[0].shape[1] == x.shape[1]:
                        self._say(i + d, d, x, *shadow)
                self._shadow[i] = (w.detach().clone(), bias.detach().clone() if isinstance(bias, torch.Tensor) else None)

        return hook

    def _say(self, j: int, d: int, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Layer j's experts for the tokens `x`, by router weight `w` (d layers ahead): want the chosen, skip the rest."""
        layer = self.layers[j]
        logits = F.linear(x.to(w.dtype), w, bias)
        chosen = set(torch.topk(logits, layer.top_k, dim=-1).indices.flatten().tolist())
        ids = self._ids[j]
        want = [t for e in sorted(chosen) for t in ids[e]]
        skip = [t for e in range(len(ids)) if e not in chosen for t in ids[e]]
        self.hints += 1
        if self.on_choice is not None:
            self.on_choice(j, d, chosen)
        self.sink(want, skip)

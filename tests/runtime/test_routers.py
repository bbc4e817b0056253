"""runtime.routers: routers found in transformers and plain PyTorch models, hints that name the
experts that run, nothing computed changed, and hints kept in traces and replayed by the simulator."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from predictor.guard import guarded
from predictor.policies import make_policy
from prefetch.simulate import simulate, simulate_like_run
from prefetch.workloads.generated import RoutedExperts
from runtime.hint_schedule import MANIFEST_KEY
from runtime.prefetcher import prefetching
from runtime.recorder import record
from runtime.routers import RouterError, RouterLookahead, find_routers
from runtime.trace_format import load_trace


class Net(nn.Module):
    """Blocks of routed experts (plain PyTorch, prefetch.workloads.generated's), dropout between:
    randomness a hook must not disturb. Width 128: each expert matrix is 128 KiB, managed."""

    def __init__(self, width: int = 128, layers: int = 3, experts: int = 4, top_k: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(RoutedExperts(width, 2 * width, experts, top_k, shared=False) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in zip(self.norms, self.blocks):
            x = x + self.drop(block(norm(x)))
        return self.head(x).pow(2).mean()


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def _batch(i: int) -> torch.Tensor:
    return torch.randn(6, 128, generator=torch.Generator().manual_seed(100 + i))


def _train(model: Net, steps: int, ctx=None) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    torch.manual_seed(7)  # dropout's draws
    with ctx(model, opt) if ctx is not None else _null():
        for i in range(steps):
            loss = model(_batch(i))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    return losses


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _hinted() -> object:
    """A policy that takes router hints: replay under the guard (no link: no shadows)."""
    return guarded(make_policy("replay", lookahead=64), lookahead=64)


def test_finds_plain_pytorch_routers_in_forward_order():
    layers = find_routers(_net())
    assert [l.path for l in layers] == ["blocks.0.router", "blocks.1.router", "blocks.2.router"]
    assert all(l.top_k == 2 and l.num_experts == 4 for l in layers)


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "olmoe"])
def test_finds_transformers_routers_once_experts_are_split(kind):
    """transformers' MoE families: the router (`mlp.gate`) and its top-k from the config, once the
    fused experts are split per expert; fused, there is no expert to prefetch alone: none found."""
    pytest.importorskip("transformers")
    from tests.prefetch.test_workloads import _tiny_moe
    from prefetch.workloads import split_fused_experts

    model = _tiny_moe(kind)
    assert find_routers(model) == []
    split_fused_experts(model)
    layers = find_routers(model)
    assert [l.path for l in layers] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    assert all(l.top_k == 2 and l.num_experts == 4 for l in layers)


def test_named_routers_and_clear_errors():
    model = _net()
    (layer,) = find_routers(model, ["blocks.1.router:1"])
    assert layer.path == "blocks.1.router" and layer.top_k == 1
    assert find_routers(model, "off") == [] and find_routers(model, None) == []
    with pytest.raises(RouterError, match="'blocks.9.router': no such module"):
        find_routers(model, ["blocks.9.router"])
    with pytest.raises(RouterError, match="'blocks.0.experts.0.up'.*no list of 256 sibling expert modules"):
        find_routers(model, ["blocks.0.experts.0.up"])
    with pytest.raises(RouterError, match="'blocks.0': it has no 2-D weight"):
        find_routers(model, "blocks.0")
    with pytest.raises(RouterError, match="top-k 5 is not in 1..4"):
        find_routers(model, ["blocks.0.router:5"])


def test_hints_name_the_experts_that_run_and_predict_the_next_layers():
    """At each router: its own layer's experts, exactly (want: those that run; skip: the rest),
    then the next two layers' predicted with their routers' weights from the last forward."""
    model = _net()
    ids = {id(p): i for i, p in enumerate(model.parameters())}
    hints: list[tuple[list[int], list[int]]] = []
    look = RouterLookahead(find_routers(model), lambda m: [ids[id(p)] for p in m.parameters()],
                           lambda want, skip: hints.append((want, skip)), depth=2).attach()
    ran: list[set[int]] = [set() for _ in model.blocks]
    for layer, block in enumerate(model.blocks):
        for expert in block.experts:
            expert.register_forward_pre_hook(
                lambda m, a, layer=layer: ran[layer].update(ids[id(p)] for p in m.parameters()))
    experts = [{ids[id(p)] for e in b.experts for p in e.parameters()} for b in model.blocks]
    for i, (own, predicted) in enumerate([((0, 1, 2), {}), ((0, 3, 5), {1: 1, 2: 2, 4: 2})]):
        hints.clear()
        for r in ran:
            r.clear()
        model(_batch(i))
        assert len(hints) == len(own) + len(predicted)  # the first forward: no router weights seen yet
        for layer, k in enumerate(own):
            want, skip = hints[k]
            assert set(want) == ran[layer] and set(want) | set(skip) == experts[layer] and not set(want) & set(skip)
        for k, layer in predicted.items():
            want, skip = hints[k]
            assert set(want) | set(skip) == experts[layer] and not set(want) & set(skip) and want
    look.detach()
    assert look.hints == 3 + 6


def test_the_lookahead_changes_nothing_computed():
    """Losses and parameters bit for bit with and without the hooks (dropout's draws included):
    they read under no_grad, compute on their own tensors and draw no random numbers."""
    plain = _net()
    hooked = copy.deepcopy(plain)
    look = RouterLookahead(find_routers(hooked), lambda m: [0], lambda want, skip: None).attach()
    assert _train(hooked, 4) == _train(plain, 4)
    assert look.hints > 0
    for a, b in zip(plain.parameters(), hooked.parameters()):
        assert torch.equal(a, b)


def test_prefetching_takes_hints_keeps_them_and_its_simulation_replays_them(tmp_path):
    """A policy that takes hints: the run is bit-identical to all resident, its report counts the
    hints, its own trace keeps them, and the simulation of that trace takes the same hints and
    agrees with the run; a policy that takes none gets no router hooks."""
    plain = _train(_net(), 5)
    report = {}

    def ctx(model, opt):
        return _Prefetch(model, opt, tmp_path, report)

    assert _train(_net(), 5, ctx) == plain
    live = report["report"]
    assert live["routers"]["layers"] == 3 and live["routers"]["hints_taken"]
    assert live["router_hints"] > 0
    trace = load_trace(report["stem"])
    assert MANIFEST_KEY in trace.manifest
    sim = simulate_like_run(live, trace, policy=_hinted()).as_dict()
    assert sim["router_hints"] == live["router_hints"] and sim["hint_cancelled"] == live["hint_cancelled"]
    assert abs(sim["hit_rate"] - live["hit_rate"]) <= 0.01

    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with prefetching(model, opt, policy="replay", device="simulated") as pf:
        model(_batch(0)).backward()
        opt.step()
    r = pf.report()
    assert r["routers"]["hints_taken"] is False and r["router_hints"] == 0


class _Prefetch:
    def __init__(self, model, opt, out, report):
        self.cm = prefetching(model, opt, policy=_hinted(), budget=0.4, device="simulated", trace_out=out)
        self.report = report

    def __enter__(self):
        self.pf = self.cm.__enter__()
        return self.pf

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        self.report["report"] = self.pf.report()
        self.report["stem"] = self.pf.trace_stem
        return False


def test_a_recorded_trace_keeps_hints_that_only_hint_takers_use(tmp_path):
    """runtime.record keeps the hints (by event, on the events' clock); simulating the trace, a
    policy that takes hints gets them at those events, the simple policies do not."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with record(model, opt, out=tmp_path) as rec:
        for i in range(4):
            model(_batch(i)).backward()
            opt.step()
            opt.zero_grad()
    trace = load_trace(rec.stem)
    hints = trace.manifest[MANIFEST_KEY]
    assert len(hints["at"]) == 3 + 3 * 6  # each router: its own layer; from the second forward, 2 ahead too
    assert hints["at"] == sorted(hints["at"]) and hints["at"][-1] < trace.num_events
    assert simulate(trace, _hinted()).router_hints > 0
    assert simulate(trace, "replay").router_hints == 0
    from prefetch.trace_summary import format_summary, summarize

    assert "router hints  21 " in format_summary(summarize(trace))  # `prefetch trace info` says so


def test_a_malformed_hint_list_is_named(tmp_path):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with record(model, opt, out=tmp_path) as rec:
        model(_batch(0)).backward()
        opt.step()
    manifest = rec.stem.with_name(rec.stem.name + ".manifest.json")
    data = json.loads(manifest.read_text())
    data[MANIFEST_KEY]["want"][0] = [10**6]
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"router_hints: hint 0 must list tensor ids in 0\.\."):
        simulate(load_trace(rec.stem), _hinted(), warmup_steps=0)

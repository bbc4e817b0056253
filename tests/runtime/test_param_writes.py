"""Writes to parameters outside the optimizer never make a prefetched run diverge.

Each test runs one small training loop twice, all resident and under
`runtime.prefetching` on the simulated device, with the same user write after every
`optimizer.step()` (clamp, `load_state_dict`, an EMA swap-in for evaluation, weight
tying, `p.data = ...`), and asserts losses, final parameters and optimizer state are
bit-identical, for every policy (learned: a tiny artifact trained here, served by a
local daemon). The store must see the writes (parameter version counters) and never
bind a copy taken before them, nor drop a device copy the user wrote to.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Callable

import pytest
import torch

from predictor.train import TrainConfig, train
from runtime.daemon_launch import start_local_daemon
from runtime.link import LinkModel
from runtime.prefetcher import prefetching
from runtime.recorder import record

V, D, H = 512, 128, 512  # every weight 256 KiB: managed (>= 64 KiB); biases and norms stay resident
STEPS = 6
POLICIES = ["none", "replay", "markov", "learned"]


class TinyLM(torch.nn.Module):
    """Embedding, three MLP blocks, a head (tied to the embedding when `tie`)."""

    def __init__(self, tie: bool = False) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(V, D)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.GELU(), torch.nn.Linear(H, D)) for _ in range(3)
        )
        self.norm = torch.nn.LayerNorm(D)
        self.head = torch.nn.Linear(D, V, bias=False)
        if tie:
            self.head.weight = self.emb.weight  # two modules, one Parameter

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)  # (B, T, D)
        for b in self.blocks:
            x = x + b(x)
        return self.head(self.norm(x))  # (B, T, V)


Write = Callable[[torch.nn.Module, int, Callable[[], float], object], None]
"""A user's write after optimizer step `i`: (model, i, run an eval pass, the Prefetcher or None)."""


def _clamp(pause_s: float = 0.0) -> Write:
    def write(model, i, evaluate, pf):
        if i < 0:
            return
        time.sleep(pause_s)  # user code between steps: the prefetches of the next step land meanwhile
        with torch.no_grad():
            for p in model.parameters():
                p.clamp_(-0.05, 0.05)
    return write


def _load_state_dict(pause_s: float = 0.0) -> Write:
    snap: dict[str, torch.Tensor] = {}

    def write(model, i, evaluate, pf):
        if i == 1:
            snap.update({k: v.clone() for k, v in model.state_dict().items()})
        if i in (3, 4):
            time.sleep(pause_s)
            model.load_state_dict(snap)  # rewind to the step-1 checkpoint (twice)
    return write


def _ema_swap() -> Write:
    ema: list[torch.Tensor] = []

    def write(model, i, evaluate, pf):
        params = list(model.parameters())
        if i < 0:
            return
        if not ema:
            ema.extend(p.detach().clone() for p in params)
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 0.25)
            if i % 2 == 1:  # evaluate the EMA weights, then put the trained ones back
                backup = [p.detach().clone() for p in params]
                for p, e in zip(params, ema):
                    p.copy_(e)
                evaluate()
                for p, b in zip(params, backup):
                    p.copy_(b)  # some params are bound to device copies now: those copies are written
    return write


def _reassign() -> Write:
    def write(model, i, evaluate, pf):
        if i < 0:
            return
        if i % 2 == 1:
            evaluate()  # binds device copies first: the reassignment then replaces those
        for name, p in model.named_parameters():
            if name.endswith("weight") and i % 2 == (0 if name.startswith("blocks") else 1):
                p.data = p.detach() * 0.9  # a new tensor, not a write into the old one
    return write


def _data_clamp() -> Write:
    def write(model, i, evaluate, pf):
        if i < 0:
            return
        if i % 2 == 1:
            evaluate()  # some params bound to device copies: the clamp below writes those
        time.sleep(0.05)  # the next step's copies land first
        for p in model.parameters():
            p.data.clamp_(-0.05, 0.05)  # through the .data alias: no version counter moves
        if pf is not None:
            pf.params_written()
    return write


def _max_norm_hook() -> Write:
    """A constraint applied in forward pre-hooks registered before `prefetching` (so they
    run before the store's): the write lands while the weight's copy is in flight."""
    def clamp(module, args):
        with torch.no_grad():
            module.weight.clamp_(-0.05, 0.05)

    def write(model, i, evaluate, pf):
        if i < 0:  # setup, before training
            for block in model.blocks:
                block[0].register_forward_pre_hook(clamp)
    return write


SCENARIOS: dict[str, tuple[bool, Callable[[], Write], float]] = {  # name: (tied, write, budget)
    "clamp": (False, _clamp, 0.4),
    "load_state_dict": (False, _load_state_dict, 0.4),
    "ema_swap": (False, _ema_swap, 0.4),
    "ema_swap_all_fit": (False, _ema_swap, 1.0),  # written device copies are hit again before eviction
    "tied_clamp": (True, _clamp, 0.4),
    "reassign": (False, _reassign, 0.4),
    "data_clamp": (False, _data_clamp, 0.4),
    "max_norm_hook": (False, _max_norm_hook, 0.4),
    "clamp_pause": (False, lambda: _clamp(0.05), 0.4),
    "load_state_dict_pause": (False, lambda: _load_state_dict(0.05), 0.4),
}


def _job(tie: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = TinyLM(tie)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    x_eval = torch.randint(0, V, (8, 16), generator=torch.Generator().manual_seed(99))
    return model, opt, g, x_eval


def _loss(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    logits = model(idx)
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1))


def _run(scenario: str, pf_kwargs: dict | None):
    """(losses, {param name: tensor}, [optimizer state tensors], report or None, Prefetcher or None)."""
    tie, make_write, budget = SCENARIOS[scenario]
    model, opt, g, x_eval = _job(tie)
    write = make_write()
    losses: list[float] = []
    live: list = [None]  # the Prefetcher, in the prefetched run

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            losses.append(_loss(model, x_eval).item())
        model.train()
        return losses[-1]

    def loop() -> None:
        for i in range(STEPS):
            opt.zero_grad()
            loss = _loss(model, torch.randint(0, V, (8, 16), generator=g))
            loss.backward()
            losses.append(loss.item())
            opt.step()
            write(model, i, evaluate, live[0])

    write(model, -1, evaluate, None)  # setup, before training (and before prefetching)
    report = pf = None
    if pf_kwargs is None:
        loop()
    else:
        with prefetching(model, opt, budget=budget, device="simulated",
                                 link=LinkModel(bandwidth_bytes_per_s=2e9), **pf_kwargs) as pf:
            live[0] = pf
            loop()
        report = pf.report()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = [t for s in opt.state_dict()["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    return losses, params, state, report, pf


@cache
def _resident(scenario: str):
    return _run(scenario, None)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A learned artifact per architecture (untied and tied TinyLM) from a short recording,
    and a local daemon serving it: the kwargs a learned run passes to `prefetching`."""
    root = tmp_path_factory.mktemp("param-writes")
    for tie in (False, True):
        model, opt, g, _ = _job(tie, seed=1)
        with record(model, opt, out=root / "traces" / f"tie{int(tie)}"):
            for _ in range(5):
                opt.zero_grad()
                _loss(model, torch.randint(0, V, (8, 16), generator=g)).backward()
                opt.step()
    train([root / "traces"], root / "models", TrainConfig(num_threads=1, num_trees=5), progress=False,
          log=lambda *a: None)
    endpoint, daemon = start_local_daemon(root / "models", endpoint=f"ipc://{root}/d.sock")
    yield {"policy": f"learned:{root / 'models'}", "daemon": endpoint}
    daemon.stop()


def _kwargs(policy: str, request) -> dict:
    return request.getfixturevalue("learned") if policy == "learned" else {"policy": policy}


def _assert_identical(scenario: str, policy: str, request, **pf_kwargs) -> dict:
    base_losses, base_params, base_state, _, _ = _resident(scenario)
    losses, params, state, report, pf = _run(scenario, {**_kwargs(policy, request), **pf_kwargs})
    if policy == "learned":
        assert report["policy_served_by"].startswith("learned"), report["policy_served_by"]
    assert losses == base_losses, f"losses diverged ({scenario}, {policy})"
    for name, p in base_params.items():
        assert torch.equal(params[name], p), f"parameter {name} diverged ({scenario}, {policy})"
    assert len(state) == len(base_state)
    assert all(torch.equal(a, b) for a, b in zip(state, base_state)), f"optimizer state diverged ({scenario}, {policy})"
    if pf_kwargs.get("timeline"):  # the measured steps' parameter misses, from the run's timeline
        keys, step, misses = pf.tracker.tensor_keys, 0, 0
        for what, _, _, ref in pf.store.timeline:
            if what == "step":
                step = ref + 1
            elif what == "miss" and step >= pf.config.warmup_steps and keys[ref].startswith("param:"):
                misses += 1
        report = {**report, "param_misses": misses}
    return report


@pytest.mark.parametrize("policy", POLICIES)
def test_clamp_after_each_step(policy, request):
    """`p.clamp_()` under no_grad after every step: bit-identical to all resident."""
    _assert_identical("clamp", policy, request)


@pytest.mark.parametrize("policy", POLICIES)
def test_load_state_dict_mid_run(policy, request):
    """`model.load_state_dict(checkpoint)` between steps: bit-identical to all resident."""
    _assert_identical("load_state_dict", policy, request)


@pytest.mark.parametrize("scenario", ["ema_swap", "ema_swap_all_fit"])
@pytest.mark.parametrize("policy", POLICIES)
def test_ema_swap_in_for_evaluation(policy, scenario, request):
    """EMA weights copied in for an eval pass and the trained ones copied back (into bound
    device copies): eval and train losses, parameters, optimizer state bit-identical."""
    report = _assert_identical(scenario, policy, request)
    assert report["dirty_writebacks"] > 0  # the copy-back really wrote bound device copies


@pytest.mark.parametrize("policy", POLICIES)
def test_weight_tying(policy, request):
    """Embedding and head sharing one Parameter, clamped after every step: bit-identical."""
    _assert_identical("tied_clamp", policy, request)


@pytest.mark.parametrize("policy", POLICIES)
def test_manual_data_reassignment(policy, request):
    """`p.data = new_tensor` (host-bound and device-bound params): the new tensor is adopted
    as the master, bit-identical to all resident."""
    report = _assert_identical("reassign", policy, request)
    assert report["adopted_params"] > 0


@pytest.mark.parametrize("scenario", ["clamp_pause", "load_state_dict_pause"])
def test_replay_write_after_prefetches_landed(scenario, request):
    """With 50 ms between the step and the write, replay's next-step copies have all
    landed before it (the deterministic failure): they are detected stale and redone."""
    report = _assert_identical(scenario, "replay", request, timeline=True)
    assert report["stale_copies"] > 0
    if scenario == "clamp_pause":  # stale copies are issued again when the forward starts, not missed one by one
        # (parameter misses only: an activation evicted under the budget misses or not by timing)
        assert report["param_misses"] * 4 < report["stale_copies"], report


@pytest.mark.parametrize("policy", ["replay", "markov"])
def test_plain_loop_no_false_alarms(policy):
    """Without user writes, nothing is stale, written back or adopted: the checks cost no copies."""
    model, opt, g, _ = _job(False)
    with prefetching(model, opt, policy=policy, budget=0.4, device="simulated",
                     link=LinkModel(bandwidth_bytes_per_s=2e9)) as pf:
        for _ in range(4):
            opt.zero_grad()
            _loss(model, torch.randint(0, V, (8, 16), generator=g)).backward()
            opt.step()
    r = pf.report()
    assert r["hits"] > 0
    assert (r["stale_copies"], r["dirty_writebacks"], r["adopted_params"]) == (0, 0, 0)


def test_data_alias_write_with_params_written(request):
    """In-place writes through `p.data` move no version counter: after `pf.params_written()`
    copies taken before them are redone and written device copies kept (replay, 50 ms pause)."""
    report = _assert_identical("data_clamp", "replay", request)
    assert report["stale_copies"] > 0 and report["dirty_writebacks"] > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_write_in_forward_pre_hook(policy, request):
    """A max-norm clamp in a forward pre-hook (the write lands after the forward began,
    while the weight's copy is in flight): the read finds the copy stale and fetches again."""
    report = _assert_identical("max_norm_hook", policy, request)
    if policy == "replay":
        assert report["stale_copies"] > 0

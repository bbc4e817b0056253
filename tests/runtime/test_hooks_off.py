"""Everything resident: the per-access hooks come off (Prefetcher._quiet_step_end,
AccessTracker.go_quiet), and training computes exactly what it computes without us."""

from __future__ import annotations

import torch

from runtime.prefetcher import PrefetchConfig, Prefetcher
from runtime.state_compare import compare, snapshot

WIDTH = 256  # 256 KiB weights: managed
STEPS = 6


def _job():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(4)))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model, optimizer, after_step=None) -> list[float]:
    """STEPS steps; user code writes every parameter after each (a clamp; every other step a
    reassigned `p.data`), as EMA swaps and checkpoint loads do."""
    gen = torch.Generator().manual_seed(1)
    losses = []
    for i in range(STEPS):
        optimizer.zero_grad()
        loss = model(torch.randn(8, WIDTH, generator=gen)).pow(2).mean()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
        with torch.no_grad():
            for p in model.parameters():
                p.clamp_(-0.05, 0.05)
        if i % 2:
            model[1].weight.data = model[1].weight.detach() * 0.9
        if after_step is not None:
            after_step(i)
    return losses


def _resident_run():
    model, optimizer = _job()
    return _train(model, optimizer), snapshot(model, optimizer)


def test_hooks_come_off_once_everything_is_resident():
    """Budget 1: the step after the first all-resident one runs without module or saved-tensor
    hooks; the report says from which step and counts accesses as the last observed step's;
    losses, parameters and optimizer state stay bit-identical with user writes after it."""
    ref_losses, ref = _resident_run()
    model, optimizer = _job()
    pf = Prefetcher(model, optimizer, PrefetchConfig(policy="replay", budget=1.0, device="simulated"))
    hooked: list[tuple[int, bool]] = []
    packed: list[int] = []

    def after_step(i: int) -> None:  # after step i's end: the hooks of step i + 1
        pre = sum(len(m._forward_pre_hooks) for m in model[1:])  # the root's own pre-hook counts steps
        hooked.append((pre, pf.tracker.quiet))
        packed.append(pf.store.managed_events)

    try:
        losses = _train(model, optimizer, after_step)
    finally:
        pf.close()
    r = pf.report()
    cmp = compare(ref, snapshot(model, optimizer))
    assert losses == ref_losses and cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    assert r["optimizer"]["resident"] is True and r["hooks_off"]["from_step"] == 2
    assert all(n > 0 and not q for n, q in hooked[:1]) and all(n == 0 and q for n, q in hooked[1:]), hooked
    per_step = packed[1] - packed[0]  # step 1, the one observed all resident
    assert per_step > 0 and packed[2:] == [packed[1]] * (STEPS - 2)  # nothing observed after
    assert 0 < r["accesses"] <= per_step and r["hit_rate"] == 1.0  # the reads of step 1, all hits
    assert r["hooks_off"]["accesses_estimated"] == per_step * (STEPS - 2)
    assert r["overhead"]["managed_accesses"] == per_step
    assert r["adopted_params"] > 0  # the reassignments after the hooks came off were taken as masters


def test_a_users_saved_tensor_hooks_stay_theirs():
    """Saved-tensor hooks are a stack: a user's pair entered inside the run stays the innermost
    when ours go quiet (ours are then left in place, passing tensors through), and theirs
    keep seeing every saved tensor; the run stays bit-identical."""
    ref_losses, ref = _resident_run()
    model, optimizer = _job()
    pf = Prefetcher(model, optimizer, PrefetchConfig(policy="replay", budget=1.0, device="simulated"))
    packs = [0]
    per_step: list[int] = []

    def pack(t):
        packs[0] += 1
        return t

    def after_step(i: int) -> None:
        per_step.append(packs[0])

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            losses = _train(model, optimizer, after_step)
    finally:
        pf.close()
    assert pf.tracker.quiet
    counts = [b - a for a, b in zip([0, *per_step], per_step)]
    assert counts[0] > 0 and len(set(counts)) == 1, counts  # theirs saw every step's saved tensors
    cmp = compare(ref, snapshot(model, optimizer))
    assert losses == ref_losses and cmp.params_identical and cmp.optimizer_state_identical


def test_hooks_stay_while_anything_is_offloaded(tmp_path):
    """Below the footprint, or with a kept trace (which needs every access), the hooks stay."""
    for budget, trace_out in ((0.5, None), (1.0, tmp_path / "run")):
        model, optimizer = _job()
        pf = Prefetcher(model, optimizer, PrefetchConfig(policy="replay", budget=budget, device="simulated",
                                                         trace_out=trace_out))
        try:
            _train(model, optimizer)
        finally:
            pf.close()
        r = pf.report()
        assert "hooks_off" not in r and not pf.tracker.quiet, (budget, trace_out)

"""Device stepping (runtime.device_stepping) and the placement choice (runtime.placement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from predictor.interface import BasePolicy
from runtime.link import LinkModel
from runtime.placement import PlacementInputs, check_placement, choose
from runtime.prefetcher import PrefetchConfig, Prefetcher, prefetching
from runtime.state_compare import compare, snapshot

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 256  # 256x256 fp32 weights: 256 KiB each, managed; biases stay persistent


def _job(opt: str, wide: bool = False):
    torch.manual_seed(0)
    if wide:  # two 1 MiB weights among 256 KiB ones: their steps (copy, gradient, moments) need 4 MiB
        layers = [torch.nn.Linear(WIDTH, WIDTH), torch.nn.Linear(WIDTH, 4 * WIDTH), torch.nn.Linear(4 * WIDTH, WIDTH),
                  torch.nn.Linear(WIDTH, WIDTH)]
        model = torch.nn.Sequential(*layers)
    else:
        model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(6)))
    if opt == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    elif opt == "adamw-fused":  # its kernel does not move the parameters' version counters
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    return model, optimizer


def _train(model, optimizer, steps: int, *, clamp: bool = False, accumulate: int = 1,
           pre_step_write: bool = False) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        for _ in range(accumulate):
            loss = model(torch.randn(8, WIDTH, generator=gen)).pow(2).mean()
            loss.backward()
            losses.append(loss.item())
        if pre_step_write:  # user code writing the parameters between backward and step
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.99)
        optimizer.step()
        if clamp:  # user code writing every parameter between steps
            with torch.no_grad():
                for p in model.parameters():
                    p.clamp_(-0.05, 0.05)
    return losses


def _run(placement: str | None, opt: str = "adamw", *, budget="3MiB", steps: int = 5, wide: bool = False,
         early_step: bool = True, **kw):
    """(losses, snapshot, report): all resident when `placement` is None."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, optimizer = _job(opt, wide)
        pf = None
        if placement is not None:
            pf = Prefetcher(model, optimizer, PrefetchConfig(policy="replay", budget=budget,
                                                             optimizer_placement=placement, early_step=early_step))
        try:
            losses = _train(model, optimizer, steps, **kw)
        finally:
            if pf is not None:
                pf.close()
        return losses, snapshot(model, optimizer), pf.report() if pf is not None else None
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("clamp", [False, True], ids=["plain", "user-writes"])
@pytest.mark.parametrize("opt", ["adamw", "adamw-fused", "sgd-momentum"])
def test_device_stepping_is_bit_identical(opt, clamp):
    """Losses, parameters and optimizer state equal the all-resident run's bit for bit, with the
    state streamed to the device and back every step, also when user code writes every
    parameter between steps (the parked device copies go stale and are not used)."""
    ref_losses, ref, _ = _run(None, opt, clamp=clamp)
    losses, got, r = _run("device", opt, clamp=clamp)
    assert losses == ref_losses
    cmp = compare(ref, got)
    assert cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    o = r["optimizer"]
    assert o["ran"] == "device" and o["device_stepping"]["params_stepped"] > 0
    assert r["bytes_h2d"]["optimizer_state"] > 0 and r["bytes_d2h"]["optimizer_state"] > 0
    assert r["bytes_d2h"]["parameter"] > 0  # updated parameters written back
    assert r["optimizer_wait_s"] > 0  # the chunks' copies are step time, reported apart from stalls


def test_device_stepping_with_gradient_accumulation_is_bit_identical():
    """Two micro-steps per optimizer step: the gradients summed on the host step on the device."""
    ref_losses, ref, _ = _run(None, accumulate=2)
    losses, got, r = _run("device", accumulate=2)
    assert losses == ref_losses
    cmp = compare(ref, got)
    assert cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    assert r["optimizer"]["device_stepping"]["params_stepped"] > 0


def test_a_step_with_a_closure_steps_on_the_device():
    """optimizer.step(closure) runs forward and backward inside the step. AdamW calls its closure
    once: it runs before the store's pre-step work (runtime.closure_step), the step runs on the
    device, and the run stays bit-identical."""
    def train(placement):
        model, optimizer = _job("adamw")
        pf = Prefetcher(model, optimizer, PrefetchConfig(budget="4MiB", optimizer_placement=placement)) \
            if placement else None
        gen = torch.Generator().manual_seed(1)
        losses = []
        try:
            for _ in range(4):
                x = torch.randn(8, WIDTH, generator=gen)

                def closure():
                    optimizer.zero_grad()
                    loss = model(x).pow(2).mean()
                    loss.backward()
                    return loss

                losses.append(optimizer.step(closure).item())
        finally:
            if pf is not None:
                pf.close()
        return losses, snapshot(model, optimizer), pf.report() if pf else None

    ref_losses, ref, _ = train(None)
    losses, got, r = train("device")
    cmp = compare(ref, got)
    assert losses == ref_losses and cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    assert r["closures_run_first"] == 4
    assert r["optimizer"]["device_stepping"]["params_stepped"] > 0


def test_chunks_stay_within_the_budget():
    """A budget that holds a few parameters' steps at a time: several chunks per step, the
    device's peak never above the budget, nothing left to the host."""
    _, _, r = _run("device", budget="1.5MiB")
    ds = r["optimizer"]["device_stepping"]
    assert ds["chunks"] > ds["device_steps"] and ds["host_fallback"] == 0
    assert r["peak_device_bytes"] <= r["budget_bytes"] and r["budget_overflows"] == 0


def test_a_step_that_cannot_fit_is_left_to_the_host():
    """A parameter whose copy, gradient and state exceed the whole budget steps on the host
    (counted), its device copy parked for the step dropped (the host updates the master), and
    the run stays bit-identical; the others still step on the device."""
    ref_losses, ref, _ = _run(None, wide=True)
    losses, got, r = _run("device", budget="3MiB", wide=True)
    ds = r["optimizer"]["device_stepping"]
    assert ds["host_fallback"] > 0 and ds["params_stepped"] > 0
    cmp = compare(ref, got)
    assert losses == ref_losses and cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches


@pytest.mark.parametrize("budget", ["4MiB", 1.0], ids=["streamed", "everything-fits"])
def test_a_write_between_backward_and_step_is_stepped_not_the_parked_copy(budget):
    """User code that writes the parameters after the backward (their device copies parked for
    the step) makes those copies stale: the step reads the written master, also at the step
    where everything goes resident."""
    ref_losses, ref, _ = _run(None, pre_step_write=True)
    losses, got, r = _run("device", budget=budget, pre_step_write=True)
    cmp = compare(ref, got)
    assert losses == ref_losses and cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    assert r["stale_copies"] > 0


def test_stepped_copies_stay_resident_for_the_next_forward():
    """With room for every parameter (not for the whole footprint), device stepping keeps the
    updated device copies: the next forward hits them instead of fetching every parameter
    again, as host stepping must."""
    _, _, host = _run("host", budget="4MiB")
    _, _, dev = _run("device", budget="4MiB")
    assert dev["optimizer"]["resident"] is False
    assert host["bytes_h2d"]["parameter"] > 0
    assert dev["bytes_h2d"]["parameter"] == 0  # nothing re-fetched: the parked copies were hits
    assert dev["hit_rate"] > host["hit_rate"]


def test_auto_measures_the_first_step_then_picks():
    """auto steps the first step on the host, then the cost model picks from its measurement;
    on the simulated device both optimizers are the same CPU code, so the bytes decide: host."""
    ref_losses, ref, _ = _run(None)
    losses, got, r = _run("auto")
    o = r["optimizer"]
    assert o["asked"] == "auto" and o["from_step"] == 1 and o["ran"] == "host"
    est = o["estimate"]
    assert est["host_optimizer_ns"] > 0 and est["state_bytes"] == 2 * est["params_bytes"]  # Adam's two moments
    assert est["device_ns"] > est["host_ns"] and o["why"].startswith("auto: host")
    assert losses == ref_losses and compare(ref, got).params_identical


@pytest.mark.parametrize("opt", ["adamw", "adamw-fused"])
@pytest.mark.parametrize("kw", [{}, {"clamp": True}, {"accumulate": 2}], ids=["plain", "user-writes", "accumulate"])
def test_everything_fits_nothing_moves(kw, opt):
    """Budget 1 is the whole footprint: after the first step everything stays on the device,
    the optimizer steps the device copies in place; bit-identical, every measured read a hit,
    nothing copied in, and only the parameters' write-back when the model is handed back."""
    ref_losses, ref, _ = _run(None, opt, **kw)
    losses, got, r = _run("auto", opt, budget=1.0, **kw)
    cmp = compare(ref, got)
    assert losses == ref_losses and cmp.params_identical and cmp.optimizer_state_identical, cmp.state_mismatches
    o = r["optimizer"]
    assert o["resident"] is True and o["ran"] == "device" and o["from_step"] == 1
    assert r["budget_bytes"] == o["footprint_bytes"]  # the fraction 1: parameters, gradients, Adam's moments
    assert r["hit_rate"] == 1.0 and sum(r["bytes_h2d"].values()) == 0
    assert r["bytes_d2h"]["gradient"] == 0 and r["bytes_d2h"]["parameter"] == 6 * WIDTH * WIDTH * 4  # at close
    assert r["peak_device_bytes"] <= r["budget_bytes"]


def test_the_policy_is_not_asked_once_everything_is_resident():
    """Everything resident: there is nothing left to prefetch, so the policy is no longer
    shown the accesses (nor paid for); the accesses are still counted, every one a hit."""
    from predictor.policies import make_policy

    seen: list[int] = []

    class Counting(BasePolicy):
        name = "counting"

        def __init__(self) -> None:
            self.inner = make_policy("replay", lookahead=64)

        def start(self, tensors):
            self.inner.start(tensors)

        def observe(self, step, micro_step, phase, access, tensor_id):
            seen.append(step)
            return self.inner.observe(step, micro_step, phase, access, tensor_id)

    model, optimizer = _job("adamw")
    pf = Prefetcher(model, optimizer, PrefetchConfig(budget=1.0), policy=Counting())
    try:
        _train(model, optimizer, 4)
    finally:
        pf.close()
    r = pf.report()
    assert r["optimizer"]["resident"] is True and r["accesses"] > 0 and r["hit_rate"] == 1.0
    assert seen and max(seen) == 0  # shown step 0 only


def test_host_placement_never_goes_resident():
    """optimizer_placement="host" at budget 1: host stepping as asked, parameters fetched again every step."""
    _, _, r = _run("host", budget=1.0)
    assert r["optimizer"]["ran"] == "host" and "resident" not in r["optimizer"]
    assert r["bytes_h2d"]["parameter"] > 0 and r["hit_rate"] < 1.0


def _inputs(host_opt: float, dev_opt: float, gbps: float, resident: int = 0) -> PlacementInputs:
    p = 100 << 20
    return PlacementInputs(params_bytes=p, resident_bytes=resident, grad_bytes=p, state_bytes=2 * p,
                           host_optimizer_ns=host_opt, device_optimizer_ns=dev_opt,
                           copy_ns=LinkModel(bandwidth_bytes_per_s=gbps * 1e9, latency_s=0).copy_ns)


def test_the_cost_model_picks_the_faster_placement():
    """Device stepping moves G + S + (P - R) in and P + S out: it wins only when the host
    optimizer is slow against the link (a fast link, a slow host), and asked placements are obeyed."""
    host = 60e6  # 60 ms for 100 MiB of parameters (AdamW on a CPU), 5 ms on the GPU
    assert choose("auto", _inputs(host, 5e6, gbps=400))[0] == "device"  # C2C-class link: 700 MiB in ~2 ms
    assert choose("auto", _inputs(host, 5e6, gbps=12))[0] == "host"  # PCIe-class link: ~61 ms
    assert choose("auto", _inputs(20e6, 20e6, gbps=400))[0] == "host"  # same optimizer speed: bytes decide
    # host stepping's re-fetch of what was resident counts against it
    assert choose("auto", _inputs(host, 5e6, gbps=12, resident=100 << 20))[0] == "device"
    assert choose("device", _inputs(20e6, 20e6, gbps=1)) == ("device", "asked for device")
    assert choose("auto", None)[0] == "host"


def test_bad_placement_refused():
    with pytest.raises(ValueError, match="optimizer placement must be one of auto, host, device"):
        check_placement("gpu")
    with pytest.raises(ValueError, match="optimizer placement"):
        PrefetchConfig(optimizer_placement="cpu")


@pytest.mark.slow  # two launches of a script: ~25 s on a loaded 2-core machine
def test_a_script_steps_on_the_device_bit_identical(tmp_path):
    """`prefetch run --optimizer device --compare -- python examples/train_tiny.py`: bit-identical,
    and the report says the device ran the steps."""
    out = tmp_path / "tiny.json"
    proc = subprocess.run([sys.executable, "-m", "prefetch", "run", "--optimizer", "device", "--compare",
                           "--json", str(out), "--", "python", str(ROOT / "examples" / "train_tiny.py"),
                           "--steps", "5"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["losses_identical"] and r["params_identical"] and r["optimizer_state_identical"], r["state_mismatches"]
    assert r["optimizer"]["ran"] == "device" and r["optimizer"]["device_stepping"]["params_stepped"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_stepping_matches_a_resident_gpu_run():
    """On a GPU, device stepping runs the GPU's own optimizer kernels: bit-identical to the job
    all resident on the GPU (no host-stepping reference needed)."""
    def job():
        torch.manual_seed(0)
        model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(6))).cuda()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    def train(model, optimizer):
        gen = torch.Generator(device="cuda").manual_seed(1)
        out = []
        for _ in range(4):
            optimizer.zero_grad()
            loss = model(torch.randn(8, WIDTH, generator=gen, device="cuda")).pow(2).mean()
            loss.backward()
            optimizer.step()
            out.append(loss.item())
        return out

    model, optimizer = job()
    ref_losses, ref = train(model, optimizer), snapshot(model, optimizer)
    model, optimizer = job()
    with prefetching(model, optimizer, policy="replay", budget="3MiB", device="cuda",
                     optimizer_placement="device") as pf:
        losses = train(model, optimizer)
    assert losses == ref_losses
    assert compare(ref, snapshot(model, optimizer)).params_identical
    assert pf.report()["optimizer"]["device_stepping"]["params_stepped"] > 0

"""The CUDA path: inputs and compute on the device, stalls from CUDA events, peak memory,
bit-identity against the all-resident job. Tests marked `cuda` skip without a GPU;
the rest check, on any machine, what can be checked without one."""

from __future__ import annotations

import os

import pytest
import torch

from prefetch.workloads import WORKLOADS, get_workload
from runtime.device import CudaDevice, SimulatedDevice
from runtime.link import LinkModel
from runtime.prefetcher import PrefetchConfig, Prefetcher, compute_device, make_device

# cuBLAS is deterministic with a fixed workspace (read when its first handle is made)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class _Stop(Exception):
    pass


def _input_devices(name: str, device: str) -> tuple[set[str], set[str]]:
    """(device types of the tensors the first root forward (or generate) receives,
    device types of the parameters) for workload `name` built on `device`."""
    job = get_workload(name).build(0, device=device)
    seen: set[str] = set()

    def record(args, kwargs):
        seen.update(t.device.type for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor))
        raise _Stop

    job.model.register_forward_pre_hook(lambda m, a, k: record(a, k), with_kwargs=True)
    if name == "generate-train":  # generate() reads a value on the host before any forward
        job.model.generate = lambda *a, **k: record(a, k)
    with pytest.raises(_Stop):
        job.step(0)
    return seen, {p.device.type for p in job.model.parameters()}


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_inputs_follow_the_device(name):
    """Every workload builds its model and its step's inputs on the device it is given
    ("meta" here: a device that is not the CPU, available everywhere)."""
    inputs, params = _input_devices(name, "meta")
    assert inputs == {"meta"} and params == {"meta"}


def test_compute_device_of_a_spec():
    """The simulated device computes on the CPU; cuda:N on that GPU; auto follows CUDA."""
    assert compute_device("simulated") == torch.device("cpu")
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert compute_device("auto") == expected
    if torch.cuda.is_available():
        assert compute_device("cuda:0") == torch.device("cuda", 0)


def test_auto_device_follows_the_model():
    """`auto` prefetches for a CPU model on the simulated device, even where CUDA exists
    (a CUDA backend would mix devices); an explicit CUDA device for a CPU model is a
    one-line error, not a failure deep in the first forward."""
    link = LinkModel(bandwidth_bytes_per_s=1e9, latency_s=0.0)
    dev = make_device("auto", link, torch.device("cpu"))
    try:
        assert isinstance(dev, SimulatedDevice)
    finally:
        dev.close()
    with pytest.raises(ValueError, match="cuda"):
        make_device("cuda", link, torch.device("cpu"))


class _Event:
    """Stands in for a timing torch.cuda.Event (the CPU CI has none): done or not, and a time."""

    def __init__(self, t_ms: float, done: bool = True):
        self.t_ms, self.done, self.synced = t_ms, done, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = self.synced = True

    def elapsed_time(self, end: "_Event") -> float:
        assert end.done, "elapsed_time before the later event completed"  # `self` precedes it on the stream
        return end.t_ms - self.t_ms


def test_cuda_stall_pairs_resolve_without_sync_until_asked():
    """CudaDevice.collect_stall_ns reads only finished wait timings without blocking,
    keeps the rest for later, and with block=True waits for and reads them all."""
    dev = CudaDevice.__new__(CudaDevice)  # no GPU here: only the bookkeeping is exercised
    done = (_Event(1.0), _Event(1.5))
    pending = (_Event(2.0, done=False), _Event(2.25, done=False))
    dev._stall_events = [done, pending]
    assert dev.collect_stall_ns() == 500_000
    assert dev._stall_events == [pending] and not pending[1].synced
    assert dev.collect_stall_ns() == 0  # still running: nothing read, nothing lost
    assert dev.collect_stall_ns(block=True) == 250_000 and pending[1].synced
    assert dev._stall_events == [] and dev.collect_stall_ns(block=True) == 0


# -- on a GPU ---------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["gpt2", "moe"])
def test_cuda_inputs_and_state_on_the_gpu(name):
    """Built for CUDA, a workload's inputs, parameters and (after a step) optimizer state are on the GPU."""
    inputs, params = _input_devices(name, "cuda")
    assert inputs == {"cuda"} and params == {"cuda"}
    job = get_workload(name).build(0, device="cuda")
    job.step(0)
    state = [v for s in job.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim()]
    assert state and all(v.is_cuda for v in state)



@pytest.fixture(scope="module")
def gpt2_model_dir(tmp_path_factory):
    """A learned predictor for gpt2 trained on seeds 0 and 1 (recorded on the CPU)."""
    from predictor.train import TrainConfig, train
    from prefetch.recording import record_workload

    root = tmp_path_factory.mktemp("cuda-learned")
    dirs = []
    for seed in (0, 1):
        record_workload("gpt2", 4, root / f"s{seed}", seed=seed, progress=False)
        dirs.append(root / f"s{seed}")
    train(dirs, root / "models", TrainConfig(num_trees=5, min_data_in_leaf=5), progress=False, log=lambda m: None)
    return root / "models"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["gpt2", "moe"])
def test_cuda_run_bit_identical(name, gpt2_model_dir):
    """`prefetch run --device cuda`: losses, parameters and optimizer state bit-identical
    to the all-resident job for replay and learned, on the GPU, stalls measured."""
    from prefetch.run import run_policies

    policies = ["replay", f"learned:{gpt2_model_dir}"] if name == "gpt2" else ["replay"]
    for r in run_policies(name, policies, steps=5, seed=2, budget=0.4, device="cuda", progress=False):
        assert r["device"].startswith("cuda"), r["device"]
        assert r["losses_identical"] and r["params_identical"] and r["optimizer_state_identical"], \
            (r["policy"], r.get("state_mismatches"))
        assert r["stall_s"] >= 0 and r["cuda_timed_waits"] >= 0
        assert r["slowdown_vs_device_optimizer"] > 0


def _alone(name: str, budget, steps: int = 4) -> dict:
    """The prefetched job alone on the GPU (policy none), its report."""
    job = get_workload(name).build(0, device="cuda")
    pf = Prefetcher(job.model, job.optimizer, PrefetchConfig(policy="none", budget=budget, device="cuda"))
    try:
        for i in range(steps):
            job.step(i)
    finally:
        pf.close()
    return pf.report()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stall_measured_with_tiny_budget():
    """With a budget barely above the largest tensor every read is a demand fetch, and
    the compute stream's waits on them are measured: stall time > 0, not assumed zero."""
    r = _alone("gpt2", 0.05)
    assert r["misses"] > 0 and r["cuda_timed_waits"] > 0
    assert r["stall_s"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_within_bound():
    """The job's peak device memory (torch.cuda.max_memory_allocated per step) covers
    the device tier and stays within budget + persistent + managed gradients + working set."""
    r = _alone("gpt2", 0.4)
    assert r["cuda_max_memory_allocated"] >= r["peak_device_bytes"] > 0
    assert r["peak_memory_within_bound"] is True, (r["cuda_max_memory_allocated"], r["cuda_memory_bound"])


class _Allocator:
    """Stands in for the CUDA caching allocator's statistics (the CPU CI has no GPU)."""

    def __init__(self):
        self.allocated = self.peak = 0

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)


class _TimedDevice:
    """Stands in for CudaDevice's stall bookkeeping: records how it was asked."""

    device = torch.device("cpu")
    stall_waits = 3

    def __init__(self):
        self.calls: list[bool] = []

    def collect_stall_ns(self, block: bool = False) -> int:
        self.calls.append(block)
        return 1_000


def test_cuda_monitor_bookkeeping(monkeypatch):
    """CudaMonitor: stall timings are read without a sync except at the end of warm-up and
    in the report, and land on the right side of it; the peak is the job's own (memory
    another job held before the step does not count), over measured steps only."""
    from runtime.cuda_monitor import CudaMonitor

    a = _Allocator()
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: a.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: a.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: setattr(a, "peak", a.allocated))
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.Linear(256, 8))
    opt = torch.optim.AdamW(model.parameters())
    pf = Prefetcher(model, opt, PrefetchConfig(policy="none", budget=0.5, device="simulated"))
    try:
        dev = _TimedDevice()
        mon = CudaMonitor(model, opt, pf.store, dev, warmup_steps=1)
        a.alloc(10_000_000)  # another job's memory, held throughout
        for step, grow in enumerate((5_000_000, 300, 700)):
            mon._step_start(model, ())
            mon._step_start(model, ())  # a second micro-step: the same window
            a.alloc(grow)
            a.alloc(-grow)
            mon.before_step_end(step)
            mon.after_step_end(step)
        assert dev.calls == [True, False, False]  # one sync: at the end of warm-up step 0
        assert mon.steps_measured == 2 and mon.peak_bytes == 700 + mon.own_device_bytes()
        r = mon.report()
        assert dev.calls[-1] is True and r["cuda_timed_waits"] == 3
        assert r["cuda_max_memory_allocated"] == mon.peak_bytes
        assert r["cuda_memory_bound_bytes"] == sum(v for k, v in r["cuda_memory_bound"].items() if k != "total")
        assert r["peak_memory_within_bound"] is True
        mon.close()
    finally:
        pf.close()

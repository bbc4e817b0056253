"""Cases for the oracle's bound: hand-written and random dynamic traces, and adversary policies.

Shared by tests/prefetch/test_oracle.py and benchmarks/oracle_search.py (the randomized
search behind docs/oracle.md), so the test and the published figure use the same cases.
"""

from __future__ import annotations

import numpy as np

from predictor.interface import NO_PREDICTION, BasePolicy
from runtime.link import LinkModel
from runtime.trace_format import Access, Kind, Phase, load_trace
from runtime.trace_writer import TraceWriter

R, W = int(Access.READ), int(Access.WRITE)
P, A, G = Kind.PARAMETER, Kind.ACTIVATION, Kind.GRADIENT
K = 1000  # hand-computed sizes in kB and times in us: a managed tensor has at least 64 KiB
LINK = LinkModel(bandwidth_bytes_per_s=1e9, latency_s=0.0)  # 100 kB -> 100 us


def write_trace(stem, tensors, steps, dt=1000, unit=1):
    """tensors: [(key, Kind, nbytes / unit)]; steps: per step [(access, tensor id[, phase])], dt * unit ns apart."""
    w = TraceWriter(stem, {"architecture": "hand", "model_class": "Hand"})
    for i, (key, kind, nb) in enumerate(tensors):
        w.add_tensor(dict(tensor_id=i, key=key, kind=int(kind), shape=[nb * unit], dtype="uint8",
                          nbytes=nb * unit, module="m", layer=-1))
    start = 0  # each step starts when the one before ended: no time between steps
    for s, events in enumerate(steps):
        for j, ev in enumerate(events):
            phase = ev[2] if len(ev) > 2 else Phase.FORWARD
            w.add_event((s, 0, j, int(phase), int(tensors[ev[1]][1]), int(ev[0]), ev[1], tensors[ev[1]][2] * unit,
                         start + j * dt * unit, -1, -1))
        start += (len(events) - 1) * dt * unit
    w.close()
    return load_trace(stem)


def random_trace(stem, *, seed: int, steps: int = 5, unit: int = 4096):
    """A small dynamic training trace: random subsets and orders of 'expert' parameters per step,
    activations packed and unpacked, gradients produced and consumed, parameters updated.
    Tensors are 50-400 `unit`s (0.2-1.6 MiB by default) and accesses 20-600 us apart, so copies
    take about as long as in the sample traces and the 5 us per-copy latency is minor."""
    rng = np.random.default_rng(seed)
    n, e = int(rng.integers(3, 9)), int(rng.integers(1, 6))
    tensors = [(f"p{i}", P, int(rng.integers(50, 400)) * unit) for i in range(n + e)]
    tensors += [(f"a{i}", A, int(rng.integers(50, 300)) * unit) for i in range(n)]
    tensors += [(f"g{i}", G, tensors[i][2]) for i in range(n)]
    all_steps = []
    for _ in range(steps):
        ev = []
        for i in range(n):
            ev.append((R, i))
            if i == n // 2:
                ev += [(R, n + int(x)) for x in rng.permutation(e)[: int(rng.integers(1, e + 1))]]
            ev.append((W, n + e + i))
        for i in rng.permutation(n) if rng.random() < 0.3 else reversed(range(n)):
            ev += [(R, n + e + i, Phase.BACKWARD), (R, int(i), Phase.BACKWARD), (W, 2 * n + e + i, Phase.BACKWARD)]
        for i in range(n):
            ev += [(R, 2 * n + e + i, Phase.OPTIMIZER), (W, i, Phase.OPTIMIZER)]
        all_steps.append(ev)
    return write_trace(stem, tensors, all_steps, dt=int(rng.integers(100, 3000)) * 200)


class NoPrefetch(BasePolicy):
    """Test policy: never prefetches; LRU eviction."""

    name = "none"

    def start(self, tensors):
        pass

    def observe(self, step, micro_step, phase, access, tensor_id):
        return ()

    def predicted_next_use(self, tensor_id):
        return NO_PREDICTION


class RandomRequests(BasePolicy):
    """Test policy: asks for random tensors, with random predictions (an adversary for the bound)."""

    name = "random"

    def __init__(self, seed):
        self.seed = seed

    def start(self, tensors):
        self.rng = np.random.default_rng(self.seed)
        self.n = tensors.num_tensors

    def observe(self, step, micro_step, phase, access, tensor_id):
        return self.rng.integers(0, self.n, size=int(self.rng.integers(0, 4))).tolist()

    def predicted_next_use(self, tensor_id):
        return float(self.rng.integers(1, 50)) if self.rng.random() < 0.5 else NO_PREDICTION


class JustInTime(BasePolicy):
    """Test policy that knows the trace: asks for the managed read k reads ahead, no eviction hints."""

    name = "jit"

    def __init__(self, trace, k):
        managed = trace.managed_tensors()[trace.column("tensor_id")]
        self.reads = trace.column("tensor_id")[managed & (trace.column("access") == R)].tolist()
        self.k = k

    def start(self, tensors):
        self.i = self.sent = 0

    def observe(self, step, micro_step, phase, access, tensor_id):
        if access != R:
            return ()
        self.i += 1
        out = self.reads[self.sent: self.i + self.k]
        self.sent = max(self.sent, self.i + self.k)
        return out

    def predicted_next_use(self, tensor_id):
        return NO_PREDICTION


def competitors(trace, seed):
    out = [NoPrefetch(), RandomRequests(seed), JustInTime(trace, 2), JustInTime(trace, 12)]
    try:
        from predictor.policies import make_policy
    except ImportError:
        return out
    return out + [make_policy(s, lookahead=k) for s in ("none", "replay", "markov") for k in (4, 16, 64)]


def dynamic_traces(tmp_path):
    traces = [random_trace(tmp_path / f"dyn{seed}", seed=seed, steps=4) for seed in range(5)]
    try:
        from tests.fixtures.synthetic_traces import SyntheticConfig, write_synthetic_trace
    except ImportError:
        return traces
    for kind in ("moe", "layerdrop", "accum"):
        traces.append(load_trace(write_synthetic_trace(tmp_path, SyntheticConfig.of_kind(kind), steps=4, seed=1,
                                                       name=kind)))
    return traces

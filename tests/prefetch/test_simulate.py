"""prefetch.simulate: hand-computed traces, warm-up, budgets, determinism, the CLI.

Hand-computed cases use a link of 1 byte/ns with no latency, so copying a 100-byte
tensor takes 100 ns, and 1000 ns of compute between the accesses of a step (0 before a
step's first access). Outcome codes per event: HIT 0, LATE 1, MISS 2, WRITE 3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from predictor.interface import NO_PREDICTION
from prefetch.cli import main as cli_main
from prefetch.oracle import OraclePolicy
from prefetch.simulate import HIT, MISS, WRITE, simulate
from runtime.link import LinkModel
from runtime.trace_format import Access, Kind, Phase, load_trace
from runtime.trace_writer import TraceWriter

R, W = int(Access.READ), int(Access.WRITE)
P, A, G = Kind.PARAMETER, Kind.ACTIVATION, Kind.GRADIENT
LINK = LinkModel(bandwidth_bytes_per_s=1e9, latency_s=0.0)  # 100 bytes -> 100 ns


def write_trace(stem, tensors, steps, dt=1000):
    """tensors: [(key, Kind, nbytes)]; steps: per step [(access, tensor id[, phase])], dt ns apart."""
    w = TraceWriter(stem, {"architecture": "hand", "model_class": "Hand"})
    for i, (key, kind, nb) in enumerate(tensors):
        w.add_tensor(dict(tensor_id=i, key=key, kind=int(kind), shape=[nb], dtype="uint8", nbytes=nb,
                          module="m", layer=-1))
    for s, events in enumerate(steps):
        for j, ev in enumerate(events):
            access, tid = ev[0], ev[1]
            phase = ev[2] if len(ev) > 2 else Phase.FORWARD
            w.add_event((s, 0, j, int(phase), int(tensors[tid][1]), int(access), tid, tensors[tid][2],
                         s * 10**6 + j * dt, -1, -1))
    w.close()
    return load_trace(stem)


class NoPrefetch:
    """Test policy: never prefetches, no predictions (the simulator falls back to LRU)."""

    name = "none"

    def start(self, tensors):
        pass

    def observe(self, step, micro_step, phase, access, tensor_id):
        return ()

    def predicted_next_use(self, tensor_id):
        return NO_PREDICTION


class FixedRequests:
    """Test policy: asks for the same ids after every access, with fixed predictions."""

    name = "fixed"

    def __init__(self, requests, predictions):
        self.requests, self.predictions = list(requests), dict(predictions)

    def start(self, tensors):
        pass

    def observe(self, step, micro_step, phase, access, tensor_id):
        return self.requests

    def predicted_next_use(self, tensor_id):
        return self.predictions.get(tensor_id, NO_PREDICTION)


@pytest.fixture
def cycle(tmp_path):
    """Three 100-byte parameters read A, B, C in each of 3 steps."""
    return write_trace(tmp_path / "cycle", [("A", P, 100), ("B", P, 100), ("C", P, 100)], [[(R, 0), (R, 1), (R, 2)]] * 3)


@pytest.fixture
def training(tmp_path):
    """P read (fwd), X packed and unpacked, P read (bwd), G produced and read by the optimizer, P updated."""
    step = [(R, 0), (W, 1), (R, 1, Phase.BACKWARD), (R, 0, Phase.BACKWARD), (W, 2, Phase.BACKWARD),
            (R, 2, Phase.OPTIMIZER), (W, 0, Phase.OPTIMIZER)]
    return write_trace(tmp_path / "train", [("P", P, 100), ("X", A, 100), ("G", G, 100)], [step] * 3)


def test_none_cycle_under_lru_misses_everything(cycle):
    """Budget 2 of 3 tensors, no prefetch: LRU evicts the next one needed, so every read misses.

    Step 0: A, B miss (100 ns each); C misses and evicts A. Each later step: A evicts B,
    B evicts C, C evicts A: 3 misses, 300 ns of stall, 3 evictions; 2000 ns of compute.
    """
    r = simulate(cycle, NoPrefetch(), budget=200, link=LINK)
    assert r.outcomes.tolist() == [MISS] * 9
    s = r.stats
    assert (s.accesses, s.hits, s.late, s.misses, s.stall_ns) == (6, 0, 0, 6, 600)
    assert (s.evictions, s.bytes_copied, s.bytes_written_back, s.prefetch_issued) == (6, 600, 0, 0)
    assert (r.warmup.accesses, r.warmup.misses, r.warmup.stall_ns, r.warmup.evictions) == (3, 3, 300, 1)
    assert (r.steps, r.measured_ns, r.baseline_ns) == (2, 4600, 4000)
    assert r.step_time_s == pytest.approx(2300e-9) and r.baseline_step_time_s == pytest.approx(2000e-9)
    assert r.slowdown == pytest.approx(1.15)
    assert r.peak_device_bytes == 200 and r.budget_bytes == 200 and r.managed_bytes == 300


def test_replay_cycle_hand_computed(cycle):
    """Replay (lookahead 16) on the cycle: warm-up as none; then the request it issues and the ones it loses.

    Step 0: no recorded step yet, so 3 misses as with none (C evicts A).
    Step 1: A misses (evicts B, LRU); replay asks [B, C, A]: B is fetched at 2400-2500,
    evicting C (predicted 2 reads away, B 1). B hits at 3400. Replay's later windows do not
    ask for C again (already outstanding), so C misses at 4400, evicting B (predicted 3,
    A 2). Step 2: A hits; B misses (evicts A, predicted 3 vs C 2); C hits.
    Measured: 3 hits, 3 misses, 300 ns stall, 1 prefetch issued and used.
    """
    policies = pytest.importorskip("predictor.policies")
    r = simulate(cycle, policies.make_policy("replay", lookahead=16), budget=200, link=LINK)
    assert r.outcomes.tolist() == [MISS, MISS, MISS, MISS, HIT, MISS, HIT, MISS, HIT]
    s = r.stats
    assert (s.accesses, s.hits, s.late, s.misses, s.stall_ns) == (6, 3, 0, 3, 300)
    assert (s.prefetch_issued, s.prefetch_used, s.evictions, s.bytes_copied) == (1, 1, 4, 400)
    assert r.measured_ns == 4300


@pytest.mark.parametrize("demand_fetch", ["fifo", "priority"])
def test_writes_allocate_dirty_evictions_write_back_and_dead_values_drop(training, demand_fetch):
    """Budget = one tensor: writes allocate without a copy, a dirty eviction stalls for its write-back,
    dead activations and consumed gradients are dropped free, clean evictions cost nothing.

    Per measured step (P is dirty from the optimizer's write): P hits; writing X evicts P,
    dirty: 100 ns write-back, waited for; X hits and is dropped (dead); P misses (100 ns);
    writing G evicts P, clean: free; G hits and is dropped (the optimizer consumed it); the
    optimizer's write of P allocates it. 3 hits, 1 miss, 200 ns stall of which 100 ns waiting for
    the write-back, 2 evictions, 100 B copied, 100 B written back.
    """
    r = simulate(training, NoPrefetch(), budget=100, link=LINK, demand_fetch=demand_fetch)
    step = [HIT, WRITE, HIT, MISS, WRITE, HIT, WRITE]
    assert r.outcomes.tolist() == [MISS, WRITE, HIT, MISS, WRITE, HIT, WRITE] + step + step
    s = r.stats
    assert (s.accesses, s.hits, s.late, s.misses, s.stall_ns) == (8, 6, 0, 2, 400)
    assert (s.evictions, s.bytes_copied, s.bytes_written_back) == (4, 200, 200)
    assert r.write_stall_ns == 200 and r.overcommits == 0 and r.peak_device_bytes == 100
    assert (r.measured_ns, r.baseline_ns) == (12400, 12000)
    assert (r.warmup.misses, r.warmup.hits, r.warmup.evictions, r.warmup.bytes_written_back) == (2, 2, 2, 0)


def test_refusal_keeps_tensors_needed_sooner(tmp_path):
    """A prefetch that would evict a tensor predicted sooner than itself is refused, and nothing is evicted.

    Budget 2 of 3; reads A, B, A, B, C per step; the policy asks for C after every access but
    predicts C 10 accesses away and A, B 1 and 2. Once A and B are resident, C is never
    prefetched: it misses each step, while A and B hit except B's re-fetch after C evicted it.
    """
    trace = write_trace(tmp_path / "refuse", [("A", P, 100), ("B", P, 100), ("C", P, 100)],
                        [[(R, 0), (R, 1), (R, 0), (R, 1), (R, 2)]] * 3)
    r = simulate(trace, FixedRequests([2], {0: 1.0, 1: 2.0, 2: 10.0}), budget=200, link=LINK)
    assert r.stats.prefetch_issued == 0
    assert r.outcomes.tolist()[5:] == [HIT, MISS, HIT, HIT, MISS] * 2


def test_policy_without_predictions_gets_lru_and_may_evict(tmp_path):
    """With NO_PREDICTION everywhere eviction is LRU and requests are never refused (cf. the refusal test).

    Same trace and requests as the refusal test. Per measured step: A misses (evicts B, the
    least recently used); B misses (evicts C) and C is prefetched again (evicting A); A misses
    (evicts B); B misses (evicts C) and C is prefetched again (evicting A); C hits. LRU
    thrashes: 4 misses, 1 hit, 2 prefetches issued of which 1 is read, 6 evictions.
    """
    trace = write_trace(tmp_path / "lru", [("A", P, 100), ("B", P, 100), ("C", P, 100)],
                        [[(R, 0), (R, 1), (R, 0), (R, 1), (R, 2)]] * 3)
    r = simulate(trace, FixedRequests([2], {}), budget=200, link=LINK)
    assert r.outcomes.tolist() == [MISS, MISS, MISS, MISS, HIT] * 3
    assert (r.stats.prefetch_issued, r.stats.prefetch_used, r.stats.evictions) == (4, 2, 12)


def test_full_budget_has_no_misses_after_warmup(tmp_path):
    """With every managed byte on the device nothing misses after warm-up: the oracle on a dynamic
    trace (it prefetched, in warm-up, what step 0 did not read), no prefetching on a static one."""
    dynamic = _random_trace(tmp_path / "full", seed=3)
    r = simulate(dynamic, "oracle", budget=1.0)
    assert r.stats.misses == 0 and r.overcommits == 0
    assert r.peak_device_bytes <= r.managed_bytes
    assert simulate(dynamic, NoPrefetch(), budget=1.0).stats.misses > 0  # experts first read after step 0
    static = _random_trace(tmp_path / "static", seed=3, num_experts=0)
    r = simulate(static, NoPrefetch(), budget=1.0)
    assert r.stats.misses == 0 and r.stats.hits == r.stats.accesses


def test_budget_below_largest_tensor_is_a_clear_error(cycle):
    """A budget that cannot hold the largest tensor fails before simulating, naming both sizes."""
    with pytest.raises(ValueError, match=r"budget 50 B is below the largest managed tensor \(A in cycle\) of 100 B"):
        simulate(cycle, NoPrefetch(), budget="50B", link=LINK)
    with pytest.raises(ValueError, match="below the largest managed tensor"):
        simulate(cycle, "oracle", budget=0.2, link=LINK)  # 20% of 300 B = 60 B


def test_deterministic(tmp_path):
    """The same inputs give the same report, field for field."""
    trace = _random_trace(tmp_path / "det", seed=1)
    for policy in ("oracle", "replay", "markov"):
        if policy != "oracle" and not _has_policies():
            continue
        a = simulate(trace, policy, budget=0.4).as_dict()
        b = simulate(trace, policy, budget=0.4).as_dict()
        assert a == b


def test_warmup_is_a_snapshot_difference(tmp_path):
    """Warm-up plus measured figures equal the figures of the same run measured from step 0."""
    trace = _random_trace(tmp_path / "warm", seed=2)
    link = LinkModel(bandwidth_bytes_per_s=2e9)
    budget = int(0.5 * trace.tensor_nbytes().sum())
    whole = simulate(trace, OraclePolicy(trace, budget_bytes=budget), budget=budget, link=link, warmup_steps=0)
    split = simulate(trace, OraclePolicy(trace, budget_bytes=budget), budget=budget, link=link, warmup_steps=2)
    for f in ("accesses", "hits", "late", "misses", "stall_ns", "bytes_copied", "bytes_written_back",
              "prefetch_issued", "prefetch_used", "evictions"):
        assert getattr(split.stats, f) + getattr(split.warmup, f) == getattr(whole.stats, f), f
    assert split.steps + 2 == whole.steps
    assert split.stats.accuracy <= 1.0 and split.warmup.accuracy <= 1.0


def test_too_few_steps_for_warmup_is_an_error(cycle):
    """Warm-up that leaves no measured step is a clear error."""
    with pytest.raises(ValueError, match="leave none to measure"):
        simulate(cycle, NoPrefetch(), budget=200, link=LINK, warmup_steps=3)


def test_link_ratio_sets_bandwidth_from_step_time(cycle):
    """By default copying all managed bytes once takes 0.5 x the mean measured step compute time."""
    r = simulate(cycle, NoPrefetch(), budget=200)
    # 300 managed bytes, 2000 ns of compute per step: 300 B / 1000 ns
    assert r.link["ratio"] == 0.5 and r.link["bandwidth_GBps"] == pytest.approx(0.3)
    assert simulate(cycle, NoPrefetch(), budget=200, link_ratio=1.0).link["bandwidth_GBps"] == pytest.approx(0.15)


def test_several_traces_sum_with_breakdown(tmp_path, cycle):
    """Several traces: counters are summed, each trace keeps its own report."""
    other = _random_trace(tmp_path / "other", seed=4)
    one = simulate(cycle, "oracle", budget=1.0, link=LINK)
    two = simulate(other, "oracle", budget=1.0, link=LINK)
    both = simulate([cycle, other], "oracle", budget=1.0, link=LINK)
    assert [t.trace for t in both.traces] == ["cycle", "other"]
    assert both.stats.accesses == one.stats.accesses + two.stats.accesses
    assert both.stats.hits == one.stats.hits + two.stats.hits
    assert both.measured_ns == one.measured_ns + two.measured_ns
    d = both.as_dict()
    assert len(d["traces"]) == 2 and d["traces"][0]["trace"] == "cycle"


def test_report_has_design_keys(cycle):
    """as_dict() carries every DESIGN.md report key, JSON-serialisable."""
    d = simulate(cycle, "oracle", budget=200, link=LINK).as_dict()
    for key in REPORT_KEYS:
        assert key in d, key
    assert d["device"] == "simulated" and d["policy"] == "oracle"
    json.dumps(d)


def test_cli_json_writes_the_report_keys(cycle, tmp_path, capsys):
    """`prefetch simulate DIR --policy oracle --json F` prints a summary and writes the keys."""
    out = tmp_path / "report.json"
    rc = cli_main(["simulate", str(cycle.stem.parent), "--policy", "oracle", "--budget", "0.7",
                   "--bandwidth", "1", "--latency-us", "0", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    for key in REPORT_KEYS:
        assert key in d, key
    assert d["link"]["bandwidth_GBps"] == pytest.approx(1.0) and d["budget_bytes"] == 210
    assert "hit" in capsys.readouterr().out


def test_cli_sweep_writes_a_png_and_table(cycle, tmp_path, capsys):
    """`--sweep` prints one row per policy x budget and writes the plot."""
    png = tmp_path / "sweep.png"
    out = tmp_path / "sweep.json"
    rc = cli_main(["simulate", str(cycle.stem.parent), "--sweep", "--sweep-policies", "oracle",
                   "--sweep-budgets", "0.4,0.7,1.0", "--plot", str(png), "--json", str(out)])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads(out.read_text())["sweep"]) == 3
    table = capsys.readouterr().out
    assert table.count("oracle") >= 3 and "slowdown" in table


def test_cli_errors_are_one_line(cycle, capsys):
    """A bad budget or a missing --policy exits 2 with one clear line."""
    assert cli_main(["simulate", str(cycle.stem.parent), "--policy", "oracle", "--budget", "10B"]) == 2
    assert "below the largest managed tensor" in capsys.readouterr().err
    assert cli_main(["simulate", str(cycle.stem.parent)]) == 2
    assert "--policy is required" in capsys.readouterr().err


REPORT_KEYS = (
    "policy", "device", "link", "managed_bytes", "budget_bytes", "peak_device_bytes", "steps", "warmup_steps",
    "accesses", "hits", "late", "misses", "hit_rate", "stall_s", "bytes_copied", "prefetch_issued",
    "prefetch_used", "accuracy", "step_time_s", "baseline_step_time_s", "slowdown", "warmup",
)


def _has_policies() -> bool:
    try:
        import predictor.policies  # noqa: F401
    except ImportError:
        return False
    return True


def _random_trace(stem, *, seed: int, steps: int = 5, num_params: int = 8, num_experts: int = 4):
    """A small dynamic training trace: every step reads a random subset of 'expert' parameters in
    a random order, packs and unpacks activations, produces and consumes gradients."""
    rng = np.random.default_rng(seed)
    tensors = [(f"p{i}", P, int(rng.integers(50, 400))) for i in range(num_params)]
    tensors += [(f"e{i}", P, int(rng.integers(50, 400))) for i in range(num_experts)]
    tensors += [(f"a{i}", A, int(rng.integers(50, 300))) for i in range(num_params)]
    tensors += [(f"g{i}", G, tensors[i][2]) for i in range(num_params)]
    a0, g0, e0 = num_params + num_experts, 2 * num_params + num_experts, num_params
    all_steps = []
    for _ in range(steps):
        experts = rng.permutation(num_experts)[: int(rng.integers(1, num_experts + 1))] if num_experts else []
        ev = []
        for i in range(num_params):
            ev.append((R, i))
            if i == num_params // 2:
                ev += [(R, e0 + int(e)) for e in experts]
            ev.append((W, a0 + i))
        for i in reversed(range(num_params)):
            ev += [(R, a0 + i, Phase.BACKWARD), (R, i, Phase.BACKWARD), (W, g0 + i, Phase.BACKWARD)]
        for i in range(num_params):
            ev += [(R, g0 + i, Phase.OPTIMIZER), (W, i, Phase.OPTIMIZER)]
        all_steps.append(ev)
    return write_trace(stem, tensors, all_steps, dt=int(rng.integers(200, 2000)))

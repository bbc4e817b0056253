"""The daemon path's advice (predictor.daemon_path): one implementation for the live client and the simulation.

    python -m pytest tests/predictor/test_daemon_path.py -q

The simulated path is driven with a fake clock (each event 10 ns after the last); the live
client talks to a real daemon in a thread, gated so its replies come back exactly one batch
late, which is what the simulated path does with a round trip shorter than a batch.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from predictor.daemon_path import DaemonPath, ReplySchedule, SimulatedDaemonPolicy
from predictor.interface import NO_PREDICTION, BasePolicy, TensorInfo
from predictor.policies import make_policy
from prefetch.daemon_config import DaemonConfig
from prefetch.daemon_sessions import PolicyChoice
from prefetch.daemon_thread import run_daemon_in_thread
from runtime.trace_format import Access, Phase

N = 12
READ, WRITE = int(Access.READ), int(Access.WRITE)
FWD = int(Phase.FORWARD)


def table(n: int = N) -> TensorInfo:
    return TensorInfo(keys=tuple(f"param:w{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.full(n, 1 << 20, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)


class Scripted(BasePolicy):
    """Requests `script[i]` at the i-th event; next use `nu[t]` (NO_PREDICTION when absent)."""

    name = "scripted"

    def __init__(self, script: dict[int, list[int]], nu: dict[int, float]):
        self.script, self.nu, self.i = script, nu, 0

    def start(self, tensors: TensorInfo) -> None:
        self.i = 0

    def observe(self, step, micro_step, phase, access, tensor_id):
        out = self.script.get(self.i, [])
        self.i += 1
        return out

    def predicted_next_use(self, tensor_id: int) -> float:
        return self.nu.get(tensor_id, NO_PREDICTION)


class Clock:
    """The executor's clock, set by the test before each event."""

    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


def wrapped(inner, *, batch=2, rtt=100, fallback="replay", lookahead=4) -> tuple[SimulatedDaemonPolicy, Clock]:
    pol = SimulatedDaemonPolicy(inner, lookahead=lookahead,
                                path=DaemonPath(batch_events=batch, round_trip_ns=rtt, fallback=fallback))
    clock = Clock()
    pol.bind_clock(clock)
    pol.start(table())
    return pol, clock


def stream(steps: int, swap_in_step: int | None = None) -> list[tuple[int, int, int, int, int]]:
    """Each step reads tensors 0..N-1 in order (two adjacent ones swapped in `swap_in_step`) and
    writes tensor 0 at its end."""
    out = []
    for s in range(steps):
        order = list(range(N))
        if s == swap_in_step:
            order[5], order[6] = order[6], order[5]
        out += [(s, 0, FWD, READ, t) for t in order]
        out.append((s, 0, FWD, WRITE, 0))
    return out


def feed(pol: SimulatedDaemonPolicy, clock: Clock, n: int, step_ns: int = 10) -> list[list[int]]:
    """n read events of tensor 11 (outside any script), event i at i * step_ns: the requests of each."""
    out = []
    for i in range(n):
        clock.t = i * step_ns
        out.append(list(pol.observe(0, 0, FWD, READ, 11)))
    return out


def test_a_request_arrives_at_the_first_poll_a_round_trip_after_its_batch_is_sent():
    """The inner policy's request at event 0 is sent with the batch's last event (event 1, t=10)
    and delivered at the first send at or after t=10+100, event 11; nothing is delivered earlier."""
    pol, clock = wrapped(Scripted({0: [5]}, {5: 30.0}), batch=2, rtt=100)
    got = feed(pol, clock, 16)
    assert [i for i, r in enumerate(got) if r] == [11]
    assert got[11] == [5]


def test_zero_round_trip_still_waits_for_the_batch():
    """With no latency the reply is read at the poll right after its own send: the batch's
    last event (event 2 of a 3-event batch), not the event that caused the request."""
    pol, clock = wrapped(Scripted({0: [5], 4: [7]}, {}), batch=3, rtt=0)
    got = feed(pol, clock, 9)
    assert [(i, r) for i, r in enumerate(got) if r] == [(2, [5]), (5, [7])]


def test_replies_that_arrived_together_are_delivered_in_order():
    """Two batches whose replies are both readable at one poll come out oldest first."""
    pol, clock = wrapped(Scripted({0: [5], 2: [6]}, {}), batch=2, rtt=25)
    got = feed(pol, clock, 8)  # sends at t=10 (-> 35), 30 (-> 55), 50, 70
    assert [(i, r) for i, r in enumerate(got) if r] == [(5, [5]), (7, [6])]


def test_next_use_is_the_daemons_fresh_due_else_the_fallbacks():
    """Before the reply, and for ids never asked for or overdue by more than the lookahead,
    next use is the fallback's; after it, the daemon's prediction counted down by reads."""
    fallback = Scripted({}, {5: 1000.0, 3: 2000.0})
    pol, clock = wrapped(Scripted({0: [5]}, {5: 30.0}), batch=2, rtt=0, fallback="none", lookahead=4)
    pol.fallback = fallback
    assert pol.predicted_next_use(5) == 1000.0  # nothing from the daemon yet
    feed(pol, clock, 2)  # delivered at event 1, after 2 reads: due = 2 + 30
    assert pol.predicted_next_use(5) == 30.0
    assert pol.predicted_next_use(3) == 2000.0  # never asked for
    feed(pol, clock, 10)
    assert pol.predicted_next_use(5) == 20.0
    feed(pol, clock, 20 + 4)  # 4 reads overdue: the lookahead still trusts it
    assert pol.predicted_next_use(5) == 1.0
    feed(pol, clock, 1)  # 5 reads overdue: a wrong prediction, the fallback answers
    assert pol.predicted_next_use(5) == 1000.0


def test_reading_a_tensor_forgets_its_due():
    """Once read, a tensor's due is spent: next use is the fallback's until a new command."""
    fallback = Scripted({}, {5: 1000.0})
    pol, clock = wrapped(Scripted({0: [5]}, {5: 30.0}), batch=2, rtt=0, fallback="none")
    pol.fallback = fallback
    feed(pol, clock, 2)
    assert pol.predicted_next_use(5) == 30.0
    pol.observe(0, 0, FWD, READ, 5)
    assert pol.predicted_next_use(5) == 1000.0


def test_without_a_fallback_there_is_no_local_view():
    """fallback "none": where the daemon gave no fresh due, next use is NO_PREDICTION."""
    pol, clock = wrapped(Scripted({}, {}), fallback="none")
    for ev in stream(2):
        pol.observe(*ev)
    assert pol.predicted_next_use(3) == NO_PREDICTION
    pol, clock = wrapped(Scripted({}, {}), fallback="replay")
    for ev in stream(2):
        pol.observe(*ev)
    assert pol.predicted_next_use(3) != NO_PREDICTION  # replay expects the next step's reads


def test_start_without_a_clock_and_bad_paths_are_refused():
    """The wrapper needs the executor's clock; a path's numbers and fallback are checked."""
    pol = SimulatedDaemonPolicy(Scripted({}, {}), lookahead=4)
    with pytest.raises(RuntimeError, match="bind_clock"):
        pol.start(table())
    with pytest.raises(ValueError, match="batch_events"):
        DaemonPath(batch_events=0)
    with pytest.raises(ValueError, match="round_trip_ns"):
        DaemonPath(round_trip_ns=-1)
    with pytest.raises(ValueError, match="fallback"):
        DaemonPath(fallback="learned:models/")


class Gated(BasePolicy):
    """The daemon's policy (replay), holding each batch until the test lets it through."""

    name = "replay"

    def __init__(self, inner, gate: threading.Semaphore, batch: int):
        self.inner, self.gate, self.batch, self.n = inner, gate, batch, 0

    def start(self, tensors):
        self.inner.start(tensors)

    def observe(self, *ev):
        if self.n % self.batch == 0:
            assert self.gate.acquire(timeout=10), "the test never released the batch"
        self.n += 1
        return self.inner.observe(*ev)

    def predicted_next_use(self, tensor_id):
        return self.inner.predicted_next_use(tensor_id)


def run_live(on_send, *, lookahead: int = 4, batch: int = 2):
    """A live DaemonPolicy over a real daemon whose replay holds each batch until released:
    `on_send(gate, client, sends)` after every batch sent. (requests, next uses, the policy, events)."""
    from runtime.daemon_policy import DaemonPolicy

    gate = threading.Semaphore(0)

    def factory(spec, *, architecture, tensors, lookahead):
        policy = Gated(make_policy("replay", lookahead=lookahead), gate, batch)
        policy.start(tensors)
        return PolicyChoice(policy, served="replay")

    ctx = zmq.Context()
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=1), policy_factory=factory, context=ctx)
    events = stream(4, swap_in_step=2)
    reqs, nus = [], []
    live = DaemonPolicy("learned:unused", architecture="Arch-test", endpoint=d.endpoint, lookahead=lookahead,
                        tensors_fn=table, batch_events=batch)
    try:
        assert live.client.connected
        live.start(table())
        sends = 0
        for ev in events:
            reqs.append(list(live.observe(*ev)))
            nus.append([live.predicted_next_use(t) for t in range(N)])
            if not live.client.buffered:  # a batch went out (and was polled at once)
                sends += 1
                on_send(gate, live.client, sends)
    finally:
        live.close()
        d.stop()
        ctx.term()
    return reqs, nus, live, events


def test_live_client_and_simulated_path_make_the_same_requests():
    """Given the same replies (the daemon's replay, each read one batch after its send), the live
    DaemonPolicy and the simulated path return the same requests and the same next use at every
    event: the advice is one implementation."""
    lookahead, batch = 4, 2

    def one_batch_late(gate, client, sends):  # let its reply come, read at the next send's poll
        gate.release()
        assert client.wait(5000), "the daemon did not answer"

    live_reqs, live_nu, live, events = run_live(one_batch_late, lookahead=lookahead, batch=batch)
    assert live.client.stats.commands_received == len(events) // batch - 1  # the last one is never read

    sim, clock = wrapped(make_policy("replay", lookahead=lookahead), batch=batch, rtt=15, lookahead=lookahead)
    sim_reqs, sim_nu = [], []
    for i, ev in enumerate(events):
        clock.t = 10 * i  # a reply sent at event i is readable by event i + 2's poll, not i's
        sim_reqs.append(list(sim.observe(*ev)))
        sim_nu.append([sim.predicted_next_use(t) for t in range(N)])
    assert any(sim_reqs), "the stream must make replay request something"
    assert sim_reqs == live_reqs
    assert sim_nu == live_nu


def _trace(traces):
    return next((traces / "static-train").glob("*.events.arrow"))


def test_the_simulator_serves_a_policy_through_the_daemon_path(traces):
    """simulate(daemon=...) wraps the policy: replies that never come back (a round trip longer
    than the trace) and no local view leave exactly what policy 'none' does; the real path requests."""
    from prefetch.simulate import simulate

    trace = _trace(traces)
    never = simulate(trace, "replay", budget=0.5, daemon=DaemonPath(round_trip_ns=10**15, fallback="none"))
    floor = simulate(trace, "none", budget=0.5)
    assert never.policy == "replay via daemon"
    assert (never.stats.hit_rate, never.prefetch_requested) == (floor.stats.hit_rate, 0)
    served = simulate(trace, "replay", budget=0.5, daemon=True)
    assert served.prefetch_requested > 0 and served.stats.hit_rate > floor.stats.hit_rate
    with pytest.raises(ValueError, match="oracle"):
        simulate(trace, "oracle", daemon=True)


def test_simulate_like_run_sends_learned_through_the_daemon(traces, model_dir):
    """A live learned run went through the daemon, so its simulation does by default; a replay run
    ran in process, and so is simulated; `daemon=False` asks for the model in process."""
    from prefetch.simulate import simulate_like_run

    run = {"policy": f"learned:{model_dir}", "budget_bytes": 1 << 30, "trace": str(_trace(traces))}
    assert simulate_like_run(run).policy == f"learned:{model_dir} via daemon"
    assert simulate_like_run(run, daemon=False).policy == f"learned:{model_dir}"
    assert simulate_like_run({**run, "policy": "replay"}).policy == "replay"


def test_cli_via_daemon_selects_the_path_and_its_options_need_it(traces, tmp_path, capsys):
    """`prefetch simulate --via-daemon` reports the policy through the daemon, its round trip
    reaches the path (a round trip longer than the trace: nothing requested); the path's
    options without --via-daemon, and a bad fallback, are one-line errors naming the flag."""
    import json

    from prefetch.cli import main as cli_main

    trace, out = str(_trace(traces)), tmp_path / "r.json"
    assert cli_main(["simulate", trace, "--policy", "replay", "--via-daemon", "--json", str(out)]) == 0
    served = json.loads(out.read_text())
    assert served["policy"] == "replay via daemon" and served["prefetch_requested"] > 0
    assert cli_main(["simulate", trace, "--policy", "replay", "--via-daemon", "--daemon-round-trip-us", "1e12",
                     "--daemon-fallback", "none", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["prefetch_requested"] == 0
    capsys.readouterr()
    assert cli_main(["simulate", trace, "--policy", "replay", "--daemon-fallback", "none"]) == 2
    assert "--daemon-fallback goes with --via-daemon" in capsys.readouterr().err
    assert cli_main(["simulate", trace, "--policy", "replay", "--via-daemon", "--daemon-fallback", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "--daemon-fallback: unknown policy 'bogus'" in err and len(err.strip().splitlines()) == 1


# -- the recorded reply schedule (ReplySchedule) ------------------------------------------------
def scheduled(inner, read_at, *, events=100, batch=2, fallback="replay") -> SimulatedDaemonPolicy:
    sched = ReplySchedule(batch, events, tuple(read_at), "run-x")
    pol = SimulatedDaemonPolicy(inner, lookahead=4, path=DaemonPath(batch_events=batch, fallback=fallback,
                                                                     schedule=sched))
    pol.start(table())  # no clock: a schedule does not need one
    return pol


def test_a_recorded_schedule_is_followed_exactly():
    """Batch b's reply is delivered at event read_at[b], whatever the clock says; -1 and
    batches past the schedule's end are never delivered; replies read together keep their order."""
    script = {0: [1], 2: [2], 4: [3], 6: [4], 8: [5], 10: [6]}  # one request per batch of 2
    pol = scheduled(Scripted(script, {}), [3, 7, -1, 9, 9])
    clock = Clock()
    clock.t = 10**15  # a modelled reply would have arrived long ago: ignored
    pol.bind_clock(clock)
    got = [list(pol.observe(0, 0, FWD, READ, 11)) for _ in range(14)]
    assert [(i, r) for i, r in enumerate(got) if r] == [(3, [1]), (7, [2]), (9, [4, 5])]
    assert pol.note is not None and "daemon replies: recorded" in pol.note and "run-x" in pol.note


def test_a_bad_schedule_is_a_one_line_error_naming_its_trace():
    """A reply recorded before its batch was sent, off a poll, out of order or past the events; a
    stream longer than the schedule; a path with other batches; a malformed manifest entry: each
    a one-line ValueError naming the trace."""
    bad = {"before the batch was sent": [0], "no poll": [1, 4], "in order": [5, 3], "past the": [1, 3, 5, 7, 9, 11]}
    for why, read_at in bad.items():
        with pytest.raises(ValueError, match=why) as err:
            ReplySchedule(2, 10, tuple(read_at), "run-x")
        assert str(err.value).startswith("run-x: daemon_replies:") and "\n" not in str(err.value)
    pol = scheduled(Scripted({}, {}), [1, 3], events=4)
    for _ in range(4):
        pol.observe(0, 0, FWD, READ, 11)
    with pytest.raises(ValueError, match="run-x: daemon_replies covers 4 events, the stream has more"):
        pol.observe(0, 0, FWD, READ, 11)
    with pytest.raises(ValueError, match="recorded with batches of 2"):
        DaemonPath(batch_events=3, schedule=ReplySchedule(2, 4, (1,), "run-x"))
    for obj in ({"batch_events": 2, "events": 4}, {"batch_events": "2", "events": 4, "read_at": []},
                {"batch_events": 2, "events": 4, "read_at": [1.5]}, [1, 3]):
        with pytest.raises(ValueError, match=r"^run-x: daemon_replies must be \{batch_events"):
            ReplySchedule.from_manifest(obj, "run-x")


def test_live_client_records_the_schedule_its_simulation_replays(tmp_path):
    """A live DaemonPolicy whose replies come back irregularly (some held for polls) records
    which event it read each at; the simulated path given that schedule returns the very same
    requests and next use at every event."""
    lookahead, batch = 4, 2

    def irregular(gate, client, sends):  # hold every third batch, then let two through
        if sends % 3:
            gate.release(1 if sends % 3 == 1 else 2)
            assert client.wait(5000), "the daemon did not answer"

    live_reqs, live_nu, live, events = run_live(irregular, lookahead=lookahead, batch=batch)
    sched = live.reply_schedule()
    assert sched is not None and live.schedule_note is None
    assert sched.events == len(events) and sched.batch_events == batch
    lateness = {at - (2 * b + 1) for b, at in enumerate(sched.read_at) if at >= 0}
    assert 0 < max(lateness) and len(lateness) > 1, sched.read_at  # irregular: not one fixed lag

    sim = SimulatedDaemonPolicy(make_policy("replay", lookahead=lookahead), lookahead=lookahead,
                                path=DaemonPath(batch_events=batch, schedule=sched))
    sim.start(table())
    sim_reqs, sim_nu = [], []
    for ev in events:
        sim_reqs.append(list(sim.observe(*ev)))
        sim_nu.append([sim.predicted_next_use(t) for t in range(N)])
    assert any(sim_reqs)
    assert sim_reqs == live_reqs
    assert sim_nu == live_nu


def test_live_client_keeps_no_schedule_when_the_daemon_was_down():
    """A client that never reached its daemon has no schedule, and says why."""
    from runtime.daemon_policy import DaemonPolicy

    live = DaemonPolicy("learned:unused", architecture="Arch-test", endpoint="tcp://127.0.0.1:9",
                        lookahead=4, tensors_fn=table, batch_events=2, connect_timeout_s=0.2)
    try:
        assert not live.client.connected
        live.start(table())
        for ev in stream(1):
            live.observe(*ev)
    finally:
        live.close()
    assert live.reply_schedule() is None
    assert live.schedule_note == "daemon reply schedule not kept: the daemon was down"


def test_simulate_like_run_follows_the_traces_recorded_schedule(traces, model_dir):
    """A learned run's trace with a reply schedule is simulated by it (report: daemon_replies
    "recorded"): every reply read at its own send is the zero round trip, none read is an
    infinite one; without a schedule the model serves ("modelled"); one for another trace is
    an error naming the trace."""
    from prefetch.simulate import simulate, simulate_like_run
    from runtime.trace_format import load_trace

    spec = f"learned:{model_dir}"
    run = {"policy": spec, "budget_bytes": 1 << 22}
    trace = load_trace(_trace(traces)).managed()
    n, size = trace.num_events, 2
    modelled = simulate_like_run(run, trace)
    assert modelled.extra["daemon_replies"] == "modelled"
    for read_at, rtt in ((tuple(2 * b + 1 for b in range(n // size)), 0), ((), 10**15)):
        trace.manifest["daemon_replies"] = {"batch_events": size, "events": n, "read_at": list(read_at)}
        got = simulate_like_run(run, trace)
        want = simulate(trace, spec, budget=1 << 22, daemon=DaemonPath(round_trip_ns=rtt))
        assert got.extra["daemon_replies"] == "recorded"
        assert (got.stats.hits, got.stats.late, got.prefetch_requested) == (
            want.stats.hits, want.stats.late, want.prefetch_requested)
    assert simulate_like_run(run, trace, daemon=True).extra["daemon_replies"] == "modelled"
    trace.manifest["daemon_replies"]["events"] = n + 2
    with pytest.raises(ValueError, match=f"^{trace.stem}: daemon_replies covers {n + 2} events, the trace has {n}"):
        simulate_like_run(run, trace)


def test_live_client_keeps_no_schedule_after_a_partial_batch():
    """The tensor table growing mid-batch flushes a short batch: batches no longer start every
    batch_events events, so the client keeps no schedule, and says why."""
    from runtime.daemon_policy import DaemonPolicy

    def factory(spec, *, architecture, tensors, lookahead):
        policy = make_policy("replay", lookahead=lookahead)
        policy.start(tensors)
        return PolicyChoice(policy, served="replay")

    size = [N]
    ctx = zmq.Context()
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=1), policy_factory=factory, context=ctx)
    live = DaemonPolicy("learned:unused", architecture="Arch-test", endpoint=d.endpoint, lookahead=4,
                        tensors_fn=lambda: table(size[0]), batch_events=2)
    try:
        assert live.client.connected
        live.start(table())
        live.observe(0, 0, FWD, READ, 0)
        size[0] = N + 1  # a new tensor, seen at the batch's second event: the first goes out alone
        live.observe(0, 0, FWD, WRITE, N)
        for ev in stream(1):
            live.observe(*ev)
    finally:
        live.close()
        d.stop()
        ctx.term()
    assert live.reply_schedule() is None
    assert live.schedule_note == "daemon reply schedule not kept: a partial batch was sent (the tensor table grew)"

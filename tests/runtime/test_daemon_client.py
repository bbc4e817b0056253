"""The runtime's daemon client: never blocks, notices a dead daemon, warns once, reconnects.

    python -m pytest tests/runtime/test_daemon_client.py -q

Sockets close with linger=0 and every wait has a deadline, so nothing here can hang CI.
"""

from __future__ import annotations

import signal
import time
import warnings

import numpy as np
import pytest
import zmq

from predictor.interface import NO_PREDICTION, BasePolicy, PolicyError, TensorInfo
from prefetch.daemon_config import DaemonConfig
from prefetch.daemon_sessions import PolicyChoice
from prefetch.daemon_thread import run_daemon_in_thread
from runtime import wire, wire_decode
from runtime.daemon_client import (
    DaemonClient,
    DaemonClientConfig,
    DaemonUnavailableWarning,
)
from runtime.daemon_launch import start_local_daemon


class NextId(BasePolicy):
    """A tiny policy: after reading id t, prefetch (t + 1) mod n."""

    name = "next"

    def start(self, tensors: TensorInfo) -> None:
        self.n = tensors.num_tensors

    def observe(self, step, micro_step, phase, access, tensor_id):
        return [(tensor_id + 1) % self.n]

    def predicted_next_use(self, tensor_id):
        return 2.0

    def extend(self, tensors: TensorInfo, first_id: int) -> None:
        self.n = first_id + tensors.num_tensors


def factory(spec, *, architecture, tensors, lookahead):
    if spec == "refuse":
        raise PolicyError("refused by the test factory")
    policy = NextId()
    policy.start(tensors)
    return PolicyChoice(policy, served="next", fallback_reason=None if spec == "next" else f"{spec} unavailable")


def table(n: int, prefix: str = "param:w") -> TensorInfo:
    return TensorInfo(keys=tuple(f"{prefix}{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.full(n, 64, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)


def config(endpoint: str, **kw) -> DaemonClientConfig:
    kw.setdefault("policy", "next")
    return DaemonClientConfig(endpoint=endpoint, architecture="Arch-test", timeout_ms=200, hello_timeout_ms=300,
                              reconnect_ms=100, **kw)


def until(predicate, client: DaemonClient, timeout_s: float = 3.0, sink: list | None = None) -> bool:
    """Poll the client (sleeping, never spinning) until predicate() or the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = client.poll_commands()
        if sink is not None:
            sink.extend(got)
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def daemon(ctx):
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10), policy_factory=factory, context=ctx)
    yield d
    d.stop()


def test_client_connects_and_receives_commands(ctx, daemon):
    """After HELLO_OK, recorded events come back as commands in order, with next use."""
    with DaemonClient(config(daemon.endpoint, batch_events=4), table(10), context=ctx) as c:
        assert c.wait_connected(3.0)
        assert c.served_policy == "next" and c.hello.fallback_reason is None
        for t in range(6):
            c.record(0, 0, 0, 0, t)  # four of them go out at once (batch_events=4)
        c.flush()
        got: list = []
        assert until(lambda: c.stats.commands_received == 2, c, sink=got)
        assert [t for c in got for t in c.tensor_ids.tolist()] == [1, 2, 3, 4, 5, 6]
        assert [n for c in got for n in c.next_use.tolist()] == [2.0] * 6
        assert c.stats.events_sent == 6 and c.outstanding == 0 and c.stats.rtt_ns_last > 0


def test_fallback_reason_is_exposed(ctx, daemon):
    """When the daemon serves another policy than asked, the client says which and why."""
    with DaemonClient(config(daemon.endpoint, policy="learned"), table(3), context=ctx) as c:
        assert c.wait_connected(3.0)
        assert c.served_policy == "next" and c.hello.requested == "learned"
        assert c.hello.fallback_reason == "learned unavailable"


def test_calls_never_block_without_a_daemon(ctx, tmp_path):
    """With nothing listening, start, send_events, flush and poll_commands all return at once."""
    c = DaemonClient(config(f"ipc://{tmp_path}/nobody.sock"), table(4), context=ctx)
    t0 = time.perf_counter()
    c.start()
    worst = 0.0
    for i in range(200):
        t = time.perf_counter()
        c.send_events([(0, 0, 0, 0, i % 4)])
        c.record(0, 0, 0, 0, 1)
        c.flush()
        c.poll_commands()
        worst = max(worst, time.perf_counter() - t)
    assert time.perf_counter() - t0 < 2.0
    assert worst < 0.15  # nothing waits on the daemon (its timeouts are 200-300 ms); slack for a loaded CI box
    assert not c.connected and c.stats.events_sent == 0 and c.stats.events_dropped_down == 400
    c.close()


def test_unanswered_batches_are_capped_and_counted(ctx):
    """With a silent peer, at most max_outstanding batches go out; the rest are dropped and counted."""
    silent = ctx.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    c = DaemonClient(config(f"tcp://127.0.0.1:{port}", max_outstanding=4), table(4), context=ctx).start()
    try:
        assert silent.poll(3000)
        ident, *frames = silent.recv_multipart()
        hello = wire_decode.decode(frames)
        assert isinstance(hello, wire.Hello) and hello.tensors.num_tensors == 4
        silent.send_multipart([ident, *wire.HelloOk(session=5, policy="next", requested="next").encode()])
        assert until(lambda: c.connected, c)
        sent = [c.send_events([(0, 0, 0, 0, 1)]) for _ in range(6)]
        assert sent == [True] * 4 + [False] * 2
        assert c.stats.events_dropped_full == 2 and c.outstanding == 4
    finally:
        c.close()
        silent.close(linger=0)


def test_silent_daemon_declared_down_after_timeout(ctx):
    """Events outstanding and no reply for timeout_ms: down, one warning, socket replaced."""
    silent = ctx.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    c = DaemonClient(config(f"tcp://127.0.0.1:{port}"), table(4), context=ctx).start()
    try:
        assert silent.poll(3000)
        ident, *_ = silent.recv_multipart()
        silent.send_multipart([ident, *wire.HelloOk(session=5, policy="next", requested="next").encode()])
        assert until(lambda: c.connected, c)
        c.send_events([(0, 0, 0, 0, 1)])
        t0 = time.monotonic()
        with pytest.warns(DaemonUnavailableWarning, match="no reply for 200 ms"):
            assert until(lambda: not c.connected, c)
        assert 0.15 < time.monotonic() - t0 < 2.0
        assert c.stats.disconnects == 1
    finally:
        c.close()
        silent.close(linger=0)


def test_daemon_killed_mid_stream_warns_once_and_reconnects(ctx, tmp_path):
    """SIGKILL the daemon mid-stream: the client notices, warns once, stays usable while down,
    and reconnects (new HELLO, new session) when a daemon appears on the same endpoint."""
    endpoint = f"ipc://{tmp_path}/d.sock"
    _, handle = start_local_daemon(None, endpoint=endpoint)
    c = DaemonClient(config(endpoint, policy="replay"), table(8), context=ctx).start()
    replacement = None
    try:
        assert c.wait_connected(5.0) and c.served_policy == "replay"
        first_session = c.hello.session
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(20):  # streaming
                c.send_events([(i // 8, 0, 0, 0, i % 8)])
                until(lambda: c.outstanding == 0, c, timeout_s=1.0)
            assert c.stats.commands_received == 20
            handle.process.send_signal(signal.SIGKILL)  # no BYE: only silence tells
            handle.process.wait(5)
            deadline = time.monotonic() + 3.0
            while c.connected and time.monotonic() < deadline:
                c.send_events([(3, 0, 0, 0, 1)])
                c.poll_commands()
                time.sleep(0.01)
            assert not c.connected
            # down for a while: several failed reconnect attempts, still exactly one warning
            until(lambda: False, c, timeout_s=0.8)
            assert c.stats.hellos_sent >= 3
            assert not c.send_events([(3, 0, 0, 0, 2)])  # dropped and counted while down
            unavailable = [w for w in caught if issubclass(w.category, DaemonUnavailableWarning)]
            assert len(unavailable) == 1, [str(w.message) for w in unavailable]
            replacement = run_daemon_in_thread(DaemonConfig(bind=endpoint, poll_ms=10), policy_factory=factory,
                                               context=ctx)
            assert until(lambda: c.connected, c, timeout_s=3.0)
            assert len([w for w in caught if issubclass(w.category, DaemonUnavailableWarning)]) == 1
        assert c.hello.session != first_session and c.stats.reconnects == 1
        assert c.stats.events_dropped_down >= 1
        assert c.send_events([(4, 0, 0, 0, 7)])
        got: list = []
        assert until(lambda: len(got) == 1, c, sink=got)
        assert got[0].tensor_ids.tolist() == [0]
    finally:
        c.close()
        handle.stop()
        if replacement is not None:
            replacement.stop()


def test_bye_from_stopping_daemon_switches_over_at_once(ctx):
    """A daemon that stops says BYE: the client is down immediately, not after the timeout."""
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10), policy_factory=factory, context=ctx)
    c = DaemonClient(config(d.endpoint), table(4), context=ctx).start()
    try:
        assert c.wait_connected(3.0)
        d.stop()
        with pytest.warns(DaemonUnavailableWarning, match="bye"):
            assert until(lambda: not c.connected, c, timeout_s=1.0)
        assert c.outstanding == 0
    finally:
        c.close()
        d.stop()


def test_expired_session_is_renewed_without_warning(ctx):
    """When the daemon expires an idle session, the client says HELLO again and goes on."""
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, session_idle_s=0.2),
                             policy_factory=factory, context=ctx)
    c = DaemonClient(config(d.endpoint), table(4), context=ctx).start()
    try:
        assert c.wait_connected(3.0)
        first = c.hello.session
        with warnings.catch_warnings():
            warnings.simplefilter("error", DaemonUnavailableWarning)
            assert until(lambda: c.hello.session != first and c.connected, c, timeout_s=3.0)
        assert c.stats.disconnects == 0
        assert c.send_events([(0, 0, 0, 0, 3)])
        got: list = []
        assert until(lambda: len(got) == 1, c, sink=got)
        assert got[0].tensor_ids.tolist() == [0]
    finally:
        c.close()
        d.stop()


def test_unknown_session_error_triggers_a_new_hello(ctx, daemon):
    """An EVENTS batch answered with unknown_session makes the client say HELLO again."""
    c = DaemonClient(config(daemon.endpoint), table(4), context=ctx).start()
    try:
        assert c.wait_connected(3.0)
        c._session += 1  # as if the daemon had restarted and forgotten us
        assert c.send_events([(0, 0, 0, 0, 1)])
        assert until(lambda: c.stats.hellos_sent == 2 and c.connected, c)
        assert c.stats.errors_received == 1 and c.stats.disconnects == 0
    finally:
        c.close()


def test_refused_hello_goes_down_with_the_reason(ctx, daemon):
    """A HELLO the daemon refuses leaves the client down, warned once, with the reason."""
    c = DaemonClient(config(daemon.endpoint, policy="refuse"), table(4), context=ctx)
    with pytest.warns(DaemonUnavailableWarning, match="refused by the test factory"):
        c.start()
        assert not c.wait_connected(0.5)
    assert "refused by the test factory" in c.last_error
    c.close()


def test_update_tensors_lets_new_ids_through(ctx, daemon):
    """update_tensors sends the new rows first, so events on new ids are served."""
    c = DaemonClient(config(daemon.endpoint), table(3), context=ctx).start()
    try:
        assert c.wait_connected(3.0)
        grown = TensorInfo(keys=table(3).keys + ("act:a0", "act:a1"), kinds=np.zeros(5, np.int8),
                           nbytes=np.full(5, 64, np.int64), layers=np.full(5, -1, np.int16), modules=("m",) * 5)
        c.update_tensors(grown)
        assert c.send_events([(0, 0, 0, 0, 4), (0, 0, 0, 0, 3)])
        got: list = []
        assert until(lambda: len(got) == 1, c, sink=got)
        assert got[0].tensor_ids.tolist() == [0, 4] and c.stats.errors_received == 0
        with pytest.raises(ValueError, match="extend"):
            c.update_tensors(table(2))
    finally:
        c.close()


def test_table_grown_during_hello_is_topped_up(ctx, daemon):
    """Rows added while HELLO is in flight are sent right after HELLO_OK."""
    c = DaemonClient(config(daemon.endpoint), table(3), context=ctx).start()
    try:
        grown = TensorInfo(keys=table(3).keys + ("act:a0",), kinds=np.zeros(4, np.int8),
                           nbytes=np.full(4, 64, np.int64), layers=np.full(4, -1, np.int16), modules=("m",) * 4)
        c.update_tensors(grown)  # before HELLO_OK
        assert c.wait_connected(3.0) and c.hello.num_tensors == 3
        assert c.send_events([(0, 0, 0, 0, 3)])
        got: list = []
        assert until(lambda: len(got) == 1, c, sink=got)
        assert got[0].tensor_ids.tolist() == [0] and c.stats.errors_received == 0
    finally:
        c.close()


def test_structured_array_batches_are_sent_as_is(ctx, daemon):
    """send_events takes an EVENT_DTYPE array as well as tuples."""
    with DaemonClient(config(daemon.endpoint), table(5), context=ctx) as c:
        assert c.wait_connected(3.0)
        ev = np.zeros(3, dtype=wire.EVENT_DTYPE)
        ev["tensor_id"] = [0, 1, 2]
        assert c.send_events(ev)
        got: list = []
        assert until(lambda: len(got) == 1, c, sink=got)
        assert got[0].tensor_ids.tolist() == [1, 2, 3]


def test_close_is_idempotent_and_says_bye(ctx, daemon):
    """close() sends BYE (the daemon drops the session) and can be called twice."""
    c = DaemonClient(config(daemon.endpoint), table(2), context=ctx).start()
    assert c.wait_connected(3.0)
    assert len(daemon.daemon.sessions) == 1
    c.close()
    c.close()
    deadline = time.monotonic() + 2.0
    while daemon.daemon.sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not daemon.daemon.sessions and not c.connected


def test_config_rejects_bad_values():
    """Config validation names the bad field."""
    with pytest.raises(ValueError, match="timeout_ms"):
        DaemonClientConfig(endpoint="tcp://127.0.0.1:1", architecture="A", timeout_ms=0)
    with pytest.raises(ValueError, match="endpoint"):
        DaemonClientConfig(endpoint="127.0.0.1:1", architecture="A")
    assert NO_PREDICTION == float("inf")

"""Daemon fairness and memory bounds: one client cannot stall the others or grow the daemon.

    python -m pytest tests/prefetch/test_daemon_fairness.py -q

Real sockets on loopback with random ports, linger=0 and receive timeouts throughout.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from predictor.interface import NO_PREDICTION, BasePolicy, TensorInfo
from prefetch.daemon_config import DaemonConfig
from prefetch.daemon_sessions import PolicyChoice
from prefetch.daemon_thread import run_daemon_in_thread
from runtime import wire, wire_decode
from runtime.wire import EVENT_DTYPE

RECV_TIMEOUT_MS = 5000
SPIN_S = 40e-6  # the slow policy's cost per event


class SlowNext(BasePolicy):
    """After reading id t, request (t + 1) mod n; burns SPIN_S per event, like a learned model."""

    name = "slow"

    def start(self, tensors: TensorInfo) -> None:
        self.n = tensors.num_tensors

    def observe(self, step, micro_step, phase, access, tensor_id):
        end = time.perf_counter() + SPIN_S
        while time.perf_counter() < end:
            pass
        return [(tensor_id + 1) % self.n]

    def predicted_next_use(self, tensor_id):
        return NO_PREDICTION

    def extend(self, tensors: TensorInfo, first_id: int) -> None:
        self.n = first_id + tensors.num_tensors


def factory(spec, *, architecture, tensors, lookahead):
    p = SlowNext()
    p.start(tensors)
    return PolicyChoice(p, served=spec)


def table(n: int) -> TensorInfo:
    return TensorInfo(keys=tuple(f"param:w{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.full(n, 64, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)


def dealer(ctx, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def recv(sock, timeout_ms=RECV_TIMEOUT_MS):
    assert sock.poll(timeout_ms), "no reply within the timeout"
    return wire_decode.decode(sock.recv_multipart())


def hello(sock, n=16):
    sock.send_multipart(wire.Hello(architecture="A", policy="slow", tensors=table(n)).encode(), copy=False)
    reply = recv(sock)
    assert isinstance(reply, wire.HelloOk), reply
    return reply


def events(ids) -> np.ndarray:
    ev = np.zeros(len(ids), dtype=EVENT_DTYPE)
    ev["tensor_id"] = ids
    return ev


def send(sock, session, seq, ids):
    sock.send_multipart(wire.Events(session=session, seq=seq, events=events(ids)).encode(), copy=False)


def start(ctx, **kw):
    cfg = dict(bind="tcp://127.0.0.1:*", poll_ms=10)
    cfg.update(kw)
    return run_daemon_in_thread(DaemonConfig(**cfg), policy_factory=factory, context=ctx)


def test_big_batch_does_not_stall_another_client(ctx):
    """While one client's 25k-event batch (~1 s of policy work) is worked off, another client's
    small batches are answered within a few chunks' time, not after the whole flood."""
    n_big = 25_000
    d = start(ctx, chunk_events=256)
    try:
        flood, other = dealer(ctx, d.endpoint), dealer(ctx, d.endpoint)
        ok_f, ok_o = hello(flood), hello(other)
        t0 = time.perf_counter()
        send(flood, ok_f.session, 1, np.arange(n_big) % 16)
        time.sleep(0.05)  # the flood is being worked off
        rtts = []
        for seq in range(1, 6):
            t = time.perf_counter()
            send(other, ok_o.session, seq, [3])
            reply = recv(other)
            rtts.append(time.perf_counter() - t)
            assert isinstance(reply, wire.Commands) and reply.tensor_ids.tolist() == [4]
        big = recv(flood, 30_000)
        flood_s = time.perf_counter() - t0
        assert isinstance(big, wire.Commands) and big.seq == 1 and len(big.tensor_ids) == n_big
        assert big.tensor_ids[:3].tolist() == [1, 2, 3]  # the whole batch, in order
        assert max(rtts) < flood_s / 3, (rtts, flood_s)  # answered while the flood was still being worked off
    finally:
        d.stop()


def test_batches_of_one_session_are_answered_in_order(ctx):
    """A small batch sent behind a queued big one is answered after it, with the right seq."""
    d = start(ctx, chunk_events=64)
    try:
        s = dealer(ctx, d.endpoint)
        ok = hello(s)
        send(s, ok.session, 1, np.arange(1000) % 16)
        send(s, ok.session, 2, [5])
        first, second = recv(s), recv(s)
        assert (first.seq, len(first.tensor_ids)) == (1, 1000)
        assert (second.seq, second.tensor_ids.tolist()) == (2, [6])
    finally:
        d.stop()


def test_a_session_may_queue_only_so_many_events(ctx):
    """Past max_queued_events, a batch gets ERROR busy (the client drops it); the session goes on."""
    d = start(ctx, chunk_events=16, max_queued_events=3000)
    try:
        s = dealer(ctx, d.endpoint)
        ok = hello(s)
        for seq in (1, 2, 3):
            send(s, ok.session, seq, np.arange(2000) % 16)
        replies = [recv(s) for _ in range(3)]
        busy = [r for r in replies if isinstance(r, wire.Error)]
        assert busy and all(r.code == "busy" and r.refused == "EVENTS" for r in busy)
        assert d.daemon.stats.busy_refused == len(busy)
        send(s, ok.session, 4, [1])
        while True:
            r = recv(s)
            if r.seq == 4:
                break
        assert isinstance(r, wire.Commands) and r.tensor_ids.tolist() == [2]
    finally:
        d.stop()


def test_tensor_tables_are_bounded_in_total(ctx):
    """Tables over all sessions stay within max_total_tensors: a HELLO past it evicts the least
    recently active session with BYE; one larger than the whole budget is refused."""
    d = start(ctx, max_total_tensors=100)
    try:
        a, b = dealer(ctx, d.endpoint), dealer(ctx, d.endpoint)
        ok_a = hello(a, n=60)
        hello(b, n=60)
        bye = recv(a)
        assert isinstance(bye, wire.Bye) and bye.session == ok_a.session and "tensor tables are full" in bye.reason
        b.send_multipart(wire.Ping(seq=9).encode())
        assert isinstance(recv(b), wire.Pong)  # b's HELLO is fully handled
        assert d.daemon.total_tensors == 60 and len(d.daemon.sessions) == 1
        c = dealer(ctx, d.endpoint)
        c.send_multipart(wire.Hello(architecture="A", policy="slow", tensors=table(101)).encode(), copy=False)
        err = recv(c)
        assert isinstance(err, wire.Error) and err.code == "bad_range" and err.refused == "HELLO"
        assert d.daemon.total_tensors == 60
    finally:
        d.stop()


def test_table_growth_counts_against_the_total(ctx):
    """TENSORS that grow a table past the budget evict other sessions; BYE and HELLO again keep the count true."""
    d = start(ctx, max_total_tensors=100)
    try:
        a, b = dealer(ctx, d.endpoint), dealer(ctx, d.endpoint)
        ok_a, ok_b = hello(a, n=40), hello(b, n=40)
        b.send_multipart(wire.Tensors(session=ok_b.session, first_id=40, tensors=table(30)).encode(), copy=False)
        bye = recv(a)
        assert isinstance(bye, wire.Bye) and bye.session == ok_a.session
        b.send_multipart(wire.Ping(seq=9).encode())
        assert isinstance(recv(b), wire.Pong)  # the daemon is done with the TENSORS message
        assert d.daemon.total_tensors == 70
        b.send_multipart(wire.Bye(session=ok_b.session).encode())
        deadline = time.monotonic() + 3
        while d.daemon.total_tensors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.daemon.total_tensors == 0
    finally:
        d.stop()


def test_wire_limits_are_tight():
    """One message may carry at most 2^16 events and a table of 2^16 tensors (docs/wire.md)."""
    assert wire.MAX_EVENTS_PER_BATCH == 1 << 16 and wire.MAX_TENSORS == 1 << 16
    cfg = DaemonConfig(bind="tcp://127.0.0.1:*")
    assert cfg.max_sessions <= 64 and cfg.max_total_tensors <= 1 << 20 and cfg.max_message_bytes <= 32 << 20
    with pytest.raises(ValueError, match="chunk_events"):
        DaemonConfig(bind="tcp://127.0.0.1:*", chunk_events=0)

"""The prefetch daemon: sessions, commands per client, errors that do not stop it, safe binds.

    python -m pytest tests/prefetch/test_daemon.py -q

Every socket closes with linger=0 and every receive has a timeout, so a broken daemon
fails a test instead of hanging it.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest
import zmq

from predictor.interface import NO_PREDICTION, BasePolicy, PolicyError, TensorInfo
from prefetch.daemon import Daemon
from prefetch.daemon_config import DaemonConfig
from prefetch.daemon_sessions import PolicyChoice, make_policy_factory
from prefetch.daemon_thread import run_daemon_in_thread
from runtime import wire, wire_decode
from runtime.daemon_launch import check_endpoint, ping, start_local_daemon
from runtime.wire import EVENT_DTYPE, MsgType

RECV_TIMEOUT_MS = 3000


class NextId(BasePolicy):
    """A tiny policy: after reading id t, prefetch (t + 1) mod n and (t + 2) mod n."""

    name = "next"

    def start(self, tensors: TensorInfo) -> None:
        self.n = tensors.num_tensors

    def observe(self, step, micro_step, phase, access, tensor_id):
        return [(tensor_id + 1) % self.n, (tensor_id + 2) % self.n]

    def predicted_next_use(self, tensor_id):
        return 1.0 if tensor_id % 2 else NO_PREDICTION

    def extend(self, tensors: TensorInfo, first_id: int) -> None:  # the daemon's optional hook
        self.n = first_id + tensors.num_tensors


class Exploding(NextId):
    name = "exploding"

    def observe(self, step, micro_step, phase, access, tensor_id):
        if tensor_id == 0:
            raise RuntimeError("boom")
        return super().observe(step, micro_step, phase, access, tensor_id)


def factory(spec, *, architecture, tensors, lookahead):
    if spec == "refuse":
        raise PolicyError("no such policy here")
    policy = Exploding() if spec == "exploding" else NextId()
    policy.start(tensors)
    return PolicyChoice(policy, served=spec, fallback_reason="test fallback" if spec == "fallback" else None)


def table(n: int, prefix: str = "param:w") -> TensorInfo:
    return TensorInfo(keys=tuple(f"{prefix}{i}" for i in range(n)), kinds=np.zeros(n, np.int8),
                      nbytes=np.full(n, 64, np.int64), layers=np.full(n, -1, np.int16), modules=("m",) * n)


@pytest.fixture
def daemon(ctx):
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=20), policy_factory=factory, context=ctx)
    yield d
    d.stop()


def dealer(ctx, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def recv(sock, num_tensors=None):
    assert sock.poll(RECV_TIMEOUT_MS), "no reply within the timeout"
    return wire_decode.decode(sock.recv_multipart(), num_tensors=num_tensors)


def hello(sock, n=10, policy="next", architecture="Arch-A"):
    sock.send_multipart(wire.Hello(architecture=architecture, policy=policy, tensors=table(n)).encode(), copy=False)
    reply = recv(sock)
    assert isinstance(reply, wire.HelloOk), reply
    return reply


def send_events(sock, session, seq, ids, num_tensors=None):
    ev = wire.pack_events([(0, 0, 0, 0, t) for t in ids])
    sock.send_multipart(wire.Events(session=session, seq=seq, events=ev).encode(), copy=False)
    return recv(sock, num_tensors)


def test_hello_then_events_get_commands(ctx, daemon):
    """HELLO opens a session; each EVENTS batch gets the policy's requests, in order, with next use."""
    s = dealer(ctx, daemon.endpoint)
    ok = hello(s, n=10)
    assert ok.session != 0 and ok.policy == "next" and ok.fallback_reason is None and ok.num_tensors == 10
    cmd = send_events(s, ok.session, 1, [3, 9])
    assert isinstance(cmd, wire.Commands) and cmd.seq == 1
    assert cmd.tensor_ids.tolist() == [4, 5, 0, 1]
    assert cmd.next_use.tolist() == [NO_PREDICTION, 1.0, NO_PREDICTION, 1.0]
    empty = send_events(s, ok.session, 2, [])
    assert isinstance(empty, wire.Commands) and len(empty.tensor_ids) == 0 and empty.seq == 2


def test_ping_answers_without_session(ctx, daemon):
    """PING is answered with PONG info, no session needed."""
    info = ping(daemon.endpoint, timeout_ms=RECV_TIMEOUT_MS, context=ctx)
    assert info is not None and info["wire_version"] == wire.WIRE_VERSION
    assert not {"pid", "models_dir", "endpoint", "sessions"} & set(info)  # nothing about the host or other clients


def _malformed(session):
    good = wire.Events(session=session, seq=1, events=wire.pack_events([(0, 0, 0, 0, 1)])).encode()
    hdr = bytes(good[0])
    ev = bytes(memoryview(good[1]))
    return {
        "bad_magic": [b"NOPE" + hdr[4:], ev],
        "bad_version": [hdr[:4] + b"\x09" + hdr[5:], ev],
        "bad_type": [struct.pack("<4sBBHIII", b"PFWR", 1, 77, 0, session, 1, 1), ev],
        "bad_payload": [hdr, ev[:-3]],  # truncated
        "wrong_dtype": [wire.header(MsgType.EVENTS, session=session, seq=1, count=1),
                        np.zeros(5, np.int64).tobytes()],
        "bad_range": [hdr, wire.pack_events([(0, 0, 0, 0, 10)]).tobytes()],  # id 10 in a table of 10
        "bad_frames": [hdr],
        "unknown_session": [wire.header(MsgType.EVENTS, session=session + 1, seq=1, count=1), ev],
        "unexpected": wire.Commands(session=session, seq=1, tensor_ids=np.zeros(0, np.int32)).encode(),
        "garbage": [b"\x00"],
    }


@pytest.mark.parametrize("case", list(_malformed(1)))
def test_malformed_message_gets_error_and_daemon_keeps_serving(ctx, daemon, case):
    """A malformed message is answered with ERROR (the right code), and the next valid batch is served."""
    s = dealer(ctx, daemon.endpoint)
    ok = hello(s)
    s.send_multipart(_malformed(ok.session)[case], copy=False)
    err = recv(s)
    assert isinstance(err, wire.Error), err
    expected = {"wrong_dtype": "bad_payload", "garbage": "bad_frames"}.get(case, case)
    assert err.code == expected, err.message
    cmd = send_events(s, ok.session, 2, [1])
    assert isinstance(cmd, wire.Commands) and cmd.tensor_ids.tolist() == [2, 3]


def test_error_reply_names_refused_message_and_seq(ctx, daemon):
    """ERROR echoes the refused message's type, session and seq, so the client can match it."""
    s = dealer(ctx, daemon.endpoint)
    ok = hello(s, n=4)
    ev = wire.pack_events([(0, 0, 0, 0, 9)])
    s.send_multipart(wire.Events(session=ok.session, seq=17, events=ev).encode(), copy=False)
    err = recv(s)
    assert (err.code, err.refused, err.session, err.seq) == ("bad_range", "EVENTS", ok.session, 17)
    assert "tensor_id=9" in err.message


def test_events_before_hello_are_unknown_session(ctx, daemon):
    """EVENTS from a client without a session get unknown_session (the client then says HELLO)."""
    s = dealer(ctx, daemon.endpoint)
    err = send_events(s, 123, 1, [0])
    assert isinstance(err, wire.Error) and err.code == "unknown_session"


def test_policy_exception_is_an_error_not_a_crash(ctx, daemon):
    """A policy that raises gets an ERROR reply; the daemon and the session go on."""
    s = dealer(ctx, daemon.endpoint)
    ok = hello(s, n=5, policy="exploding")
    err = send_events(s, ok.session, 1, [0])
    assert isinstance(err, wire.Error) and err.code == "internal" and "boom" not in err.message  # logged, not sent
    cmd = send_events(s, ok.session, 2, [1])
    assert cmd.tensor_ids.tolist() == [2, 3]


def test_refused_policy_gets_policy_error(ctx, daemon):
    """A HELLO whose policy the factory refuses gets ERROR policy_error, refused=HELLO."""
    s = dealer(ctx, daemon.endpoint)
    s.send_multipart(wire.Hello(architecture="A", policy="refuse", tensors=table(2)).encode(), copy=False)
    err = recv(s)
    assert (err.code, err.refused) == ("policy_error", "HELLO") and "no such policy" in err.message


def test_two_architectures_served_at_once(ctx, daemon):
    """Two clients with different tables each get commands in their own id space, interleaved."""
    a, b = dealer(ctx, daemon.endpoint), dealer(ctx, daemon.endpoint)
    ok_a = hello(a, n=10, architecture="GPT2-aaaa")
    ok_b = hello(b, n=3, architecture="ViT-bbbb")
    assert ok_a.session != ok_b.session
    for seq in range(1, 6):
        ev_a = wire.pack_events([(seq, 0, 0, 0, (seq * 3) % 10)])
        ev_b = wire.pack_events([(seq, 0, 1, 0, seq % 3)])
        a.send_multipart(wire.Events(session=ok_a.session, seq=seq, events=ev_a).encode(), copy=False)
        b.send_multipart(wire.Events(session=ok_b.session, seq=seq, events=ev_b).encode(), copy=False)
    for seq in range(1, 6):
        ca, cb = recv(a, num_tensors=10), recv(b, num_tensors=3)
        assert (ca.session, ca.seq, cb.session, cb.seq) == (ok_a.session, seq, ok_b.session, seq)
        t = (seq * 3) % 10
        assert ca.tensor_ids.tolist() == [(t + 1) % 10, (t + 2) % 10]
        assert cb.tensor_ids.tolist() == [(seq + 1) % 3, (seq + 2) % 3]
    # a's ids are out of b's range: the daemon checks each batch against its own session's table
    err = send_events(b, ok_b.session, 6, [7])
    assert isinstance(err, wire.Error) and err.code == "bad_range"


def test_tensors_message_extends_the_table(ctx, daemon):
    """TENSORS appends rows; ids beyond the old table are accepted only after it."""
    s = dealer(ctx, daemon.endpoint)
    ok = hello(s, n=3)
    assert send_events(s, ok.session, 1, [4]).code == "bad_range"
    s.send_multipart(wire.Tensors(session=ok.session, first_id=3, tensors=table(2, "act:a")).encode(), copy=False)
    cmd = send_events(s, ok.session, 2, [4])
    assert isinstance(cmd, wire.Commands) and cmd.tensor_ids.tolist() == [0, 1]
    s.send_multipart(wire.Tensors(session=ok.session, first_id=3, tensors=table(1, "act:b")).encode(), copy=False)
    assert recv(s).code == "bad_range"  # not an append


def test_second_hello_replaces_the_session(ctx, daemon):
    """A new HELLO from the same client starts a fresh session; the old id is refused."""
    s = dealer(ctx, daemon.endpoint)
    first = hello(s, n=4)
    second = hello(s, n=6)
    assert first.session != second.session
    assert send_events(s, first.session, 1, [0]).code == "unknown_session"
    assert send_events(s, second.session, 2, [5], num_tensors=6).tensor_ids.tolist() == [0, 1]


def test_bye_closes_the_session(ctx, daemon):
    """BYE ends the session (no reply); later events are unknown_session."""
    s = dealer(ctx, daemon.endpoint)
    ok = hello(s)
    s.send_multipart(wire.Bye(session=ok.session, reason="done").encode())
    assert send_events(s, ok.session, 1, [0]).code == "unknown_session"


def test_idle_sessions_expire_with_bye(ctx):
    """A session idle past session_idle_s is dropped and told so; state stays bounded."""
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, session_idle_s=0.2),
                             policy_factory=factory, context=ctx)
    try:
        s = dealer(ctx, d.endpoint)
        ok = hello(s)
        bye = recv(s)
        assert isinstance(bye, wire.Bye) and bye.session == ok.session and "idle" in bye.reason and not bye.exiting
        assert d.daemon.stats.sessions_expired == 1
        assert send_events(s, ok.session, 1, [0]).code == "unknown_session"
    finally:
        d.stop()


def test_max_sessions_evicts_least_recently_active(ctx):
    """Past max_sessions, the least recently active session is evicted with BYE."""
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, max_sessions=2),
                             policy_factory=factory, context=ctx)
    try:
        a, b, c = (dealer(ctx, d.endpoint) for _ in range(3))
        ok_a, ok_b = hello(a), hello(b)
        send_events(a, ok_a.session, 1, [0])  # a is now more recent than b
        hello(c)
        bye = recv(b)
        assert isinstance(bye, wire.Bye) and bye.session == ok_b.session and "evicted" in bye.reason
        assert send_events(a, ok_a.session, 2, [0]).tensor_ids.tolist() == [1, 2]
        assert len(d.daemon.sessions) == 2
    finally:
        d.stop()


def test_stop_says_bye_to_every_session(ctx):
    """Stopping the daemon sends BYE to each session, so clients switch over at once."""
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10), policy_factory=factory, context=ctx)
    s = dealer(ctx, d.endpoint)
    ok = hello(s)
    d.stop()
    bye = recv(s)
    assert isinstance(bye, wire.Bye) and bye.session == ok.session and bye.exiting


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555",
                                      "tcp://eth0:5555", "tcp://example.com:5555"])
def test_non_loopback_bind_refused_by_default(endpoint):
    """A non-loopback tcp bind is refused unless allow_remote; the check needs no socket."""
    with pytest.raises(ValueError, match="not loopback"):
        DaemonConfig(bind=endpoint)
    check_endpoint(endpoint, allow_remote=True)  # allowed when asked for explicitly


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://127.0.0.1:*", "tcp://localhost:1",
                                      "tcp://[::1]:5555", "ipc:///tmp/x.sock", "inproc://d"])
def test_loopback_and_ipc_binds_accepted(endpoint):
    """Loopback tcp, ipc and inproc endpoints pass the bind check."""
    check_endpoint(endpoint)


def test_overlong_ipc_path_refused():
    """An ipc path longer than a Unix socket address allows is refused with the reason."""
    with pytest.raises(ValueError, match="limited to 107 bytes"):
        check_endpoint("ipc:///tmp/" + "x" * 120 + ".sock")


def test_cli_refuses_non_loopback_bind():
    """`prefetch daemon --bind tcp://0.0.0.0:PORT` exits 2 with a one-line reason."""
    from prefetch.cli import main

    assert main(["daemon", "--bind", "tcp://0.0.0.0:5555"]) == 2


def test_second_daemon_on_a_live_ipc_endpoint_refused(ctx, tmp_path):
    """Binding an ipc path where a daemon answers is refused instead of stealing it."""
    ep = f"ipc://{tmp_path}/d.sock"
    d = run_daemon_in_thread(DaemonConfig(bind=ep, poll_ms=10), policy_factory=factory, context=ctx)
    try:
        with pytest.raises(OSError, match="already answers"):
            Daemon(DaemonConfig(bind=ep), policy_factory=factory, context=ctx).start()
    finally:
        d.stop()


def test_default_factory_falls_back_and_says_why(ctx, tmp_path):
    """With no predictor in --models, `learned` is served by the fallback, and HELLO_OK says why."""
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, models_dir=str(tmp_path)),
                             context=ctx)
    try:
        s = dealer(ctx, d.endpoint)
        ok = hello(s, policy="learned:elsewhere/")
        assert ok.policy == "replay" and ok.requested == "learned:elsewhere/"
        assert "no trained predictor" in ok.fallback_reason
        cmd = send_events(s, ok.session, 1, [0, 1])  # replay records the first step: no requests yet
        assert isinstance(cmd, wire.Commands)
        assert hello(s, policy="markov").policy == "markov"
    finally:
        d.stop()


def test_default_factory_fallback_error_refuses(tmp_path):
    """With --policy-fallback error, a missing predictor refuses the HELLO with the reason."""
    f = make_policy_factory(tmp_path, fallback="error")
    with pytest.raises(PolicyError, match="no trained predictor"):
        f("learned", architecture="A", tensors=table(2), lookahead=8)
    assert f("replay", architecture="A", tensors=table(2), lookahead=8).served == "replay"


def test_local_daemon_subprocess_starts_answers_and_stops_on_sigterm(tmp_path):
    """start_local_daemon spawns `python -m prefetch daemon`, waits for PONG; stop() exits it cleanly."""
    endpoint, handle = start_local_daemon(tmp_path, endpoint=f"ipc://{tmp_path}/l.sock")
    try:
        info = ping(endpoint, timeout_ms=RECV_TIMEOUT_MS)
        assert info is not None and info["service"] == "prefetch-daemon" and handle.alive
    finally:
        rc = handle.stop()
    assert rc == 0  # SIGTERM -> clean shutdown, exit code 0
    assert ping(endpoint, timeout_ms=100) is None


def test_daemon_help_lists_the_options():
    """`prefetch daemon --help` documents --bind, --models and --policy-fallback."""
    out = subprocess.run([sys.executable, "-m", "prefetch", "daemon", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--bind", "--models", "--policy-fallback", "--allow-remote"):
        assert flag in out.stdout


def test_event_dtype_matches_trace_schema():
    """Wire event fields use the trace schema's integer types, so values survive unchanged."""
    from runtime.trace_format import EVENT_DTYPES

    for name in EVENT_DTYPE.names:
        assert EVENT_DTYPE[name].kind == EVENT_DTYPES[name].kind
        assert EVENT_DTYPE[name].itemsize == EVENT_DTYPES[name].itemsize


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MODEL_DIR trained on a small synthetic static trace, and that trace."""
    from tests.fixtures.synthetic_traces import SyntheticConfig, write_synthetic_trace
    from predictor.train import TrainConfig, train
    from runtime.trace_format import load_trace

    root = tmp_path_factory.mktemp("learned")
    stem = write_synthetic_trace(root / "trace", SyntheticConfig.of_kind("static"), steps=4, seed=0, name="static")
    train([root / "trace"], root / "models", TrainConfig(num_threads=1), progress=False, log=lambda *a: None)
    return root / "models", load_trace(stem)


def test_learned_served_for_its_architecture_and_replay_for_another(ctx, trained):
    """The default factory picks the artifact by architecture; another architecture gets the
    fallback with a reason naming it; the learned session answers with real prefetches."""
    models, trace = trained
    d = run_daemon_in_thread(DaemonConfig(bind="tcp://127.0.0.1:*", poll_ms=10, models_dir=str(models)),
                             context=ctx)
    try:
        info = TensorInfo.from_table(trace.tensors)
        s = dealer(ctx, d.endpoint)
        s.send_multipart(wire.Hello(architecture=trace.architecture, policy="learned", tensors=info).encode(),
                         copy=False)
        ok = recv(s)
        assert ok.policy == "learned" and ok.fallback_reason is None  # no path goes to a client
        ev = np.zeros(trace.num_events, dtype=EVENT_DTYPE)
        for name in EVENT_DTYPE.names:
            ev[name] = trace.column(name)
        s.send_multipart(wire.Events(session=ok.session, seq=1, events=ev).encode(), copy=False)
        cmd = recv(s, num_tensors=info.num_tensors)
        assert isinstance(cmd, wire.Commands) and len(cmd.tensor_ids) > 0
        other = dealer(ctx, d.endpoint)
        other.send_multipart(wire.Hello(architecture="OtherModel-0123", policy="learned", tensors=info).encode(),
                             copy=False)
        fb = recv(other)
        assert fb.policy == "replay" and "no predictor for this architecture" in fb.fallback_reason
        assert trace.architecture not in fb.fallback_reason and str(models) not in fb.fallback_reason
    finally:
        d.stop()

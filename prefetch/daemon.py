"""The prefetch daemon: one ZeroMQ ROUTER, one session (and one Policy) per client.

    prefetch daemon --bind ipc:///tmp/prefetch.sock --models models/

A client (runtime/daemon_client.py, a DEALER) says HELLO with its architecture signature
and tensor table; the daemon makes the policy it asked for (or the fallback, saying
why), then answers every EVENTS batch with one COMMANDS message: the ids the policy
requested while observing that batch, in order. runtime/wire.py has the format.

One thread serves every session in turn: a policy's observe() holds the GIL anyway, so
more threads would only add switching. It sleeps in zmq poll (timeout `poll_ms`, to
notice stop requests and expire idle sessions) and never spins. A malformed message
gets an ERROR reply and the loop goes on; nothing from the wire is unpickled.

No client can stall the others. An EVENTS batch of at most `chunk_events` events is
answered at once; a larger one is queued in its session and worked off `chunk_events`
at a time, round robin over the sessions with queued work, with the socket drained
between rounds: another client's small batch waits for at most one chunk per busy
session, not for the whole flood. Each session may queue `max_queued_events` (beyond:
ERROR `busy`, the client drops that batch and goes on).

Memory is bounded in total: at most `max_sessions` sessions and `max_total_tensors`
tensor-table rows over all of them (the least recently active sessions are evicted
with BYE to make room), at most `max_queued_events` queued events per session, each
session dropped after `session_idle_s` without a message, and the socket refuses
messages over `max_message_bytes` and buffers at most RCVHWM of them per connection.

Nothing a client sends can forge a log line (fields are escaped, `log_field`), and
replies reveal no path, pid or other client's architecture. Remote binds require
ZeroMQ CURVE (`--curve-keys DIR`, keys from `prefetch daemon --gen-keys DIR`): the
daemon proves its identity with its secret key and admits only clients whose public
keys are in DIR/authorized_clients/.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from predictor.interface import PolicyError, check_policy
from prefetch.daemon_config import DaemonConfig, load_server_keys
from prefetch.daemon_sessions import DaemonStats, PolicyFactory, Session, make_policy_factory
from runtime import wire, wire_decode
from runtime.daemon_launch import ping
from runtime.defaults import LIVE_LOOKAHEAD
from runtime.wire import ErrorCode, MsgType, WireError, log_field

log = logging.getLogger("prefetch.daemon")

ZAP_DOMAIN = "prefetch"  # the ZAP domain the authenticator admits clients for


# -- the socket loop -----------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    """An EVENTS batch being worked off: events [pos:] still to observe, ids requested so far."""

    seq: int
    events: np.ndarray
    pos: int = 0
    out: list[int] = field(default_factory=list)


class Daemon:
    """`start()` binds, `serve()` runs until `stop()` (any thread) or a signal, `close()` ends."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        policy_factory: PolicyFactory | None = None,
        context: zmq.Context | None = None,
    ):
        self.config = config
        self._factory = policy_factory
        self._context = context
        self._socket: zmq.Socket | None = None
        self._auth: Any = None  # zmq.auth.thread.ThreadAuthenticator with CURVE
        self._stop = threading.Event()
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()  # least recently active first
        self._busy: deque[bytes] = deque()  # sessions with queued batches, round-robin order
        self._total_tensors = 0  # table rows over all sessions
        self._next_session = secrets.randbelow(1 << 30) + 1
        self._closed = False
        self.endpoint: str | None = None
        self.stats = DaemonStats()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "Daemon":
        """Bind (raises ValueError/OSError with the reason if it cannot). Returns self."""
        if self._socket is not None:
            return self
        if self.config.models_dir is not None and not Path(self.config.models_dir).is_dir():
            raise ValueError(f"--models {self.config.models_dir}: no such folder")
        if self._factory is None:
            self._factory = make_policy_factory(self.config.models_dir, self.config.policy_fallback)
        bind = self.config.bind
        if bind.startswith("ipc://") and _ipc_answers(bind):
            raise OSError(f"{bind}: another daemon already answers there")
        ctx = self._context or zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        try:
            if self.config.curve_keys is not None:
                self._start_curve(ctx, sock)
            sock.bind(bind)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._stop_auth()
            raise OSError(f"cannot bind {bind}: {exc}") from None
        self._socket = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.endpoint.startswith("ipc://") and not self.endpoint.startswith("ipc://@"):
            try:  # only this user may connect (umask may have left it group/world-writable)
                os.chmod(self.endpoint[len("ipc://"):], 0o600)
            except OSError:
                pass
        log.info("prefetch daemon: serving on %s (models %s, fallback %s, %s)", self.endpoint,
                 self.config.models_dir, self.config.policy_fallback,
                 "CURVE" if self.config.curve_keys else "no authentication: local only")
        return self

    def _start_curve(self, ctx: zmq.Context, sock: zmq.Socket) -> None:
        """CURVE server with a ZAP handler admitting only authorized_clients/*.key."""
        from zmq.auth.thread import ThreadAuthenticator

        public, secret, authorized = load_server_keys(self.config.curve_keys)  # type: ignore[arg-type]
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("prefetch.daemon.auth"))
        auth.start()
        auth.configure_curve(domain=ZAP_DOMAIN, location=str(authorized))
        self._auth = auth
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())  # without a domain libzmq skips the ZAP check
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # and without a ZAP handler, refuses instead of admitting all

    def _stop_auth(self) -> None:
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()

    def stop(self) -> None:
        """Ask `serve()` to return (thread-safe; noticed within poll_ms)."""
        self._stop.set()

    def close(self) -> None:
        """Say BYE to every session and close the socket. Idempotent, safe half-built."""
        if self._closed:
            return
        self._closed = True
        if self._socket is None:
            self._stop_auth()
            return
        for sess in list(self._sessions.values()):
            bye = wire.Bye(session=sess.session_id, reason="daemon shutting down", exiting=True)
            self._send(sess.identity, bye.encode())
        self._sessions.clear()
        self._busy.clear()
        self._total_tensors = 0
        sock, self._socket = self._socket, None
        sock.close(linger=100)  # ms: enough for the BYEs to leave over loopback
        self._stop_auth()
        if self.endpoint and self.endpoint.startswith("ipc://") and not self.endpoint.startswith("ipc://@"):
            try:  # libzmq leaves the socket file behind; it was ours (start() refuses a live one)
                os.unlink(self.endpoint[len("ipc://"):])
            except OSError:
                pass

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving -----------------------------------------------------------------------
    def serve(self) -> None:
        """Serve until stop(): drain what has arrived (small batches answered at once), then
        one round of queued work (`chunk_events` per busy session), and again."""
        self.start()
        sock = self._socket
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        sweep_s = min(1.0, self.config.session_idle_s / 2)
        next_sweep = time.monotonic() + sweep_s
        while not self._stop.is_set():
            if poller.poll(0 if self._busy else self.config.poll_ms):
                for _ in range(1000):  # drain what is queued, then look at the clock again
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.handle(frames)
            if self._busy:
                self.work_round()
            now = time.monotonic()
            if now >= next_sweep:
                self.expire_idle(now)
                next_sweep = now + sweep_s

    def serve_until_signal(self) -> None:
        """serve() with SIGINT/SIGTERM turned into stop() (main thread only); close() after."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, lambda signum, frame: self.stop())
        try:
            self.serve()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.close()

    def handle(self, frames: list[bytes]) -> None:
        """One message from the ROUTER: [identity, header, payload...]. Never raises."""
        self.stats.messages += 1
        identity = frames[0]
        seq = session = 0
        kind: MsgType | None = None
        try:
            if len(frames) < 2:
                raise WireError(ErrorCode.BAD_FRAMES, "message without a header frame")
            kind, _, session, seq, _ = wire_decode.decode_header(frames[1])
            sess = self._sessions.get(identity)
            if kind is MsgType.EVENTS:
                if sess is None or session != sess.session_id:
                    raise WireError(ErrorCode.UNKNOWN_SESSION, f"no session {session} for this client; send HELLO")
                msg = wire_decode.decode(frames[1:], num_tensors=sess.num_tensors)
                self._on_events(sess, msg)  # type: ignore[arg-type]
                return
            msg = wire_decode.decode(frames[1:])
            if kind is MsgType.HELLO:
                self._on_hello(identity, msg)  # type: ignore[arg-type]
            elif kind is MsgType.TENSORS:
                if sess is None or session != sess.session_id:
                    raise WireError(ErrorCode.UNKNOWN_SESSION, f"no session {session} for this client; send HELLO")
                self._on_tensors(sess, msg)  # type: ignore[arg-type]
            elif kind is MsgType.PING:
                self._send(identity, wire.Pong(seq=seq, info=self.info()).encode())
            elif kind is MsgType.BYE:
                if sess is not None and session == sess.session_id:
                    self._forget(identity)
                    self.stats.sessions_closed += 1
            else:
                raise WireError(ErrorCode.UNEXPECTED, f"the daemon does not accept {kind.name} messages")
        except WireError as exc:
            self._error(identity, exc.code, exc.detail, kind, session, seq)
        except PolicyError as exc:
            self._error(identity, ErrorCode.POLICY, str(exc), kind, session, seq)
        except Exception:  # noqa: BLE001 - a policy bug must not take the daemon down
            log.exception("prefetch daemon: internal error on a %d-frame %s message", len(frames),
                          kind.name if kind is not None else "unreadable")
            # the client learns only that it failed: exception text may hold paths or other clients' data
            self._error(identity, ErrorCode.INTERNAL, "internal error (the daemon's log has the details)", kind,
                        session, seq)

    # -- message handlers --------------------------------------------------------------
    def _on_hello(self, identity: bytes, msg: wire.Hello) -> None:
        assert self._factory is not None
        n = msg.tensors.num_tensors
        if n > self.config.max_total_tensors:
            raise WireError(ErrorCode.BAD_RANGE,
                            f"{n} tensors: this daemon keeps at most {self.config.max_total_tensors} over all sessions")
        if self._forget(identity) is not None:  # HELLO again: the old session and its queued work end
            self.stats.sessions_closed += 1
        self._make_room(sessions=1, tensors=n, keep=identity)
        lookahead = msg.lookahead or LIVE_LOOKAHEAD  # a HELLO with lookahead 0 leaves it to the daemon
        choice = self._factory(msg.policy, architecture=msg.architecture, tensors=msg.tensors, lookahead=lookahead)
        sid = self._next_session
        self._next_session = self._next_session % 0xFFFFFFFF + 1  # u32, never 0
        self._sessions[identity] = Session(
            session_id=sid,
            identity=identity,
            architecture=msg.architecture,
            policy=check_policy(choice.policy),
            served=choice.served,
            num_tensors=n,
            next_use=msg.next_use,
            last_seen=time.monotonic(),
        )
        self._total_tensors += n
        self.stats.sessions_opened += 1
        if choice.fallback_reason:
            log.warning("prefetch daemon: architecture %s asked for %s, serving %s: %s", log_field(msg.architecture),
                        log_field(msg.policy), log_field(choice.served),
                        log_field(choice.detail or choice.fallback_reason, 1000))
        reply = wire.HelloOk(session=sid, policy=choice.served, requested=msg.policy,
                             fallback_reason=choice.fallback_reason, num_tensors=n)
        self._send(identity, reply.encode())

    def _on_tensors(self, sess: Session, msg: wire.Tensors) -> None:
        if msg.first_id != sess.num_tensors:
            raise WireError(ErrorCode.BAD_RANGE,
                            f"TENSORS starts at id {msg.first_id}; the session's table has {sess.num_tensors} rows")
        k = msg.tensors.num_tensors
        if sess.num_tensors + k > self.config.max_total_tensors:
            raise WireError(ErrorCode.BAD_RANGE, f"the table would grow to {sess.num_tensors + k} tensors; this "
                                                 f"daemon keeps at most {self.config.max_total_tensors}")
        self._make_room(sessions=0, tensors=k, keep=sess.identity)
        sess.num_tensors += k
        self._total_tensors += k
        sess.last_seen = time.monotonic()
        self._sessions.move_to_end(sess.identity)
        sess.policy.extend(msg.tensors, msg.first_id)

    def _on_events(self, sess: Session, msg: wire.Events) -> None:
        sess.last_seen = time.monotonic()
        self._sessions.move_to_end(sess.identity)
        n = len(msg.events)
        if not sess.queue and n <= self.config.chunk_events:  # the common case: answer now
            batch = _Batch(msg.seq, msg.events)
            self._observe(sess, batch, n)
            self._reply(sess, batch)
            return
        if sess.queued_events + n > self.config.max_queued_events:
            self.stats.busy_refused += 1
            raise WireError(ErrorCode.BUSY, f"{sess.queued_events} events of this session are still queued (at most "
                                             f"{self.config.max_queued_events}); batch dropped")
        sess.queue.append(_Batch(msg.seq, msg.events))
        sess.queued_events += n
        self.stats.batches_queued += 1
        if len(sess.queue) == 1:
            self._busy.append(sess.identity)

    def work_round(self) -> None:
        """Work off up to chunk_events queued events of each busy session, round robin."""
        for _ in range(len(self._busy)):
            identity = self._busy.popleft()
            sess = self._sessions.get(identity)
            if sess is None or not sess.queue:
                continue  # closed, evicted or replaced meanwhile
            budget = self.config.chunk_events
            while budget > 0 and sess.queue:
                batch = sess.queue[0]
                before = batch.pos
                try:
                    self._observe(sess, batch, budget)
                    if batch.pos >= len(batch.events):
                        self._reply(sess, batch)
                except Exception:  # noqa: BLE001 - as in handle(): the batch fails, the daemon goes on
                    log.exception("prefetch daemon: internal error working off a queued batch")
                    batch.pos = len(batch.events)
                    self._error(identity, ErrorCode.INTERNAL, "internal error (the daemon's log has the details)",
                                MsgType.EVENTS, sess.session_id, batch.seq)
                done = batch.pos - before
                budget -= done
                sess.queued_events -= done
                if batch.pos >= len(batch.events):
                    sess.queue.popleft()
            if sess.queue:
                self._busy.append(identity)

    def _observe(self, sess: Session, batch: _Batch, limit: int) -> None:
        """Feed up to `limit` of the batch's remaining events to the session's policy."""
        observe = sess.policy.observe
        out = batch.out
        stop = min(len(batch.events), batch.pos + limit)
        for step, micro, phase, access, tid in batch.events[batch.pos:stop].tolist():
            requested = observe(step, micro, phase, access, tid)
            if len(requested):
                out.extend(requested)
        n = stop - batch.pos
        batch.pos = stop
        sess.events += n
        self.stats.events += n

    def _reply(self, sess: Session, batch: _Batch) -> None:
        """COMMANDS for a fully observed batch: the ids its events caused, in order."""
        out = batch.out
        sess.batches += 1
        ids = np.asarray(out[:wire.MAX_COMMAND_IDS], dtype=np.int64) if out else np.zeros(0, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= sess.num_tensors):
            keep = (ids >= 0) & (ids < sess.num_tensors)
            if not sess.bad_ids:
                log.warning("prefetch daemon: policy %s returned ids outside the table of %d; dropping them",
                            log_field(sess.served), sess.num_tensors)
            sess.bad_ids += int((~keep).sum())
            ids = ids[keep]
        next_use = None
        if sess.next_use:
            pnu = sess.policy.predicted_next_use
            next_use = np.array([pnu(i) for i in ids.tolist()], dtype=np.float32)
            if len(next_use) and not bool(np.all(next_use >= 0)):  # NaN or negative: a policy bug
                next_use[~(next_use >= 0)] = np.inf
        sess.commands += len(ids)
        self.stats.commands += len(ids)
        reply = wire.Commands(session=sess.session_id, seq=batch.seq, tensor_ids=ids.astype(np.int32),
                              next_use=next_use)
        self._send(sess.identity, reply.encode())

    def _make_room(self, *, sessions: int, tensors: int, keep: bytes) -> None:
        """Evict the least recently active sessions (not `keep`) until `sessions` more
        sessions and `tensors` more table rows fit the bounds."""
        while self._sessions and (
            len(self._sessions) + sessions > self.config.max_sessions
            or self._total_tensors + tensors > self.config.max_total_tensors
        ):
            victim = next((i for i in self._sessions if i != keep), None)
            if victim is None:
                return
            sess = self._forget(victim)
            assert sess is not None
            self.stats.sessions_evicted += 1
            why = ("too many sessions" if len(self._sessions) + 1 + sessions > self.config.max_sessions
                   else "the daemon's tensor tables are full")
            self._send(victim, wire.Bye(session=sess.session_id, reason=f"evicted: {why}").encode())

    def _forget(self, identity: bytes) -> Session | None:
        """Remove a session and its queued work; keeps the total table count true."""
        sess = self._sessions.pop(identity, None)
        if sess is not None:
            self._total_tensors -= sess.num_tensors
            sess.queue.clear()
            sess.queued_events = 0
        return sess

    def expire_idle(self, now: float | None = None) -> int:
        """Drop sessions idle for session_idle_s; returns how many."""
        now = time.monotonic() if now is None else now
        limit = now - self.config.session_idle_s
        expired = [ident for ident, s in self._sessions.items() if s.last_seen < limit and not s.queue]
        for ident in expired:
            sess = self._forget(ident)
            assert sess is not None
            self.stats.sessions_expired += 1
            self._send(ident, wire.Bye(session=sess.session_id, reason="idle timeout").encode())
        return len(expired)

    # -- helpers -----------------------------------------------------------------------
    def _error(self, identity: bytes, code: ErrorCode, message: str, kind: MsgType | None, session: int,
               seq: int) -> None:
        self.stats.errors += 1
        self.stats.errors_by_code[code.value] = self.stats.errors_by_code.get(code.value, 0) + 1
        log.debug("prefetch daemon: ERROR %s to client %s: %s", code.value, identity.hex()[:64], log_field(message))
        refused = kind.name if kind is not None else ""
        self._send(identity, wire.Error(code=code.value, message=message, refused=refused, session=session,
                                        seq=seq).encode())

    def _send(self, identity: bytes, frames: list) -> None:
        if self._socket is None:
            return
        try:  # a ROUTER drops (never blocks) when the client's queue is full or it is gone
            self._socket.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # pragma: no cover - advisory: a lost reply is a miss, not a failure
            log.debug("prefetch daemon: reply dropped: %s", exc)

    @property
    def sessions(self) -> dict[bytes, Session]:
        return dict(self._sessions)

    @property
    def total_tensors(self) -> int:
        """Tensor-table rows held over all sessions (bounded by max_total_tensors)."""
        return self._total_tensors

    def info(self) -> dict[str, Any]:
        """PONG's body: that it is a prefetch daemon and which wire version it speaks. No pid,
        path or session list: a client may be anyone the socket admits."""
        return {"service": "prefetch-daemon", "wire_version": wire.WIRE_VERSION}

    def status(self) -> dict[str, Any]:
        """For the daemon's own log and tests (never sent): what info() leaves out."""
        return {
            "pid": os.getpid(),
            "endpoint": self.endpoint,
            "models_dir": self.config.models_dir,
            "policy_fallback": self.config.policy_fallback,
            "sessions": len(self._sessions),
            "total_tensors": self._total_tensors,
            "queued_events": sum(s.queued_events for s in self._sessions.values()),
            "wire_version": wire.WIRE_VERSION,
        }


# -- helpers for tests and in-process use -------------------------------------------------


def _ipc_answers(endpoint: str) -> bool:
    path = endpoint[len("ipc://"):]
    if not path or path.startswith("@") or not os.path.exists(path):  # "@": Linux abstract namespace
        return False
    return ping(endpoint, timeout_ms=100) is not None

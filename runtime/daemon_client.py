"""The training process's side of the daemon: stream access events, collect prefetch commands.

    client = DaemonClient(DaemonClientConfig(endpoint=ep, architecture=sig, policy="learned"), tensors).start()
    client.wait_connected(5.0)                        # setup only; the one call that blocks
    client.record(step, micro_step, phase, access, tensor_id)   # per access: a list append
    client.flush()                                    # send the buffered events (never blocks)
    for cmd in client.poll_commands():                # never blocks
        issue_prefetches(cmd.tensor_ids, cmd.next_use)
    if not client.connected: ...                      # the daemon is down: use a local policy

The daemon is advisory, so nothing here may stall training. Every socket call is
non-blocking (zmq.NOBLOCK on a DEALER); a full outbox or too many unanswered batches
drops the batch and counts it. The Lazy Pirate pattern of the zguide keeps the link
honest: when events are outstanding and the daemon stays silent for `timeout_ms`, the
client declares it down (warns once), closes the socket with linger=0, and every
`reconnect_ms` opens a fresh one and says HELLO again, from inside poll_commands().

The I/O runs on the caller's thread, not on a helper thread: libzmq already does the
actual socket I/O on its own (GIL-free) thread, so a send here costs a header pack and
an enqueue into libzmq's pipe; a Python I/O thread would add a wake-up per batch and
GIL contention on a 2-core box. benchmarks/daemon_latency.py measures both.

Not thread-safe: call it from one thread (the training thread).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import zmq

from predictor.interface import TensorInfo
from runtime import wire, wire_decode
from runtime.daemon_launch import load_client_keys
from runtime.defaults import DAEMON_BATCH_EVENTS, LIVE_LOOKAHEAD
from runtime.wire import EVENT_DTYPE, ErrorCode, WireError, log_field

log = logging.getLogger("runtime.daemon_client")

_DOWN, _HELLO, _UP = "down", "hello", "up"


class DaemonUnavailableWarning(RuntimeWarning):
    """The prefetch daemon stopped answering; training goes on without it."""


@dataclass(kw_only=True, slots=True)
class DaemonClientConfig:
    """Where the daemon is, what to ask it for, and how patient to be."""

    endpoint: str
    """ZeroMQ endpoint of the daemon (ipc://PATH or tcp://127.0.0.1:PORT)."""
    architecture: str
    """Architecture signature (runtime.architecture.architecture_signature)."""
    policy: str = "learned"
    """Policy spec asked of the daemon; HELLO_OK says which one serves."""
    lookahead: int = LIVE_LOOKAHEAD
    """Future reads the daemon's policy keeps requested (0: the daemon's default)."""
    next_use: bool = True
    """Ask for per-id predicted next use with every command (for eviction)."""
    timeout_ms: int = 500
    """Silence, with events outstanding, after which the daemon is declared down."""
    hello_timeout_ms: int = 5000
    """How long a HELLO may take (the daemon may be loading a model)."""
    reconnect_ms: int = 1000
    """While down, how often a fresh socket and HELLO are tried."""
    max_outstanding: int = 256
    """Unanswered EVENTS batches allowed in flight; beyond it batches are dropped."""
    batch_events: int = DAEMON_BATCH_EVENTS
    """record() sends automatically once this many events are buffered."""
    sndhwm: int = 1000
    """libzmq send queue, in messages; a full queue drops (never blocks)."""
    curve_keys: str | None = None
    """Folder holding the daemon's public key (server.key) and this client's keypair
    (client.key_secret), for a daemon run with --curve-keys (`prefetch daemon --gen-keys`).
    The connection is encrypted and each side proves who it is; None: no CURVE (local daemons)."""

    def __post_init__(self) -> None:
        if not self.endpoint or "://" not in self.endpoint:
            raise ValueError(f"endpoint {self.endpoint!r}: expected ipc://PATH or tcp://HOST:PORT")
        if not self.architecture:
            raise ValueError("architecture must be a non-empty signature")
        for name in ("timeout_ms", "hello_timeout_ms", "reconnect_ms", "max_outstanding", "batch_events", "sndhwm"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.lookahead <= wire.MAX_LOOKAHEAD:
            raise ValueError(f"lookahead must be in [0, {wire.MAX_LOOKAHEAD}], got {self.lookahead}")
        if self.curve_keys is not None:
            if not zmq.has("curve"):
                raise ValueError("curve_keys: this libzmq was built without CURVE support")
            load_client_keys(self.curve_keys)  # a missing or unreadable key file fails here, named


@dataclass(slots=True)
class ClientStats:
    """What the client did; `events_dropped_*` are events the daemon never saw."""

    batches_sent: int = 0
    events_sent: int = 0
    events_dropped_down: int = 0  # not connected (down or saying HELLO)
    events_dropped_full: int = 0  # outbox full or max_outstanding reached
    commands_received: int = 0  # COMMANDS messages
    ids_received: int = 0  # prefetch requests in them
    errors_received: int = 0
    disconnects: int = 0
    reconnects: int = 0
    hellos_sent: int = 0
    bad_messages: int = 0  # replies that failed to decode (ignored)
    rtt_ns_last: int = 0  # send of the most recently answered batch -> its reply

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]


class DaemonClient:
    """A Lazy Pirate DEALER for one training process (one session)."""

    def __init__(self, config: DaemonClientConfig, tensors: TensorInfo, *, context: zmq.Context | None = None):
        self.config = config
        self.tensors = tensors
        self._context = context
        self._sock: zmq.Socket | None = None
        self._state = _DOWN
        self._session = 0
        self._seq = 0  # EVENTS batches sent (a Python int; the wire carries it mod 2**32)
        self._acked = 0  # batches answered (replies come in order)
        self._wait_start = 0.0  # when we began waiting for the oldest unanswered batch
        self._sent_at: dict[int, int] = {}  # seq -> perf_counter_ns at send (bounded by max_outstanding)
        self._hello_at = 0.0
        self._next_attempt = 0.0
        self._pending: list[tuple[int, int, int, int, int]] = []
        self._warned = False
        self._warned_codes: set[str] = set()
        self._ever_up = False
        self._closed = False
        self._curve: dict[str, bytes] = {}
        if config.curve_keys is not None:
            self._curve = load_client_keys(config.curve_keys)
        self.hello: wire.HelloOk | None = None
        """The daemon's last HELLO_OK: `.policy` (what serves), `.fallback_reason`."""
        self.last_error: str | None = None
        self.stats = ClientStats()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "DaemonClient":
        """Open the socket and send HELLO (does not wait; see wait_connected). Returns self."""
        if self._sock is None and not self._closed:
            self._open(time.monotonic())
        return self

    def wait_connected(self, timeout_s: float) -> bool:
        """Block up to timeout_s for HELLO_OK (setup only, never in the training loop)."""
        deadline = time.monotonic() + timeout_s
        while self._state != _UP and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self._sock is not None:
                self._sock.poll(min(50, max(1, int(left * 1000))))  # sleeps; no spinning
            else:
                time.sleep(min(0.05, left))
            self.poll_commands()
        return self._state == _UP

    def wait(self, timeout_ms: int) -> bool:
        """Block up to timeout_ms until a reply is waiting for poll_commands(). For idle
        loops, tests and benchmarks; the training path never needs it."""
        if self._sock is None:
            time.sleep(timeout_ms / 1000)
            return False
        return bool(self._sock.poll(timeout_ms))

    def close(self) -> None:
        """Say BYE (best effort) and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        if self._sock is not None and self._state == _UP:
            try:
                bye = wire.Bye(session=self._session, reason="client closing")
                self._sock.send_multipart(bye.encode(), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._close_socket(linger_ms=100)  # lets the BYE leave; zmq_close itself never blocks
        else:
            self._close_socket(linger_ms=0)
        self._state = _DOWN

    def __enter__(self) -> "DaemonClient":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True while a session is open and the daemon answers; else use a local policy."""
        return self._state == _UP

    @property
    def served_policy(self) -> str | None:
        """The policy the daemon serves this session with (None until HELLO_OK)."""
        return self.hello.policy if self.hello is not None else None

    @property
    def buffered(self) -> int:
        """Events recorded and not yet sent (record() sends every `batch_events`)."""
        return len(self._pending)

    @property
    def outstanding(self) -> int:
        """EVENTS batches sent and not yet answered."""
        return self._seq - self._acked

    # -- training thread: events out ---------------------------------------------------
    def record(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> None:
        """Buffer one access; sends a batch every `batch_events` (never blocks)."""
        self._pending.append((step, micro_step, phase, access, tensor_id))
        if len(self._pending) >= self.config.batch_events:
            self.flush()

    def flush(self) -> bool:
        """Send the buffered events as one batch. False if dropped (or nothing to send)."""
        if not self._pending:
            return False
        rows, self._pending = self._pending, []
        return self.send_events(rows)

    def send_events(self, batch: np.ndarray | Sequence[tuple[int, int, int, int, int]]) -> bool:
        """Send a batch of events (EVENT_DTYPE array or (step, micro_step, phase, access,
        tensor_id) tuples) as one message. Never blocks: False and counted when dropped."""
        n = len(batch)
        if not n:
            return False
        if self._state != _UP:
            self.stats.events_dropped_down += n
            return False
        if self.outstanding >= self.config.max_outstanding:
            self.stats.events_dropped_full += n
            return False
        events = batch if isinstance(batch, np.ndarray) else wire.pack_events(batch)
        seq = self._seq + 1
        frames = wire.Events(session=self._session, seq=seq, events=events).encode()  # header packs seq mod 2**32
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK, copy=False)  # type: ignore[union-attr]
        except zmq.Again:
            self.stats.events_dropped_full += n
            return False
        if self._seq == self._acked:
            self._wait_start = time.monotonic()
        self._seq = seq
        self._sent_at[seq] = time.perf_counter_ns()
        self.stats.batches_sent += 1
        self.stats.events_sent += n
        return True

    def update_tensors(self, tensors: TensorInfo) -> None:
        """The table grew (same rows first, new ones appended): tell the daemon before
        sending events that use the new ids. A later HELLO sends the whole table."""
        old = self.tensors.num_tensors
        if tensors.num_tensors < old or tuple(tensors.keys[:old]) != tuple(self.tensors.keys):
            raise ValueError("update_tensors: the new table must extend the old one (same keys first)")
        self.tensors = tensors
        if tensors.num_tensors == old or self._state != _UP:
            return  # a HELLO to come carries the full table; one in flight is topped up on HELLO_OK
        self.flush()  # events for old ids go first
        self._send_tensors(old)

    # -- training thread: commands in --------------------------------------------------
    def poll_commands(self) -> list[wire.Commands]:
        """Commands that have arrived, oldest first (never blocks). Also runs the Lazy
        Pirate bookkeeping: declares the daemon down, reconnects when it is due."""
        out: list[wire.Commands] = []
        sock = self._sock
        if sock is not None:
            # get(EVENTS) costs ~0.8 us; a recv that raises zmq.Again on an empty queue ~2 us
            while sock.get(zmq.EVENTS) & zmq.POLLIN:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_message(frames, out)
                if self._sock is not sock:  # a BYE closed it
                    break
        now = time.monotonic()
        if self._state == _UP:
            if self._seq != self._acked and (now - self._wait_start) * 1000 > self.config.timeout_ms:
                self._down(now, f"no reply for {self.config.timeout_ms} ms with {self.outstanding} batches outstanding")
        elif self._state == _HELLO:
            if (now - self._hello_at) * 1000 > self.config.hello_timeout_ms:
                self._down(now, f"no answer to HELLO within {self.config.hello_timeout_ms} ms")
        elif not self._closed and now >= self._next_attempt:
            self._open(now)
        return out

    # -- internals ---------------------------------------------------------------------
    def _on_message(self, frames: list[bytes], out: list[wire.Commands]) -> None:
        try:
            msg = wire_decode.decode(frames, num_tensors=self.tensors.num_tensors)
        except WireError as exc:
            self.stats.bad_messages += 1
            log.debug("daemon client: undecodable reply ignored: %s", exc)
            return
        if isinstance(msg, wire.Commands):
            if self._state != _UP or msg.session != self._session:
                return  # an answer to an older session
            self._ack(msg.seq)
            self.stats.commands_received += 1
            self.stats.ids_received += len(msg.tensor_ids)
            out.append(msg)
        elif isinstance(msg, wire.HelloOk):
            if self._state != _HELLO:
                return
            self._state = _UP
            self._session = msg.session
            self._acked = self._seq  # nothing outstanding in a new session
            self._sent_at.clear()
            self.hello = msg
            if self._ever_up:
                self.stats.reconnects += 1
                log.warning("prefetch daemon at %s is back (session %d, policy %s)", self.config.endpoint,
                            msg.session, log_field(msg.policy))
            self._ever_up = True
            if msg.fallback_reason:
                log.warning("prefetch daemon serves %s instead of %s: %s", log_field(msg.policy),
                            log_field(msg.requested), log_field(msg.fallback_reason))
            if msg.num_tensors < self.tensors.num_tensors:  # the table grew while HELLO was in flight
                self._send_tensors(msg.num_tensors)
        elif isinstance(msg, wire.Error):
            self.stats.errors_received += 1
            self.last_error = log_field(f"{msg.code}: {msg.message}", 500)  # from the wire: one safe line
            if self._state == _UP and msg.refused == "EVENTS":
                self._ack(msg.seq)
            if msg.refused == "HELLO":
                if self._state == _HELLO:  # e.g. no predictor and the daemon runs with fallback 'error'
                    self._down(time.monotonic(), f"HELLO refused: {self.last_error}")
            elif msg.code == ErrorCode.UNKNOWN_SESSION.value:
                if self._state == _UP:
                    self._rehello(time.monotonic())  # the daemon restarted or expired us
            elif msg.code not in self._warned_codes:
                self._warned_codes.add(msg.code)
                log.warning("prefetch daemon refused a message: %s", self.last_error)
        elif isinstance(msg, wire.Bye):
            if msg.session != self._session or self._state == _DOWN:
                return
            if msg.exiting:  # the daemon is going away: fall back now, not after the timeout
                self._down(time.monotonic(), f"daemon said bye ({log_field(msg.reason)})", retry_now=True)
            else:  # session expired or evicted, daemon alive: a new session at once, no warning
                log.info("prefetch daemon ended session %d (%s); saying HELLO again", msg.session,
                         log_field(msg.reason))
                self._rehello(time.monotonic())

    def _send_tensors(self, first: int) -> None:
        """Send table rows first.. (the daemon's session has `first` rows)."""
        t = self.tensors
        new = TensorInfo(keys=t.keys[first:], kinds=t.kinds[first:], nbytes=t.nbytes[first:],
                         layers=t.layers[first:], modules=t.modules[first:])
        frames = wire.Tensors(session=self._session, first_id=first, tensors=new).encode()
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK, copy=False)  # type: ignore[union-attr]
        except zmq.Again:  # the daemon cannot keep up: start over with a HELLO carrying everything
            self._rehello(time.monotonic())

    def _ack(self, wire_seq: int) -> None:
        # Replies come in order, so an answer to a batch answers every batch before it.
        behind = (self._seq - wire_seq) & wire.U32_MAX  # batches sent after the answered one
        if behind >= self.outstanding:
            return  # not one of ours (stale)
        self._acked = self._seq - behind
        sent = self._sent_at.pop(self._acked, None)
        if sent is not None:
            self.stats.rtt_ns_last = time.perf_counter_ns() - sent
        if len(self._sent_at) > self.config.max_outstanding:  # lost replies: keep the map bounded
            self._sent_at = {s: t for s, t in self._sent_at.items() if s > self._acked}
        self._wait_start = time.monotonic()

    def _open(self, now: float) -> None:
        ctx = self._context or zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        sock.setsockopt(zmq.RCVHWM, 10 * self.config.max_outstanding + 100)
        sock.setsockopt(zmq.MAXMSGSIZE, 64 << 20)  # a reply larger than this is not a daemon's
        for opt, value in self._curve.items():  # curve_serverkey, curve_publickey, curve_secretkey
            setattr(sock, opt, value)
        sock.connect(self.config.endpoint)
        self._sock = sock
        self._rehello(now)

    def _rehello(self, now: float) -> None:
        self._state = _HELLO
        self._hello_at = now
        self._session = 0
        hello = wire.Hello(architecture=self.config.architecture, policy=self.config.policy, tensors=self.tensors,
                           lookahead=self.config.lookahead, next_use=self.config.next_use)
        try:
            self._sock.send_multipart(hello.encode(), zmq.NOBLOCK, copy=False)  # type: ignore[union-attr]
            self.stats.hellos_sent += 1
        except zmq.Again:
            pass  # counted as silence: hello_timeout_ms later we go down and retry

    def _down(self, now: float, reason: str, *, retry_now: bool = False) -> None:
        was_up = self._state == _UP
        self._state = _DOWN
        self._session = 0
        self._acked = self._seq
        self._sent_at.clear()
        self._close_socket(linger_ms=0)
        self._next_attempt = now if retry_now else now + self.config.reconnect_ms / 1000
        self.last_error = reason
        if was_up:
            self.stats.disconnects += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"prefetch daemon at {self.config.endpoint} is unavailable ({reason}); training goes on with the "
                f"local fallback and reconnects every {self.config.reconnect_ms} ms",
                DaemonUnavailableWarning,
                stacklevel=3,
            )
        elif was_up:
            log.warning("prefetch daemon at %s is unavailable again: %s", self.config.endpoint, reason)
        else:
            log.debug("prefetch daemon at %s: reconnect failed: %s", self.config.endpoint, reason)

    def _close_socket(self, linger_ms: int) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close(linger=linger_ms)

    def __del__(self) -> None:  # a forgotten client must not leave a socket behind
        try:
            self._close_socket(linger_ms=0)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


__all__ = [
    "EVENT_DTYPE",
    "ClientStats",
    "DaemonClient",
    "DaemonClientConfig",
    "DaemonUnavailableWarning",
]

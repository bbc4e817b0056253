"""A learned policy served by the prefetch daemon, seen by the store as a local Policy.

    policy="learned:models/"   ->  DaemonPolicy: starts `prefetch daemon` on a private ipc
                                   endpoint (stopped at close) unless `endpoint` is given
                                   or $PREFETCH_DAEMON_ENDPOINT names the node's daemon
                                   (`prefetch run` starts one for all the ranks of a job)

Every observed access goes to the daemon in small batches (never blocking); commands
that have come back are handed to the store as prefetch requests, with the daemon's
predicted next use kept for eviction. A local `replay` sees the same stream all along,
so when the daemon is slow, dead or refuses the architecture, the store keeps a warm
policy: training never waits on the daemon, and the report says what served.

The bookkeeping between replies (dues from commands, staleness by the lookahead, the
local fallback's next use) is predictor.daemon_path.DaemonAdvice, which the simulator's
daemon path (SimulatedDaemonPolicy) shares: this class adds only the ZeroMQ client.

It also records, per reply read, which batch it answers and the event it was read at (one
list append per reply, the event index taken from the client's counters: no per-event
cost). At close that is a predictor.daemon_path.ReplySchedule (`reply_schedule`), which a
run keeping its own trace writes into the manifest, so the simulation of that run reads
each reply at the very event this run read it. Only a run the schedule describes exactly
has one: never down, no batch dropped, no partial batch (`schedule_note` says why not).
"""

from __future__ import annotations

import atexit
import os
import warnings
from typing import Callable, Sequence

from predictor.daemon_path import DEFAULT_FALLBACK, DaemonAdvice, ReplySchedule
from predictor.interface import TensorInfo
from runtime.daemon_client import DaemonClient, DaemonClientConfig
from runtime.daemon_launch import start_local_daemon
from runtime.defaults import DAEMON_BATCH_EVENTS
from runtime.wire import U32_MAX


class DaemonPolicy(DaemonAdvice):
    """Policy protocol over a DaemonClient, with a local replay fallback (DaemonAdvice)."""

    def __init__(self, spec: str, *, architecture: str, endpoint: str | None, lookahead: int,
                 tensors_fn: Callable[[], TensorInfo], batch_events: int = DAEMON_BATCH_EVENTS, fallback: str = DEFAULT_FALLBACK,
                 connect_timeout_s: float = 20.0, curve_keys: str | None = None):
        """`curve_keys` (else $PREFETCH_DAEMON_KEYS): a folder with the daemon's server.key and
        this client's client.key_secret, for a daemon at `endpoint` run with --curve-keys."""
        super().__init__(lookahead=lookahead, fallback=fallback)
        self.spec = spec
        self._tensors_fn = tensors_fn
        self._daemon = None
        models_dir = spec.partition(":")[2] or None
        endpoint = endpoint or os.environ.get("PREFETCH_DAEMON_ENDPOINT") or None  # the node's daemon (prefetch run)
        if endpoint is None:
            endpoint, self._daemon = start_local_daemon(models_dir, policy_fallback=fallback)
            atexit.register(self._daemon.stop)  # never leave a daemon behind
        else:
            curve_keys = curve_keys or os.environ.get("PREFETCH_DAEMON_KEYS") or None
        self.endpoint = endpoint
        self._num_tensors = 0
        self.client = DaemonClient(
            DaemonClientConfig(endpoint=endpoint, architecture=architecture, policy="learned",
                               lookahead=lookahead, batch_events=batch_events, curve_keys=curve_keys),
            tensors_fn(),
        ).start()
        connected = self.client.wait_connected(connect_timeout_s)  # setup only: the one blocking wait
        self.served_by = self.client.served_policy if connected else f"{fallback} (local: daemon unavailable)"
        self.note = (f"daemon {endpoint}: " + (
            f"serves {self.client.served_policy}" + (f" ({self.client.hello.fallback_reason})"
                                                     if self.client.hello and self.client.hello.fallback_reason else "")
            if connected else f"did not answer; local {fallback} serves")
            + (f"; local {fallback} answers next use where the daemon has none" if connected else ""))
        self._was_down = not connected
        self._up = connected  # client.connected as of the last observe (read per eviction candidate)
        self._replies: list[tuple[int, int]] = []  # per reply read: (wire seq, client's events sent then)
        self._base = (0, 0, 0, 0)  # the client's batches/events sent and dropped when the session started
        self._down_seen = not connected
        self._schedule: ReplySchedule | None = None
        self.schedule_note: str | None = None
        """After close: why this run has no reply schedule (None when it has one)."""

    def start(self, tensors: TensorInfo) -> None:
        self.start_advice(tensors)
        self._num_tensors = tensors.num_tensors
        st = self.client.stats
        self._base = (st.batches_sent, st.events_sent, st.events_dropped_down, st.events_dropped_full)
        self._replies = []
        self._down_seen = not self.client.connected
        self._schedule = None

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        local = self._see(step, micro_step, phase, access, tensor_id)
        client = self.client
        if tensor_id >= self._num_tensors:  # the live table grew: tell the daemon first
            info = self._tensors_fn()
            self._num_tensors = info.num_tensors
            client.update_tensors(info)
        client.record(step, micro_step, phase, access, tensor_id)
        # Replies only answer batches sent: read them once per batch, right after a send
        # (a BYE or an error waits for that poll too). Down, every event polls (reconnects).
        commands = client.poll_commands() if (client.outstanding and not client.buffered) or not client.connected else ()
        self._up = client.connected
        if not self._up:
            if not self._was_down:
                self._was_down = True
                self._down_seen = True
                self.served_by = f"{self.served_by}; local {self.fallback.name} while the daemon was down"
            return local
        if self._was_down and client.connected:
            self._was_down = False
        if not commands:
            return ()
        sent = client.stats.events_sent  # polled right after a send: this event is the last one sent
        self._replies.extend([(cmd.seq, sent) for cmd in commands])
        return self._take((cmd.tensor_ids.tolist(), None if cmd.next_use is None else cmd.next_use.tolist())
                          for cmd in commands)

    def reply_schedule(self) -> ReplySchedule | None:
        """The session's reply schedule, once closed; None when the run had none (`schedule_note`)."""
        return self._schedule

    def _make_schedule(self) -> None:
        """Turn the replies read into a ReplySchedule, if the session's batches were exactly
        every `batch_events` events (before close: closing flushes a partial batch)."""
        st, size = self.client.stats, self.client.config.batch_events
        b0, e0, dd0, df0 = self._base
        batches, sent = st.batches_sent - b0, st.events_sent - e0
        why = ("the daemon was down" if self._down_seen or st.events_dropped_down != dd0
               else "batches were dropped (outbox full)" if st.events_dropped_full != df0
               else "a partial batch was sent (the tensor table grew)" if sent != size * batches else None)
        read_at: list[int] = []
        for seq, sent_then in self._replies if why is None else ():
            b = (seq - b0 - 1) & U32_MAX  # the client numbers its batches from 1
            if b >= batches or b < len(read_at):
                why = f"a reply to batch seq {seq} was not one of this session's, in order"
                break
            read_at.extend([-1] * (b - len(read_at)))  # replies never read: refused or lost
            read_at.append(sent_then - e0 - 1)
        if why is not None:
            self.schedule_note = f"daemon reply schedule not kept: {why}"
            return
        try:
            self._schedule = ReplySchedule(size, sent + self.client.buffered, tuple(read_at), "this run")
        except ValueError as exc:  # a client that polled off its batches: say so, keep running
            self.schedule_note = f"daemon reply schedule not kept: {exc}"

    def close(self) -> None:
        """Say BYE, close the socket, stop a daemon we started. Idempotent."""
        if self._schedule is None and self.schedule_note is None:
            self._make_schedule()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.client.close()
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None

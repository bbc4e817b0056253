"""The daemon path's client-side advice, shared by the live client and its simulation.

    DaemonAdvice                    the bookkeeping: dues from commands, staleness, the local fallback
      runtime.daemon_policy.DaemonPolicy   + a ZeroMQ DaemonClient (the live path)
      SimulatedDaemonPolicy                + an in-process policy behind batching and a round trip
    ReplySchedule                   which event each reply was read at, as a live run recorded it

A learned policy in a live run is served by the prefetch daemon: the training process
sends its accesses in batches of `DAEMON_BATCH_EVENTS`, reads replies once per batch right
after a send, and turns each COMMANDS reply (tensor ids, each with the daemon's predicted
next use) into prefetch requests. What it tells the store between replies is the advice
kept here, one implementation for both paths, so the simulated figure of "learned through
the daemon" means what the live one means:

- a command's next use becomes a *due*: the client's read count when the tensor is
  expected (reads at the poll + next use); reading the tensor clears it;
- `predicted_next_use` answers from a fresh due; where there is none (never asked for,
  or overdue by more than the lookahead: a wrong prediction) the local fallback answers,
  a policy that observes the same stream beside the daemon (replay by default; "none"
  answers NO_PREDICTION, i.e. no local view). docs/predictor.md, "The daemon path, live
  and simulated", has the measurements that keep replay.
- while the daemon is down (`_up` False, live only) the fallback serves everything.

When a reply is read is the one thing the simulation cannot know: live, it depends on
how fast the daemon answered. The simulated path models it (a fixed round trip on the
executor's clock) unless it is given the run's own `ReplySchedule` (the live DaemonPolicy
records one, kept with the run's trace under the manifest key `daemon_replies`); then
each batch's reply is read at exactly the event it was read at live.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from predictor.interface import NO_PREDICTION, BasePolicy, Policy, TensorInfo
from runtime.defaults import DAEMON_BATCH_EVENTS, DAEMON_ROUND_TRIP_NS
from runtime.wire import MAX_COMMAND_IDS

MANIFEST_KEY = "daemon_replies"
"""The trace manifest key holding a live run's ReplySchedule (ReplySchedule.as_manifest)."""

_READ = 0
DEFAULT_FALLBACK = "replay"
"""The local policy beside the daemon (its view of next use where the daemon has none)."""


class DaemonAdvice(BasePolicy):
    """What the client tells the store between and from the daemon's replies (see the module docstring).

    Subclasses feed it: `_see` for every access (before anything else), `_take` with the
    replies read at a poll; `start_advice` once per session."""

    name = "learned"

    def __init__(self, *, lookahead: int, fallback: str | Policy = DEFAULT_FALLBACK):
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {lookahead}")
        from predictor.policies import make_policy  # same floor; deferred: the registry imports policies

        self.lookahead = lookahead
        self.fallback: Policy = make_policy(fallback, lookahead=lookahead) if isinstance(fallback, str) else fallback
        self._due: dict[int, int] = {}  # tensor id -> the read count it is expected at
        self._reads = 0  # reads seen so far: the clock dues are on
        self._up = True  # False while a live daemon is down: the fallback serves

    def start_advice(self, tensors: TensorInfo) -> None:
        """A new session: forget dues and reads; start the fallback."""
        self.fallback.start(tensors)
        self._due.clear()
        self._reads = 0

    def _see(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        """One access, as the client sees it: a read clears the tensor's due (it is no longer
        expected); the fallback observes it too. Returns the fallback's requests."""
        if access == _READ:
            self._reads += 1
            self._due.pop(tensor_id, None)
        return self.fallback.observe(step, micro_step, phase, access, tensor_id)

    def _take(self, commands: Iterable[tuple[Sequence[int], Sequence[float] | None]]) -> list[int]:
        """The replies read at one poll, oldest first, as (ids, next uses or None): the ids to
        request, in order; each finite next use sets the id's due from the reads so far."""
        out: list[int] = []
        due = self._due
        reads = self._reads
        for ids, next_use in commands:
            if next_use is not None:
                for tid, nu in zip(ids, next_use):
                    if nu != NO_PREDICTION:
                        due[tid] = reads + int(nu)
            out.extend(ids)
        return out

    def predicted_next_use(self, tensor_id: int) -> float:
        if not self._up:
            return self.fallback.predicted_next_use(tensor_id)
        due = self._due.get(tensor_id)
        if due is None or due < self._reads - self.lookahead:
            # never asked for, or long overdue (a wrong prediction, as Outstanding): the local
            # fallback's view, which has seen this very stream (replay: what it expects after
            # the optimizer step, before the daemon's commands for the new step arrive)
            return self.fallback.predicted_next_use(tensor_id)
        return float(max(1, due - self._reads))


@dataclass(frozen=True, slots=True)
class ReplySchedule:
    """When a live run read each daemon reply, by event: what the simulation of that run follows.

    The client sends a batch every `batch_events` events and polls right after each send,
    so batch b (events b*B .. b*B+B-1) goes out at event b*B+B-1 and its reply is read at
    the poll after some send: `read_at[b]`, an event index counted from 0 in the session
    (the client's own observe calls), or -1 when that reply was never read (refused or lost;
    replies come in order). Batches past the end of `read_at` were never answered before
    the run ended. `events`: the events the session observed; `source` names the trace in errors.
    """

    batch_events: int
    events: int
    read_at: tuple[int, ...]
    source: str = "daemon reply schedule"

    def __post_init__(self) -> None:
        where, size = f"{self.source}: {MANIFEST_KEY}", self.batch_events
        if size < 1:
            raise ValueError(f"{where}: batch_events must be >= 1, got {size}")
        if self.events < 0:
            raise ValueError(f"{where}: events must be >= 0, got {self.events}")
        last = -1
        for b, at in enumerate(self.read_at):
            if at == -1:
                continue
            sent = (b + 1) * size - 1
            if at < sent:
                raise ValueError(f"{where}: batch {b}'s reply is recorded at event {at}, before the batch was sent "
                                 f"(event {sent})")
            if at >= self.events:
                raise ValueError(f"{where}: batch {b}'s reply is recorded at event {at}, past the "
                                 f"{self.events} events recorded")
            if (at + 1) % size:
                raise ValueError(f"{where}: batch {b}'s reply is recorded at event {at}, which is no poll "
                                 f"(the client polls right after a send: every {size} events)")
            if at < last:
                raise ValueError(f"{where}: batch {b}'s reply is recorded at event {at}, before an earlier "
                                 f"batch's (event {last}): replies come in order")
            last = at

    @property
    def replies(self) -> int:
        """Replies read (batches with a recorded event)."""
        return sum(1 for at in self.read_at if at >= 0)

    def as_manifest(self) -> dict[str, Any]:
        return {"batch_events": self.batch_events, "events": self.events, "read_at": list(self.read_at)}

    @classmethod
    def from_manifest(cls, obj: Any, source: str) -> "ReplySchedule":
        """The schedule a trace manifest holds under MANIFEST_KEY; a one-line ValueError naming `source` if malformed."""
        ok = isinstance(obj, dict) and all(isinstance(obj.get(k), int) and not isinstance(obj.get(k), bool)
                                           for k in ("batch_events", "events"))
        read_at = obj.get("read_at") if isinstance(obj, dict) else None
        if not ok or not isinstance(read_at, list) or not all(type(x) is int for x in read_at):
            raise ValueError(f"{source}: {MANIFEST_KEY} must be {{batch_events: int, events: int, read_at: [int, ...]}}")
        return cls(obj["batch_events"], obj["events"], tuple(read_at), source)

    @classmethod
    def from_trace(cls, trace: Any) -> "ReplySchedule | None":
        """The schedule kept with a trace (a runtime.trace_format.Trace), None when it has none;
        checked against the trace: it covers the trace's events, or its first ones (a guard that
        decided for a rival stops showing the learned policy the stream: predictor.guard)."""
        obj = trace.manifest.get(MANIFEST_KEY)
        if obj is None:
            return None
        sched = cls.from_manifest(obj, str(trace.stem))
        if sched.events > trace.num_events:
            raise ValueError(f"{trace.stem}: {MANIFEST_KEY} covers {sched.events} events, the trace has "
                             f"{trace.num_events}: not this trace's schedule")
        return sched


@dataclass(frozen=True, slots=True)
class DaemonPath:
    """How the simulated daemon path delivers a policy's requests (defaults: what live runs do)."""

    batch_events: int = DAEMON_BATCH_EVENTS
    """Events per message; a batch's reply covers all its events (live: DaemonPolicy's batch_events)."""
    round_trip_ns: int = DAEMON_ROUND_TRIP_NS
    """From a batch's send to its reply being readable, on the executor's clock (measured: runtime.defaults)."""
    fallback: str = DEFAULT_FALLBACK
    """The local policy answering next use where the daemon gave no fresh due; "none": no local view."""
    schedule: ReplySchedule | None = None
    """A live run's recorded reply schedule: each reply is read at its recorded event (the
    round trip is then unused). None: the round-trip model."""

    def __post_init__(self) -> None:
        if self.schedule is not None and self.schedule.batch_events != self.batch_events:
            raise ValueError(f"daemon path: batch_events {self.batch_events}, but {self.schedule.source} was "
                             f"recorded with batches of {self.schedule.batch_events}")
        if self.batch_events < 1:
            raise ValueError(f"daemon path: batch_events must be >= 1, got {self.batch_events}")
        if self.round_trip_ns < 0:
            raise ValueError(f"daemon path: round_trip_ns must be >= 0, got {self.round_trip_ns}")
        from predictor.policies import LEARNED, parse_spec

        if parse_spec(self.fallback)[0] == LEARNED:
            raise ValueError("daemon path: the local fallback must be a policy without a model (replay, none, ...)")

    @property
    def replies(self) -> str:
        """"recorded" (a live run's schedule) or "modelled" (the round trip): when replies are read."""
        return "modelled" if self.schedule is None else "recorded"

    def describe(self) -> str:
        when = (f"replies read at the events recorded live ({self.schedule.replies} replies, {self.schedule.source})"
                if self.schedule is not None else f"round trip {self.round_trip_ns / 1000:g} us")
        return (f"daemon path: batches of {self.batch_events}, daemon replies: {self.replies}, {when}, "
                f"local {self.fallback} beside it")


class SimulatedDaemonPolicy(DaemonAdvice):
    """An in-process policy served the way the live daemon serves it, on the executor's clock.

    Events are batched by `batch_events`; when a batch is full it is "sent" and the inner
    policy's reply (the ids its events requested, each with its predicted next use, as the
    daemon computes them after the batch's last event) is readable `round_trip_ns` later.
    Replies are read only at a poll, right after each send (as the live client polls), so a
    reply becomes requests at the first send at or after its arrival. Until then the
    fallback answers next use. Needs `bind_clock` before `start` (the simulator calls it).
    The daemon never goes down here: no socket, no timeouts.

    With `path.schedule` (a live run's ReplySchedule) the clock is not used: batch b's reply
    is read at exactly event `read_at[b]`, never when -1 or past the schedule's end. A stream
    longer than the schedule's `events` is not the run it was recorded from: ValueError.
    """

    def __init__(self, inner: Policy, *, lookahead: int, path: DaemonPath | None = None):
        path = path or DaemonPath()  # what live runs do
        super().__init__(lookahead=lookahead, fallback=path.fallback)
        self.inner = inner
        self.path = path
        self.batch_events = path.batch_events
        self.round_trip_ns = path.round_trip_ns
        self.name = inner.name
        self.served_by = f"{inner.served_by or inner.name} (simulated daemon)"
        self.note = path.describe()
        self.variant = inner.variant
        self.schedule = path.schedule
        self._now: Callable[[], int] | None = None
        self._buffered = 0
        self._events = 0  # events observed this session (the schedule's clock)
        self._sent = 0  # batches sent this session
        self._batch: list[int] = []  # the inner policy's requests for the batch being filled
        # (readable at: ns on the executor's clock, or the event index with a schedule; ids; next uses)
        self._in_flight: deque[tuple[int, list[int], list[float]]] = deque()

    def bind_clock(self, now_ns: Callable[[], int]) -> None:
        self._now = now_ns

    def start(self, tensors: TensorInfo) -> None:
        if self._now is None and self.schedule is None:
            raise RuntimeError("SimulatedDaemonPolicy needs the executor's clock: call bind_clock() before start()")
        self.inner.start(tensors)
        self.start_advice(tensors)
        self._buffered = 0
        self._events = 0
        self._sent = 0
        self._batch = []
        self._in_flight.clear()

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        self._see(step, micro_step, phase, access, tensor_id)
        reqs = self.inner.observe(step, micro_step, phase, access, tensor_id)  # the daemon's view
        if len(reqs):
            self._batch.extend(reqs)
        event = self._events
        self._events = event + 1
        sched = self.schedule
        if sched is not None and event >= sched.events:
            raise ValueError(f"{sched.source}: {MANIFEST_KEY} covers {sched.events} events, the stream has more: "
                             "not the run it was recorded from")
        self._buffered += 1
        if self._buffered < self.batch_events:
            return ()
        # the batch goes out; the daemon answers it after its last event
        self._buffered = 0
        ids, self._batch = self._batch[:MAX_COMMAND_IDS], []
        pnu = self.inner.predicted_next_use
        next_use = np.asarray([pnu(t) for t in ids], dtype=np.float32).tolist()  # float32 on the wire
        b = self._sent
        self._sent = b + 1
        if sched is None:
            now = self._now()  # type: ignore[misc]
            self._in_flight.append((now + self.round_trip_ns, ids, next_use))
        else:  # read at the recorded event; never when -1 or not recorded (the run ended first)
            now = event
            at = sched.read_at[b] if b < len(sched.read_at) else -1
            if at >= 0:
                self._in_flight.append((at, ids, next_use))
        # the poll right after the send: every reply that has arrived, oldest first
        arrived = []
        while self._in_flight and self._in_flight[0][0] <= now:
            _, r_ids, r_nu = self._in_flight.popleft()
            arrived.append((r_ids, r_nu))
        return self._take(arrived) if arrived else ()

    def extend(self, tensors: TensorInfo, first_id: int) -> None:
        self.inner.extend(tensors, first_id)
        self.fallback.extend(tensors, first_id)

    def close(self) -> None:
        self.inner.close()
        self.fallback.close()


__all__ = ["DEFAULT_FALLBACK", "MANIFEST_KEY", "DaemonAdvice", "DaemonPath", "ReplySchedule", "SimulatedDaemonPolicy"]

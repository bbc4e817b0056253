"""The device tier: what the device holds, what is copied next, what gives way. One implementation.

The live store (runtime.store.TensorStore: torch glue over a real or simulated device) and
the simulator (prefetch.sim_trace: a virtual-clock engine driven by a trace's compute
times) are both this class plus an engine. So the live run and the simulation of its own
trace make the same decisions, rule for rule, by construction; only time can differ.

The tier works on tensor ids: their sizes, residents (LRU order), copies in flight, the
request queue ordered by predicted use, refusal and deferral, make-room and eviction,
write-back, and the statistics (hit / late / miss, stall, bytes). It asks its engine, the
methods a subclass overrides, for time: start a copy (`_start_copy`), land one at a read
(`_land`), fetch on demand (`_fetch`), wait for one to finish (`_finish`), write an
evicted activation back (`_write_back`), let a parameter's device copy go (`_drop`),
which parameters are in use (`_busy`), and for gradients: start a gradient's device-to-host
copy (`_grad_out`), tell whether one is complete (`_grad_done`), wait for one (`_grad_wait`).
The rules are in docs/simulator.md ("The model"); each is written once, here.

Gradients (`grad_write`, `grad_backward_end`, `grads_finish`): a managed parameter's
gradient is produced on the device by backward; its bytes enter `used` (room made first,
like an activation's write). The tier then HOLDS it on the device (autograd accumulates the
next micro-step's into it) or MOVES it now (a copy on the link's device-to-host FIFO,
its bytes in `used` until the copy completes; the host accumulates). Move when this
micro-step is the expected last of the optimizer step, when the expected count is unknown,
when the gradient was moved before in this optimizer step (the host sum must stay in
micro-step order), or when holding would pass GRAD_HOLD_SHARE of the budget. Each backward
ends by waiting for its gradient copies still in flight (`grad_wait_ns`: time the job loses).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from heapq import heapify, heappop, heappush
from typing import Any, Callable, Collection, Sequence

from predictor.interface import INF_POS, NO_PREDICTION, Policy, overrides
from runtime.defaults import AHEAD_SHARE
from runtime.stats import AccessStats
from runtime.trace_format import Access, Kind

HIT, LATE, MISS, WRITE = 0, 1, 2, 3
"""What a managed event was for the tier: a read's outcome, or a write."""

_READ = int(Access.READ)
_INF = NO_PREDICTION
_PARAM, _ACT, _GRAD, _STATE = int(Kind.PARAMETER), int(Kind.ACTIVATION), int(Kind.GRADIENT), int(Kind.OPTIMIZER_STATE)
_NONE: frozenset[int] = frozenset()


def _quiet(step: int, micro_step: int, phase: int, access: int, t: int) -> tuple[int, ...]:
    """The policy's observe once everything is resident (DeviceTier.go_resident): no requests."""
    return ()

_EXTRA = ("overcommits", "write_stall_ns", "prefetch_requested", "prefetch_refused", "optimizer_wait_ns",
          "grad_wait_ns", "grad_moves", "grad_holds", "prefetch_held", "router_hints", "hint_cancelled", "early_stepped")
"""The tier's own counters beyond AccessStats (measured_extra), by attribute name below."""
_EXTRA_ATTR = ("overcommits", "write_stall_ns", "requested", "refused", "optimizer_wait_ns",
               "grad_wait_ns", "grad_moves", "grad_holds", "held_ahead", "hints_taken", "hint_cancelled", "early_stepped")

GRAD_HOLD_SHARE = 0.25
"""Most of the budget gradients held on the device across micro-steps may take. Holding a
gradient saves its copy in every micro-step but the last (one copy per optimizer step instead
of one per micro-step), but held bytes cannot be evicted: they shrink what prefetches and
activations have until the optimizer step. A quarter keeps three quarters of the budget for
the tensors the policy moves, while holding every gradient of a job whose parameters are
up to a quarter of the budget (small accumulation jobs, the common case); larger ones hold
their first gradients and move the rest each micro-step."""


def check_ahead_share(share: float) -> None:
    """ValueError for a prefetch window share outside [0, 1] (0: no window)."""
    if not 0 <= share <= 1:
        raise ValueError(f"ahead_share must be in [0, 1] (0: no prefetch window), got {share}")


class DeviceTier:
    """Device residency under a byte budget, over tensor ids; engines subclass it."""

    def __init__(self, policy: Policy, budget_bytes: int | None = None):
        self._budget: int | None = None
        self._limit: float = float("inf")  # the budget, or no limit while it is unknown
        self.set_budget(budget_bytes)
        # per tensor id
        self.nb: list[int] = []
        self.kind: list[int] = []
        self.managed: list[bool | None] = []
        """None until a size is known (trace_format.is_managed); False: not the tier's."""
        self.exists = bytearray()  # has a value somewhere (parameters always; activations from write to free)
        self.inflight: list[Any] = []  # the engine's handle of a prefetch not read yet, else None
        self.pref = bytearray()  # brought by a prefetch, not read yet: the `mark` it was issued under
        self.ahead = 0  # bytes of those (in flight or landed, not read yet, not overdue): what the window bounds
        self.inwin: list[int] = []  # the bytes each counts in `ahead` (0: not counted; sizes can change after)
        self.wdue: list[float] = []  # the due it was counted under (heap entries of an older issue are stale)
        self.ahead_heap: list[tuple[float, int]] = []  # (due, id) of the prefetches counted in `ahead`
        self.ahead_share = AHEAD_SHARE
        """The window: unread prefetches, not overdue, hold at most this share of the budget (0: no window)."""
        self.held_ahead = 0  # requests held back by the window (drain stopped at them)
        self.stamp: list[int] = []  # heap mode: LRU tick of insertion or last read
        self.hkey: list[int] = []  # heap mode: the key last pushed (next_read_key changes only then)
        # device state
        self.resident: OrderedDict[int, None] = OrderedDict()  # ids with device bytes (incl. in flight), LRU first
        self.used = 0
        self.peak = 0
        self.pending: list[tuple[float, int]] = []  # heap of (due read count, id) not yet issued
        self.queued: dict[int, float] = {}  # id -> its live entry's due
        self.deferred: dict[int, float] = {}  # parameter requests held until the optimizer ran
        self.reads = 0  # managed reads so far: the clock predictions are relative to
        self.hints_taken = self.hint_cancelled = 0  # router hints the policy took; queued requests they dropped
        self.step_start = 0  # reads when the current optimizer step began
        self.step_prev = 0  # reads in the previous optimizer step
        self.in_optimizer = False
        self.params_stay = False
        """The optimizer steps on the device copies (runtime.device_stepping): parameters'
        copies are not dropped before the step."""
        self.resident_mode = False
        """Everything fits (go_resident): nothing is offloaded any more; the live store keeps
        parameters bound to their device copies, gradients and optimizer state beside them."""
        self.step_dropped_bytes = 0
        """Parameter bytes whose device copies went for the optimizer step under way (host
        stepping): what the next forward fetches again (runtime.placement's cost model)."""
        self.current = -1  # the id read last: handed to compute, not evictable
        self.mark = 1  # 1 in warm-up, 2 measured: a prefetch's use is credited to the period that issued it
        # counters (AccessStats and the tier's own)
        self.hits = self.late = self.misses = 0  # accesses: their sum
        self.stall_ns = self.bytes_copied = self.bytes_written_back = 0
        self.prefetch_issued = self.prefetch_used = self.carried = self.evictions = 0
        self.overcommits = self.write_stall_ns = self.requested = self.refused = self.optimizer_wait_ns = 0
        self.steps = 0
        self.early_step = True
        """Host stepping: the parameters the next step reads first step first (early_params)."""
        self.early_stepped = 0  # parameters stepped before the others, their copies started in the step (early_params)
        # gradients: keys are the engine's (the live store: the parameter's id; the simulator: the gradient's)
        self.grad_held: dict[int, int] = {}  # key -> bytes of a gradient held on the device
        self.grad_held_bytes = 0
        self.grad_out: deque[tuple[int, Any, int]] = deque()  # (key, handle, bytes): copies to the host in flight, FIFO
        self.grad_moved: set[int] = set()  # keys moved to the host in this optimizer step (never held again in it)
        self.grad_micro = 0  # backwards with gradients in this optimizer step so far
        self.grad_expected = 0  # backwards with gradients in the previous optimizer step (0: unknown)
        self.grad_wait_ns = self.grad_moves = self.grad_holds = 0
        self.h2d = [0, 0, 0, 0]  # bytes copied to the device, by Kind
        self.d2h = [0, 0, 0, 0]  # bytes copied to the host, by Kind
        self._warm: AccessStats | None = None
        self._warm_extra: tuple[int, ...] = (0,) * len(_EXTRA)
        self._warm_traffic: tuple[list[int], list[int]] = ([0] * 4, [0] * 4)
        self._tick = 0  # heap mode: the LRU clock of `stamp`
        self.followers: list[DeviceTier] = []
        """Tiers that take this one's optimizer steps and gradients as they happen (their
        accesses come through their policy: predictor.guard's shadows)."""
        self.set_policy(policy)

    # -- setup -------------------------------------------------------------------------------
    def set_policy(self, policy: Policy) -> None:
        """Fast paths decided once (not per event): called only when the policy overrides them."""
        self._policy = policy
        if overrides(policy, "bind_tier"):
            policy.bind_tier(self)  # read-only: budget and counters (predictor.interface.TierView)
        self.observe = policy.observe
        self.pnu: Callable[[int], float] = policy.predicted_next_use
        self._paced = policy.paced  # sets its own window (the oracle)
        self.use_heap = overrides(policy, "next_read_key")  # the oracle: the scan's victims, in O(log n)
        self.key = policy.next_read_key
        self.rekeyed = policy.rekeyed if overrides(policy, "rekeyed") else None
        self.admit = policy.admit_prefetch if overrides(policy, "admit_prefetch") else None
        self._heap: list[tuple[int, int, int]] = []
        if self.use_heap and self.resident:  # a policy swapped in mid-run: key the residents
            for v in self.resident:
                if self.inflight[v] is None:
                    self.hkey[v] = k = self.key(v)
                    self._heap.append((-k, self.stamp[v], v))
            heapify(self._heap)

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.set_policy(policy)

    @property
    def budget_bytes(self) -> int | None:
        """Device budget; None: not known yet (no limit until it is set)."""
        return self._budget

    @budget_bytes.setter
    def budget_bytes(self, budget_bytes: int | None) -> None:
        self.set_budget(budget_bytes)

    def set_budget(self, budget_bytes: int | None) -> None:
        self._budget = budget_bytes
        self._limit = float("inf") if budget_bytes is None else budget_bytes

    def reserve(self, n: int) -> None:
        """Room for ids below `n` (unknown kind, no size, not decided managed)."""
        grow = n - len(self.nb)
        if grow <= 0:
            return
        self.nb.extend([0] * grow)
        self.kind.extend([-1] * grow)
        self.managed.extend([None] * grow)
        self.exists.extend(bytes(grow))
        self.inflight.extend([None] * grow)
        self.pref.extend(bytes(grow))
        self.inwin.extend([0] * grow)
        self.wdue.extend([0.0] * grow)
        self.stamp.extend([0] * grow)
        self.hkey.extend([0] * grow)

    def declare_all(self, kinds: list[int], nbytes: list[int], managed: list[bool]) -> None:
        """Every id at once (a trace's tensor table): declare() for ids 0..n-1, in bulk."""
        n = len(kinds)
        self.reserve(n)
        self.kind[:n] = kinds
        self.nb[:n] = nbytes
        self.managed[:n] = managed
        self.exists[:n] = bytes(k != _ACT for k in kinds)

    def declare(self, tid: int, kind: int, nbytes: int, managed: bool | None) -> None:
        if tid >= len(self.nb):
            self.reserve(tid + 1)
        self.kind[tid] = kind
        self.nb[tid] = nbytes
        self.managed[tid] = managed
        if kind != _ACT:
            self.exists[tid] = 1  # a parameter always has its host master

    # -- engine: what subclasses provide -----------------------------------------------------
    def _start_copy(self, tid: int) -> Any:
        """Start copying `tid` to the device; return a handle for _land/_finish."""
        raise NotImplementedError

    def _land(self, tid: int, handle: Any) -> int | None:
        """A read reached a prefetch: None if its copy is complete (a hit), else the ns waited (late)."""
        raise NotImplementedError

    def _fetch(self, tid: int) -> int:
        """A miss: copy `tid` now behind the queue and wait; return the ns waited."""
        raise NotImplementedError

    def _finish(self, tid: int, handle: Any) -> int:
        """Wait for a copy in flight to complete (it is then resident); return the ns waited."""
        raise NotImplementedError

    def _write_back(self, tid: int) -> None:
        """An evicted activation goes back to the host (the compute does not wait)."""

    def _drop(self, tid: int) -> None:
        """A parameter's device copy is let go (evicted or made stale by the optimizer)."""

    def _busy(self) -> Collection[int]:
        """Parameters of modules whose forward is under way: not evictable."""
        return _NONE

    def _eta(self, tid: int) -> tuple[int, int, int]:
        """(when a copy of `tid` started now would complete, now, compute time now), for admit_prefetch."""
        raise NotImplementedError

    def _grad_out(self, key: int, nbytes: int) -> Any:
        """Start copying gradient `key` (its device value now) to the host; return a handle."""
        raise NotImplementedError

    def _grad_done(self, key: int, handle: Any) -> bool:
        """Whether that copy is complete (no waiting)."""
        raise NotImplementedError

    def _grad_wait(self, key: int, handle: Any) -> int:
        """Wait for that copy to complete (the host has the gradient then); return the ns waited."""
        raise NotImplementedError

    # -- a managed event -----------------------------------------------------------------------
    def event(self, step: int, micro_step: int, phase: int, access: int, t: int) -> int:
        """Serve the event (a read: hit, late or miss), show it to the policy, queue and issue
        its requests. An activation's write is placed (write) and a read one freed (free)
        by the caller, after this. One function, attributes read once: it runs per event."""
        resident, inflight = self.resident, self.inflight
        if access == _READ:
            if t in resident:
                h = inflight[t]
                if h is not None:
                    waited = self._land(t, h)
                    inflight[t] = None
                    if waited is None:
                        self.hits += 1
                        out = HIT
                    else:
                        self.late += 1
                        self.stall_ns += waited
                        out = LATE
                else:
                    self.hits += 1
                    out = HIT
                resident.move_to_end(t)
            else:
                self.misses += 1
                out = MISS
                if not self.exists[t]:
                    raise ValueError(self.describe(t) + " read before any write of it")
                n = self.nb[t]
                if self.used + n > self._limit:
                    self.make_room(n, t, False, 0)
                self.stall_ns += self._fetch(t)
                self.bytes_copied += n
                self.h2d[self.kind[t]] += n
                self._place(t)
            pref = self.pref
            pv = pref[t]
            if pv:
                if pv == self.mark:
                    self.prefetch_used += 1
                else:
                    self.carried += 1  # issued in warm-up, used after it: credited to warm-up
                self.unpref(t)
            self.current = t
            self.queued.pop(t, None)  # read: a pending request for it is moot
            self.reads += 1
            reqs = self.observe(step, micro_step, phase, access, t)
            if self.use_heap:
                self._tick = tick = self._tick + 1
                self.stamp[t] = tick
                self.hkey[t] = k = self.key(t)  # re-keyed by the read (landed: not in flight)
                heap = self._heap
                heappush(heap, (-k, tick, t))
                rekeyed = self.rekeyed
                if (rekeyed is not None and (rk := rekeyed())) or len(heap) > 4 * len(resident) + 1024:
                    self._rekey(-1, rk if rekeyed is not None else ())
        else:
            out = WRITE
            reqs = self.observe(step, micro_step, phase, access, t)
            if self.use_heap:
                rekeyed = self.rekeyed
                rk = rekeyed() if rekeyed is not None else ()
                if rk or t in resident or len(self._heap) > 4 * len(resident) + 1024:
                    self._rekey(t, rk)
        if self.in_optimizer:
            return out  # the optimizer's own reads and writes: its post-hook requeues
        if reqs:
            self.request(reqs)
        if self.pending:
            self.drain()
        return out

    def request(self, reqs: Sequence[int]) -> None:
        """Queue the policy's requests by when they are due (position + 1 without a prediction)."""
        resident, exists, managed, pnu = self.resident, self.exists, self.managed, self.pnu
        n = len(managed)
        reads = self.reads
        for j, p in enumerate(reqs):
            if p >= n or p in resident or not exists[p] or not managed[p]:
                continue  # resident, in flight, not produced yet, or not managed
            d = pnu(p)
            self.want(p, reads + (d if d != _INF else j + 1))

    def hint(self, want: Sequence[int], skip: Sequence[int]) -> None:
        """A router's word on which experts run next (runtime.routers; Policy.hint): if the
        policy takes it, its requests are queued and the queued (or deferred) requests for the
        experts that will not run are dropped, then the queue drains. Between events, in forward."""
        reqs = self._policy.hint(want, skip)
        if reqs is not None:
            self.take_hint(reqs, skip)

    def take_hint(self, reqs: Sequence[int], skip: Sequence[int]) -> None:
        """Act on a hint the policy took (hint); the guard's shadow tiers are given theirs directly."""
        self.hints_taken += 1
        queued, deferred = self.queued, self.deferred
        for t in skip:
            if queued.pop(t, None) is not None:
                self.hint_cancelled += 1
            deferred.pop(t, None)
        if self.in_optimizer or self.resident_mode:
            return
        if reqs:
            self.request(reqs)
        if self.pending:
            self.drain()

    def write(self, t: int, nbytes: int) -> None:
        """An activation is produced on the device: its previous value goes, room is made
        first (the peak never passes the budget), then it is resident."""
        if self.exists[t]:
            self.free(t)
        self.nb[t] = nbytes
        if self.used + nbytes > self._limit:
            st = self.stall_ns
            self.make_room(nbytes, t, False, 0)
            self.write_stall_ns += self.stall_ns - st
        self.exists[t] = 1
        self._place(t)

    def free(self, t: int) -> None:
        """An activation's value is gone (read by autograd, or replaced): no cost."""
        if t in self.resident:
            del self.resident[t]
            self.used -= self.nb[t]
        self.exists[t] = 0
        self.inflight[t] = None
        self.unpref(t)

    # -- the optimizer step ---------------------------------------------------------------------
    def optimizer_begin(self) -> None:
        """The optimizer updates the host masters: gradients still on the device or on the
        link reach the host first (grads_finish), copies still reading the masters finish
        (step time, not stall), every parameter's device copy is dropped (not an eviction),
        and those still expected are queued again, fetched (updated) once the step is done."""
        for f in self.followers:
            f.params_stay, f.early_step = self.params_stay, self.early_step
            f.optimizer_begin()
        self.grads_finish()
        if self.grad_micro:
            self.grad_expected = self.grad_micro
        self.grad_micro = 0
        self.grad_moved.clear()
        self.in_optimizer = True
        self._params_for_step()

    def _params_for_step(self) -> None:
        """Host stepping: the device copies go (drop_params). Device stepping
        (`params_stay`, runtime.device_stepping): they stay, and copies still in flight land
        now (step time), so none reads a master the step is about to replace."""
        if not self.params_stay:
            self.drop_params()
            return
        kind, inflight = self.kind, self.inflight
        for p in [p for p in self.resident if kind[p] == _PARAM]:
            if inflight[p] is not None:
                self.optimizer_wait_ns += self._finish(p, inflight[p])
                inflight[p] = None
            self._park(p)

    def go_resident(self, extra_bytes: int) -> None:
        """Everything fits (runtime.placement): from now on nothing is offloaded. The managed
        parameters' gradients and optimizer state (`extra_bytes`) live on the device, in `used`;
        every managed parameter is made resident (`_hold`: step time, not stall) and stays
        through the optimizer steps, which update the device copies in place; gradients are
        no longer moved (the live store removes its gradient hooks, the simulator skips the
        trace's gradient events)."""
        self.params_stay = self.resident_mode = True
        self.observe = _quiet  # nothing left to prefetch: the policy is no longer asked (nor paid for)
        self.used += extra_bytes
        self.peak = max(self.peak, self.used)
        kind, managed = self.kind, self.managed
        for t in range(len(kind)):
            if kind[t] == _PARAM and managed[t]:
                self._hold(t)

    def _hold(self, t: int) -> None:
        """Parameter `t` resident now: a copy in flight lands, else it is fetched (step time).
        The engine checks first (`_keep_ready`: the live store drops a stale copy, skips a bound
        one) and binds after (`_kept`)."""
        if not self._keep_ready(t):
            return
        h = self.inflight[t]
        if h is not None:
            self.optimizer_wait_ns += self._finish(t, h)
            self.inflight[t] = None
        elif t not in self.resident:
            n = self.nb[t]
            if self.used + n > self._limit:
                self.make_room(n, t, False, 0)
            self.optimizer_wait_ns += self._fetch(t)
            self.h2d[_PARAM] += n
            self.bytes_copied += n
            self._place(t)
        self._kept(t)

    def _keep_ready(self, t: int) -> bool:
        """Before `_hold` makes `t` resident: False when it already is where the step needs it."""
        return True

    def _kept(self, t: int) -> None:
        """After `_hold` made `t` resident."""

    def _park(self, t: int) -> None:
        """Device stepping: parameter `t`'s device copy stays resident through the step,
        the parameter itself on its master meanwhile (the live store rebinds it)."""

    def drop_params(self) -> None:
        """Every parameter's device copy goes (not an eviction): a copy in flight finishes
        first (optimizer_wait_ns: step time, not stall); one still expected is queued again.
        Before the optimizer (optimizer_begin), or at the end of the expected last backward
        (grad_backward_end), so the host masters are what the parameters hold."""
        kind, inflight, nb, pnu = self.kind, self.inflight, self.nb, self.pnu
        for p in [p for p in self.resident if kind[p] != _ACT]:
            self.step_dropped_bytes += nb[p]
            h = inflight[p]
            if h is not None:
                self.optimizer_wait_ns += self._finish(p, h)
                inflight[p] = None
            del self.resident[p]
            self.used -= nb[p]
            self.unpref(p)
            self._drop(p)
            d = pnu(p)
            if d != _INF:
                self.want(p, self.reads + d)

    def early_params(self) -> list[int]:
        """Host stepping, once the optimizer step has begun (after optimizer_begin): the
        parameters the next step is expected to read first, soonest due first, as many as the
        prefetch window has room for (what optimizer_end would issue first). The executor
        steps them before the others and calls `release_early`, so their copies run during the
        rest of the optimizer step instead of after it, when the forward already waits for
        them. None in the first optimizer step (nothing is known of the next one yet), with
        device stepping or everything resident (no copies are dropped), or with no budget."""
        if (not self.early_step or self.params_stay or self.resident_mode or not self.in_optimizer
                or not self.step_prev or self.budget_bytes is None):
            return []
        kind, nb, resident = self.kind, self.nb, self.resident
        due = dict(self.deferred)  # parameters only (want defers nothing else)
        for p, d in self.queued.items():
            if kind[p] == _PARAM and d < due.get(p, _INF):
                due[p] = d
        limit = self._limit
        room = min(self.ahead_share * limit - self.ahead if self.ahead_share and not self._paced else _INF,
                   limit - self.used)
        out: list[int] = []
        for d, p in sorted((d, p) for p, d in due.items() if p not in resident):
            n = nb[p]
            if n > room:
                break
            room -= n
            out.append(p)
        return out

    def release_early(self, ids: Sequence[int]) -> None:
        """`ids` (early_params) are stepped, their host masters final for this step: their
        copies start now, soonest due first, as drain would issue them after the step. The
        followers (the guard's shadows) do the same with theirs: had their policy served, its
        early parameters would have been stepped first."""
        for f in self.followers:
            f.release_early(f.early_params())
        if not ids:
            return
        rest, queued, deferred = self.pending, self.queued, self.deferred
        mine: list[tuple[float, int]] = []
        for p in ids:
            d, q = deferred.pop(p, _INF), queued.get(p)
            if q is None:
                self.requested += 1
            elif q < d:
                d = q
            queued[p] = d
            mine.append((d, p))
        heapify(mine)
        self.pending = mine
        self.drain()
        left, self.pending = self.pending, rest
        for e in left:
            heappush(rest, e)
        self.early_stepped += len(ids)

    def optimizer_end(self) -> None:
        """The optimizer's post-hook: requests from here on belong to the next step."""
        for f in self.followers:
            f.optimizer_end()
        self.in_optimizer = False
        self.step_dropped_bytes = 0
        self.step_prev, self.step_start = self.reads - self.step_start, self.reads
        held, self.deferred = self.deferred, {}
        for p, due in held.items():
            self.want(p, due)
        if self.pending:
            self.drain()

    # -- gradients -------------------------------------------------------------------------------
    def grad_write(self, key: int, nbytes: int) -> bool:
        """Backward produced gradient `key` (`nbytes`) on the device (a parameter's
        post-accumulate-grad hook). New device bytes enter `used`, room made first (a demand:
        never refused). Then hold it or move it (module docstring); True: moved (the engine's
        `_grad_out` started its copy), False: held."""
        for f in self.followers:
            f.grad_write(key, nbytes)
        if key not in self.grad_held:  # not accumulating into a held one: new bytes
            if self.used + nbytes > self._limit:
                self.make_room(nbytes, -1, False, 0)
            self.used += nbytes
            if self.used > self.peak:
                self.peak = self.used
            exp = self.grad_expected
            if (exp and self.grad_micro + 1 < exp and key not in self.grad_moved
                    and self.grad_held_bytes + nbytes <= GRAD_HOLD_SHARE * self._limit):
                self.grad_held[key] = nbytes
                self.grad_held_bytes += nbytes
                self.grad_holds += 1
                return False
        elif self.grad_expected and self.grad_micro + 1 < self.grad_expected:
            return False  # held, and not the last micro-step yet: autograd accumulated into it
        self._grad_move(key, nbytes)
        return True

    def _grad_move(self, key: int, nbytes: int) -> None:
        held = self.grad_held.pop(key, None)
        if held is not None:
            self.grad_held_bytes -= held
            nbytes = held
        self.grad_out.append((key, self._grad_out(key, nbytes), nbytes))
        self.grad_moved.add(key)
        self.grad_moves += 1
        self.d2h[_GRAD] += nbytes

    def grad_release(self) -> None:
        """Gradient copies complete by now leave `used` (FIFO: one still in flight stops it);
        the engine takes their results (a wait that does not wait)."""
        out, done = self.grad_out, self._grad_done
        while out and done(out[0][0], out[0][1]):
            self._grad_land()

    def _grad_land(self) -> None:
        """The oldest gradient copy in flight lands (waited for): its bytes leave the device."""
        key, h, n = self.grad_out.popleft()
        self.grad_wait_ns += self._grad_wait(key, h)
        self.used -= n

    def _grad_wait_all(self) -> None:
        while self.grad_out:
            self._grad_land()

    def grad_last_micro(self) -> bool:
        """The micro-step under way may be the last of its optimizer step: the expected last,
        one past it (a longer accumulation), or any while the count is unknown (the first
        optimizer step): user code after its backward (clipping) must see every gradient."""
        return self.grad_expected <= self.grad_micro + 1

    def grad_backward_end(self) -> bool:
        """A backward that produced gradients ends: the job waits for their copies still in
        flight (grad_wait_ns). At a micro-step that may be the last (grad_last_micro), held
        gradients move too (and are waited for) and the parameters' device copies go
        (drop_params): what the optimizer and user code before it (clipping) read is on the
        host. True then."""
        for f in self.followers:
            f.params_stay = self.params_stay
            f.grad_backward_end()
        last = self.grad_last_micro()
        if last:
            self.grads_finish()  # held ones move too
        else:
            self._grad_wait_all()
        self.grad_micro += 1
        if last:
            self._params_for_step()
        return last

    def grads_finish(self) -> None:
        """Every gradient to the host now (the optimizer's pre-hook): held ones move, all are waited for."""
        for key in list(self.grad_held):
            self._grad_move(key, 0)
        self._grad_wait_all()

    def grad_on_host(self, key: int) -> None:
        """Gradient `key` has a host value in this optimizer step (the engine took one back
        after a wrong guess of the last micro-step): later ones move, never held, so the host
        sums in micro-step order."""
        for f in self.followers:
            f.grad_on_host(key)
        self.grad_moved.add(key)

    # -- the request queue -----------------------------------------------------------------------
    def want(self, t: int, due: float) -> None:
        if self.kind[t] == _PARAM and self.step_prev and due > self.step_start + self.step_prev \
                and not self.in_optimizer:
            # Expected in the next step: the optimizer will rewrite its host master first, so a
            # copy now would be thrown away. Hold the request until the step is done.
            if self.deferred.get(t, _INF) > due:
                self.deferred[t] = due
            return
        old = self.queued.get(t)
        if old is None or due < old:
            if old is None:
                self.requested += 1
            self.queued[t] = due
            heappush(self.pending, (due, t))

    def drain(self) -> None:
        """Issue queued requests, soonest due first, while room can be made; a refused one
        stays at the head and draining stops until the next event (ChampSim's prefetch_line
        returning false): later requests are due later still."""
        pending, queued, resident, exists, nb = self.pending, self.queued, self.resident, self.exists, self.nb
        admit, limit, inflight, pref, mark = self.admit, self._limit, self.inflight, self.pref, self.mark
        start, use_heap, stamp, kind, h2d = self._start_copy, self.use_heap, self.stamp, self.kind, self.h2d
        ah = self.ahead_heap
        cap = self.ahead_share * limit if self.ahead_share and not self._paced else _INF
        while ah and ah[0][0] < self.reads:  # overdue: a wrong guess leaves the window (it stays resident)
            d, v = heappop(ah)
            if self.inwin[v] and self.wdue[v] == d:
                self._leave_window(v)
        while pending:
            due, p = heappop(pending)
            if queued.get(p) != due:
                continue  # superseded by an earlier due, or already served
            if p in resident or not exists[p]:
                del queued[p]
                continue
            if admit is not None:
                end, now, cnow = self._eta(p)
                if not admit(p, end, now, cnow):
                    del queued[p]
                    continue
            n = nb[p]
            if self.ahead and self.ahead + n > cap:
                heappush(pending, (due, p))
                self.held_ahead += 1
                return
            if self.used + n > limit and not self.make_room(n, p, True, due):
                heappush(pending, (due, p))
                self.refused += 1
                return
            del queued[p]
            inflight[p] = start(p)
            pref[p] = mark
            if cap != _INF:  # the window is on: count it in
                self.ahead += n
                self.inwin[p] = n
                self.wdue[p] = due
                heappush(ah, (due, p))
            resident[p] = None  # _place, for a copy in flight: it enters the eviction heap once read
            self.used = used = self.used + n
            if used > self.peak:
                self.peak = used
            if use_heap:
                self._tick = stamp[p] = self._tick + 1
            self.bytes_copied += n
            h2d[kind[p]] += n
            self.prefetch_issued += 1

    # -- room -----------------------------------------------------------------------------------
    def make_room(self, need: int, protect: int, refuse: bool, due: float) -> bool:
        """Evict until `need` more bytes fit. Candidates: residents except `protect`, the
        tensor read last, unread prefetches and parameters in use. First, in LRU order, those
        outside the policy's horizon; then the furthest predicted use first. With `refuse`
        (a prefetch), never evict one predicted at or before `due`; otherwise (a demand
        fetch, a write) wait for unread prefetches to land, the one needed last first, and
        evict them; still short, go over budget and count an overcommit."""
        limit = self._limit
        if self.used + need <= limit:
            return True
        if self.grad_out:  # gradient copies complete by now give their bytes back first
            self.grad_release()
            if self.used + need <= limit:
                return True
        inflight, current = self.inflight, self.current
        busy = self._busy()
        if self.use_heap:
            ok = self._room_from_heap(need, protect, refuse, due, busy)
            if ok is not None:
                return ok
        else:
            pnu, nb = self.pnu, self.nb
            finite: list[tuple[float, int]] = []
            lru: list[int] = []  # pass 1's victims, chosen before any goes (no copy of the resident set)
            short = self.used + need - limit
            for v in self.resident:
                if v == protect or v == current or inflight[v] is not None or v in busy:
                    continue
                d = pnu(v)
                if d == _INF:
                    lru.append(v)
                    short -= nb[v]
                    if short <= 0:
                        break
                else:
                    finite.append((d, v))
            for v in lru:
                self.evict(v, _INF)
            if short <= 0:
                return True
            finite.sort(reverse=True)  # one ranking per call, not per eviction
            horizon = due - self.reads
            for d, v in finite:
                if refuse and d <= horizon:
                    return False
                self.evict(v, d)
                if self.used + need <= limit:
                    return True
        if refuse:
            return False
        pnu = self.pnu
        for d, v in sorted([(pnu(v), v) for v in self.resident if inflight[v] is not None and v != protect],
                           reverse=True):  # the copy needed last goes first (Belady), not the oldest
            self.stall_ns += self._finish(v, inflight[v])
            inflight[v] = None
            self.evict(v, d)
            if self.used + need <= limit:
                return True
        while self.grad_out:  # gradient copies still in flight, oldest first: their bytes leave when they land
            self._grad_land()
            if self.used + need <= limit:
                return True
        self.overcommits += 1
        return True

    def _room_from_heap(self, need: int, protect: int, refuse: bool, due: float, busy: Collection[int]) -> bool | None:
        """Heap mode (a policy with next_read_key): the same victims as the scan, in O(log n).
        None: not enough room among the candidates."""
        heap, resident, stamp, hkey, inflight = self._heap, self.resident, self.stamp, self.hkey, self.inflight
        current, limit = self.current, self._limit
        aside = []
        ok = None
        while heap:
            e = heappop(heap)
            v = e[2]
            if v not in resident or stamp[v] != e[1] or hkey[v] != -e[0]:
                continue  # stale: evicted, freed, read again or re-keyed since pushed
            if v == protect or v == current or inflight[v] is not None or v in busy:
                aside.append(e)  # not a candidate now: back once the victims are chosen
                continue
            k = -e[0]
            if k >= INF_POS:
                self.evict(v, _INF)
            else:
                if refuse and k <= due:
                    aside.append(e)
                    ok = False
                    break
                self.evict(v, float(k - self.reads))
            if self.used + need <= limit:
                ok = True
                break
        for e in aside:
            heappush(heap, e)
        return ok

    def _rekey(self, t: int, rekeyed: Sequence[int] | None = None) -> None:
        """Heap mode, after observe: the observed id (-1: none) and those the policy re-keyed
        (`rekeyed`, already asked of it; None: ask now), then compaction."""
        heap, resident, inflight, stamp, key, hkey = self._heap, self.resident, self.inflight, self.stamp, self.key, self.hkey
        if t >= 0 and t in resident and inflight[t] is None:
            hkey[t] = k = key(t)
            heappush(heap, (-k, stamp[t], t))
        if rekeyed is None:
            rekeyed = self.rekeyed() if self.rekeyed is not None else ()
        if rekeyed:
            for v in rekeyed:
                if v in resident and inflight[v] is None:
                    hkey[v] = k = key(v)
                    heappush(heap, (-k, stamp[v], v))
        if len(heap) > 4 * len(resident) + 1024:  # compact: drop the stale entries
            self._heap = [(-hkey[v], stamp[v], v) for v in resident if inflight[v] is None]
            heapify(self._heap)

    def _place(self, t: int) -> None:
        """`t` now has device bytes (a prefetch, a demand fetch, a write)."""
        self.resident[t] = None
        self.used += self.nb[t]
        if self.used > self.peak:
            self.peak = self.used
        if self.use_heap:
            self._tick += 1
            self.stamp[t] = self._tick
            if self.inflight[t] is None:  # an unread prefetch is not evictable: it enters the heap once read
                self.hkey[t] = k = self.key(t)
                heappush(self._heap, (-k, self._tick, t))

    def unpref(self, t: int) -> None:
        """`t` no longer holds an unread prefetch (read, freed, evicted, dropped, made stale)."""
        self.pref[t] = 0
        if self.inwin[t]:
            self._leave_window(t)

    def _leave_window(self, t: int) -> None:
        """`t`'s bytes stop counting in the prefetch window (read, gone, or overdue)."""
        self.ahead -= self.inwin[t]
        self.inwin[t] = 0

    def evict(self, v: int, far: float) -> None:
        """Evict a resident `v` (predicted `far` reads away): an activation is written back,
        a parameter's copy dropped; one still expected is queued again."""
        del self.resident[v]
        self.used -= self.nb[v]
        self.evictions += 1
        self.unpref(v)
        if self.kind[v] == _ACT:
            self.bytes_written_back += self.nb[v]
            self.d2h[_ACT] += self.nb[v]
            self._write_back(v)
        else:
            self._drop(v)
        if far != _INF:
            self.want(v, self.reads + far)

    # -- statistics -------------------------------------------------------------------------------
    def totals(self) -> AccessStats:
        return AccessStats(
            accesses=self.hits + self.late + self.misses, hits=self.hits, late=self.late, misses=self.misses, stall_ns=self.stall_ns,
            bytes_copied=self.bytes_copied, bytes_written_back=self.bytes_written_back,
            prefetch_issued=self.prefetch_issued, prefetch_used=self.prefetch_used, evictions=self.evictions,
            steps=self.steps,
        )

    def begin_measurement(self) -> None:
        """Warm-up ends: snapshot the counters (ChampSim's way of dropping it); the peak
        reported is over the measured steps from here."""
        self._warm = self.totals()
        self._warm_extra = tuple(getattr(self, a) for a in _EXTRA_ATTR)
        self._warm_traffic = (list(self.h2d), list(self.d2h))
        self.mark = 2
        self.peak = self.used

    @property
    def warmup(self) -> AccessStats | None:
        """Warm-up counters, a warm-up prefetch used after warm-up credited to warm-up."""
        if self._warm is None:
            return None
        w = self._warm.snapshot()
        w.prefetch_used += self.carried
        return w

    def measured(self) -> AccessStats:
        return self.totals() - self._warm if self._warm is not None else self.totals()

    def measured_extra(self) -> dict[str, int]:
        """The tier's own counters over the measured steps."""
        now = tuple(getattr(self, a) for a in _EXTRA_ATTR)
        return {k: a - b for k, a, b in zip(_EXTRA, now, self._warm_extra)}

    def measured_traffic(self) -> tuple[dict[str, int], dict[str, int]]:
        """Bytes copied over the measured steps, (to the device, to the host), by kind: the
        report's `bytes_h2d` (parameter, activation, gradient) and `bytes_d2h` (activation,
        gradient, and parameter: a user's write, or a device step, written back); with
        device stepping also `optimizer_state` both ways."""
        wh, wd = self._warm_traffic
        h2d = {Kind(k).name.lower(): self.h2d[k] - wh[k] for k in (_PARAM, _ACT, _GRAD)}
        d2h = {Kind(k).name.lower(): self.d2h[k] - wd[k] for k in (_ACT, _GRAD, _PARAM)}
        if self.h2d[_STATE] or self.d2h[_STATE]:  # device stepping streams the optimizer state
            h2d["optimizer_state"] = self.h2d[_STATE] - wh[_STATE]
            d2h["optimizer_state"] = self.d2h[_STATE] - wd[_STATE]
        return h2d, d2h

    def traffic_fields(self) -> dict[str, Any]:
        """The measured steps' traffic, as RunReport fields (live and simulated alike)."""
        h2d, d2h = self.measured_traffic()
        x = self.measured_extra()
        return dict(bytes_h2d=h2d, bytes_d2h=d2h, grad_wait_ns=x["grad_wait_ns"], grad_moves=x["grad_moves"],
                    grad_holds=x["grad_holds"], router_hints=x["router_hints"], hint_cancelled=x["hint_cancelled"],
                    early_stepped=x["early_stepped"])

    def describe(self, tid: int) -> str:
        """How errors name a tensor id (subclasses know keys)."""
        return f"tensor #{tid}"

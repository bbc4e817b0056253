"""The oracle: perfect knowledge of a trace's future reads, the bound every hit rate is quoted against.

    prefetch simulate traces/gpt2 --policy oracle --budget 0.4

Built from the very trace it is fed (the simulator constructs it; it is not a daemon
policy). It sees what the live store sees: the managed events only (parameters and
saved activations of at least MIN_MANAGED_BYTES; trace_format.is_managed), and counts
distances in managed reads, as the store's queue does. It combines the two classic
offline rules for prefetching with caching (Cao, Felten, Karlin and Li):

- *Belady eviction*: `predicted_next_use(t)` is the true number of reads until the
  current value of `t` is read; a value that is replaced before it is read (an
  activation packed again next step) is never read, so it is NO_PREDICTION and goes
  first. A parameter's write (the optimizer's update of its host master) does not end
  its value: the store drops the device copy and fetches the updated one.
- *Aggressive prefetching*: the oracle keeps a lookahead window over the future reads
  holding as many distinct tensors as fit in (a fraction of) the device budget, in read
  order. A tensor is requested the moment its read enters the window, so copies are
  issued as early as the budget allows and in the order they are needed (what a FIFO
  copy engine wants). The store's refusal rule (never evict a tensor needed sooner than
  the one being fetched) holds a request back until Belady would admit it.
- A read whose value is first produced on the device (an activation write comes between
  now and the read) is not requested: the write will allocate it.

Hit rate is not monotone in prefetch quality, for two reasons. With a FIFO copy engine a
policy that misses stalls until every queued copy is done, and the accesses after the
stall hit; one that is late waits for its own copy only (a scheduling problem:
Moore-Hodgson's "drop the job that makes others late" is the single-machine analogue).
And the store's own rules can punish prefetching far ahead: a prefetch not read yet can
be evicted only by a write or a miss that waits for it, and every evicted tensor with a
finite prediction is queued again. So the simulator's `oracle` is a small portfolio of
offline strategies (VARIANTS), each a feasible schedule, and keeps the best per trace
(`variant` in the report). The knobs:

- window "reads" (above) or "accesses": activation writes take window space too, so
  prefetches do not run ahead of the allocations that would evict them again;
- fraction: the window holds this share of the budget (1, or 0.5 with the accesses
  window: with a full-duplex link a window of the whole budget runs ahead of what a static
  model needs, and a policy looking 16 reads ahead beat it on the gpt2 and vit samples; the
  whole-budget accesses window it replaced never won alone on the 14 samples and 20
  generated architectures at budgets 0.4 and 0.7, nor did the reads window with horizon
  alone by more than 0.09 pt: the portfolio keeps three strategies, which holds the
  simulator's oracle speed above 200k events/s with gradients in the model);
- drop_late: refuse a prefetch that would arrive after its read even if the compute
  never stalled again, and let the read miss instead (Moore-Hodgson's drop). Under a
  FIFO engine that miss waits for every copy queued before it, so prefetches of reads
  that come after a dropped one are admitted: the miss's stall covers them;
- horizon: predict only the reads inside the window (NO_PREDICTION beyond), as a
  lookahead policy does, so only what the window holds is queued again after an
  eviction or the optimizer step, and what lies beyond it is evicted first (LRU).

How good a bound: each strategy alone is beaten somewhere; the portfolio is an empirical
bound, measured by `benchmarks/oracle_search.py` (docs/oracle.md has the figures and
the cases where it was beaten). Compare it only with simulated figures of the same trace.

All per-event tables are computed with numpy at construction; `observe` is O(1)
amortised plus the requests it returns.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Any, Sequence

import numpy as np

from predictor.interface import INF_POS, NO_PREDICTION, BasePolicy, PolicyError, TensorInfo
from runtime.trace_format import Access, Kind, Phase, Trace

_READ = int(Access.READ)
WINDOWS = ("reads", "accesses")
VARIANTS: tuple[dict, ...] = (
    dict(),  # plain: Belady eviction, aggressive prefetching over the reads
    dict(drop_late=True, horizon=True),
    dict(window="accesses", fraction=0.5, drop_late=True, horizon=True),
)
"""The strategies (OraclePolicy keyword arguments) the simulator tries; it keeps the best per trace."""
# INF_POS (predictor.interface): a position after every event, "never read again".


def compute_deltas(trace: Trace) -> np.ndarray:
    """Compute time before each event of `trace` (all kinds): the time_ns delta from the event
    before, >= 0 (0 for the first). Steps follow each other: the time between one step's last
    event and the next one's first (data, loss, zero_grad) is compute too, as in a live run,
    so a step's compute time is its wall time as recorded."""
    t = np.asarray(trace.column("time_ns"), dtype=np.int64)
    d = np.zeros(len(t), dtype=np.int64)
    if len(t) > 1:
        d[1:] = np.maximum(t[1:] - t[:-1], 0)
    return d


def managed_stream(trace: Trace) -> dict[str, np.ndarray]:
    """The events the device tier sees: those of managed tensors (trace_format.is_managed: a
    parameter or saved activation of at least MIN_MANAGED_BYTES), with the trace's compute time.

    index      position of each managed event in the full trace
    ctime      compute time (ns, no stalls) up to each managed event: the full trace's
               deltas summed, so dropping events drops none of their time
    opt_at     managed positions j before which the optimizer step begins (the first
               OPTIMIZER-phase event of a step, of any kind, comes before j and after j-1)
    opt_pre    compute time up to the optimizer's pre-hook (the event before that first
               OPTIMIZER event) and opt_post: up to that first OPTIMIZER event (its post-hook)
    opt_pos    position of that first OPTIMIZER event in the full trace
    csum       compute time up to every event of the full trace (for events off the stream:
               the simulator's gradients, prefetch.sim_trace)
    """
    mask = trace.managed_tensors()[np.asarray(trace.column("tensor_id"))]
    index = np.flatnonzero(mask)
    csum = np.cumsum(compute_deltas(trace))
    phase = np.asarray(trace.column("phase"))
    steps = np.asarray(trace.column("step"))
    opt = np.flatnonzero(phase == int(Phase.OPTIMIZER))
    if len(opt):
        _, first = np.unique(steps[opt], return_index=True)  # the first optimizer event of each step
        opt = np.sort(opt[first])
    at = np.searchsorted(index, opt)  # the first managed event after the optimizer began
    keep = at < len(index)
    opt, at = opt[keep], at[keep]
    at, first = np.unique(at, return_index=True)  # (several steps without managed events: the first)
    opt = opt[first]
    return {
        "index": index,
        "ctime": csum[index] if len(index) else np.zeros(0, np.int64),
        "opt_at": at,
        "opt_pre": csum[np.maximum(opt - 1, 0)] if len(opt) else np.zeros(0, np.int64),
        "opt_post": csum[opt] if len(opt) else np.zeros(0, np.int64),
        "opt_pos": opt,
        "csum": csum,
    }


def future_tables(tensor_ids: np.ndarray, is_read: np.ndarray, is_write: np.ndarray,
                  num_tensors: int) -> dict[str, np.ndarray]:
    """Per-event tables of the future, all positions as int64 (INF_POS = never). Events
    that are neither reads nor writes (a parameter's host-side update) are transparent.

    value_next_read[i]  next read of tensor_ids[i] after event i, if no write of it comes first
    prev_write[i]       position of the last write of tensor_ids[i] before event i (-1 if none)
    initial_next_read[t] the first read of t if no write of it comes first (its host-side value)
    """
    tids = np.asarray(tensor_ids, dtype=np.int64)
    n = len(tids)
    order = np.lexsort((np.arange(n), tids))
    st = tids[order]
    rd = np.asarray(is_read, dtype=bool)[order]
    wr = np.asarray(is_write, dtype=bool)[order]
    k = np.arange(n, dtype=np.int64)
    big = n
    # smallest sorted index >= k that is a read / a write (crosses groups; checked below)
    suf_r = np.minimum.accumulate(np.where(rd, k, big)[::-1])[::-1] if n else k
    suf_w = np.minimum.accumulate(np.where(wr, k, big)[::-1])[::-1] if n else k

    def same_group(idx: np.ndarray, at: np.ndarray) -> np.ndarray:
        ok = idx < big
        ok[ok] = st[idx[ok]] == st[at[ok]]
        return ok

    nr = np.full(n, big, dtype=np.int64)
    nw = np.full(n, big, dtype=np.int64)
    nr[:-1] = suf_r[1:]
    nw[:-1] = suf_w[1:]
    has_r, has_w = same_group(nr, k), same_group(nw, k)
    ok = has_r & (~has_w | (nw > nr))  # within a group sorted index order == position order
    value_next_read = np.empty(n, dtype=np.int64)
    value_next_read[order] = np.where(ok, order[np.minimum(nr, max(n - 1, 0))], INF_POS)

    pre_w = np.maximum.accumulate(np.where(wr, k, -1)) if n else k
    pw = np.full(n, -1, dtype=np.int64)
    if n > 1:
        cand = pre_w[:-1]  # last write at sorted index <= k-1
        valid = cand >= 0
        valid[valid] = st[cand[valid]] == st[1:][valid]
        pw[1:] = np.where(valid, order[np.maximum(cand, 0)], -1)
    prev_write = np.empty(n, dtype=np.int64)
    prev_write[order] = pw

    initial = np.full(num_tensors, INF_POS, dtype=np.int64)
    if n:
        g = np.flatnonzero(np.concatenate(([True], st[1:] != st[:-1])))  # each group's first sorted index
        r0, w0 = suf_r[g], suf_w[g]
        hr, hw = same_group(r0, g), same_group(w0, g)
        first_ok = hr & (~hw | (w0 > r0))
        initial[st[g[first_ok]]] = order[r0[first_ok]]
    return {"value_next_read": value_next_read, "prev_write": prev_write, "initial_next_read": initial}


def _tables(trace: Trace, window: str) -> dict[str, Any]:
    """What every oracle strategy with this window reads of `trace` (built once per trace: Trace.derived)."""
    ms = managed_stream(trace)
    idx = ms["index"]
    tids = np.asarray(trace.column("tensor_id"), dtype=np.int64)[idx]
    access = np.asarray(trace.column("access"))[idx]
    nbytes = trace.tensor_nbytes()
    kinds = trace.tensor_kinds()
    is_read = access == _READ
    # a parameter's write is the optimizer's update of its host master: no device value
    is_write = ~is_read & (kinds[tids] == int(Kind.ACTIVATION))
    tables = future_tables(tids, is_read, is_write, trace.num_tensors)
    win = np.flatnonzero(is_read if window == "reads" else is_read | is_write)  # window events
    win_index = np.full(len(tids), -1, dtype=np.int64)
    win_index[win] = np.arange(len(win))
    return {
        "managed_bytes": int(nbytes[trace.managed_tensors()].sum()),
        "tids": tids.tolist(), "nbytes": nbytes.tolist(),
        "vnr": tables["value_next_read"].tolist(), "initial": tables["initial_next_read"].tolist(),
        "win_is_read": is_read[win].tolist(), "win_index": win_index.tolist(), "win_t": tids[win].tolist(),
        "win_prev_write": tables["prev_write"][win].tolist(),
        "reads": np.cumsum(is_read).tolist() + [0],  # reads up to each event; [-1]: before the first
        "ctime": ms["ctime"].tolist(),  # compute time up to each event, no stalls
    }


class OraclePolicy(BasePolicy):
    """Perfect future knowledge of one trace: Belady eviction, aggressive in-order prefetching.

    Feed it that trace's managed events in order (the simulator does); anything else is an
    error. Events of other kinds are dropped here too, so it may be built on a full trace.
    """

    name = "oracle"
    paced = True  # its window over future reads is its own (VARIANTS); the tier's does not apply

    def __init__(
        self, trace: Trace, *, budget_bytes: int | None = None, window: str = "reads", drop_late: bool = False,
        fraction: float = 1.0, horizon: bool = False,
    ):
        if window not in WINDOWS:
            raise ValueError(f"oracle window must be one of {WINDOWS}, got {window!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"oracle window fraction must be in (0, 1], got {fraction}")
        self.num_tensors = trace.num_tensors
        shared = trace.derived(("oracle", window), lambda: _tables(trace, window))  # the same for every strategy
        budget = shared["managed_bytes"] if budget_bytes is None else int(budget_bytes)
        self.budget_bytes = int(fraction * budget)
        """Window size: the distinct bytes the oracle looks ahead (`fraction` of the device budget)."""
        self.window = window
        """'reads': the window spans future reads; 'accesses': activation writes take window space too."""
        self.drop_late = drop_late
        """Refuse prefetches that cannot arrive before their read even with no stall (let them miss)."""
        self.horizon = horizon
        """Predict only reads inside the window (NO_PREDICTION beyond it), as a lookahead policy does:
        the executor then queues again only what the window holds (after an eviction or the
        optimizer step), and evicts what lies beyond it first, in LRU order."""
        self.variant = (window + (f"@{fraction:g}" if fraction != 1 else "") + ("+drop-late" if drop_late else "")
                        + ("+horizon" if horizon else ""))
        # Python lists (observe() indexes them once per event), read-only: shared by the strategies
        self._tids, self._nbytes, self._vnr, self._initial = shared["tids"], shared["nbytes"], shared["vnr"], shared["initial"]
        self._win_is_read, self._win_index, self._win_t = shared["win_is_read"], shared["win_index"], shared["win_t"]
        self._win_prev_write, self._reads, self._ctime = shared["win_prev_write"], shared["reads"], shared["ctime"]
        self._started = False

    # -- Policy protocol ---------------------------------------------------------------
    def start(self, tensors: TensorInfo) -> None:
        if tensors.num_tensors != self.num_tensors:
            raise PolicyError(
                f"oracle built for a trace of {self.num_tensors} tensors started on {tensors.num_tensors}"
            )
        self._pos = 0
        self._nxt = list(self._initial)
        self._count = [0] * self.num_tensors
        self._wbytes = 0
        self._front = 0
        self._drops: list[int] = []  # positions of reads whose prefetch was dropped, still ahead
        self._entered: list[int] = []  # horizon: tensors that entered the window (re-keyed) since rekeyed()
        self._pending_out = self._extend(0)
        self._entered = []
        self._started = True

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        i = self._pos
        if not self._started:
            raise PolicyError("oracle: observe() before start()")
        if i >= len(self._tids) or self._tids[i] != tensor_id:
            raise PolicyError(
                f"oracle: managed event {i} is tensor {tensor_id}, but its trace has "
                f"{self._tids[i] if i < len(self._tids) else 'no more events'}; "
                "the oracle must be fed its own trace's managed events, in order"
            )
        self._pos = i + 1
        self._nxt[tensor_id] = self._vnr[i]
        ri = self._win_index[i]
        if ri >= 0:  # a window event
            if ri < self._front:
                c = self._count[tensor_id] - 1
                self._count[tensor_id] = c
                if c == 0:
                    self._wbytes -= self._nbytes[tensor_id]
            else:  # the window had not reached this event (only before the first extension)
                self._front = ri + 1
        front, win_t = self._front, self._win_t
        out: Sequence[int] = ()
        if front < len(win_t):
            t = win_t[front]
            if self._count[t] or self._wbytes + self._nbytes[t] <= self.budget_bytes:
                out = self._extend(i + 1)  # else the window is full (most events): nothing to do
        if self._pending_out:
            out = self._pending_out + list(out)
            self._pending_out = []
        return out

    def predicted_next_use(self, tensor_id: int) -> float:
        """Reads until the current value of `tensor_id` is read (1 = the next read)."""
        d = self._nxt[tensor_id]
        if d >= INF_POS or (self.horizon and not self._count[tensor_id]):
            return NO_PREDICTION
        return float(self._reads[d] - self._reads[self._pos - 1])

    def admit_prefetch(self, tensor_id: int, end_ns: int, now_ns: int, compute_ns: int) -> bool:
        """Policy.admit_prefetch (the simulator, before it issues a prefetch completing at end_ns;
        now_ns: the simulated time; compute_ns: the trace's compute time elapsed, no stalls):
        with drop_late, refuse one that would be late even if the compute never stalled again."""
        if not self.drop_late:
            return True
        j = self._nxt[tensor_id]
        if j >= INF_POS:
            return True
        drops = self._drops
        while drops and drops[0] < self._pos:
            heappop(drops)  # that miss has happened
        if drops and j > drops[0]:
            return True  # read after a dropped one: its miss drains the FIFO queue, this copy included
        if end_ns - now_ns <= self._ctime[j] - compute_ns:
            return True
        heappush(drops, j)
        return False

    def next_read_key(self, tensor_id: int) -> int:
        """Policy.next_read_key, the simulator's fast path: the read count at the next read of `tensor_id` (INF_POS: never).

        It changes only when `tensor_id` itself is observed, and predicted_next_use is this
        minus the reads so far, so the simulator can keep residents in a heap instead of
        asking every resident at each eviction; the victims are the same."""
        d = self._nxt[tensor_id]
        if d >= INF_POS or (self.horizon and not self._count[tensor_id]):
            return INF_POS
        return self._reads[d]

    def rekeyed(self) -> list[int]:
        """Policy.rekeyed, with next_read_key: tensors whose key changed since the last call without being
        observed (with `horizon`, those whose next read entered the window)."""
        out, self._entered = self._entered, []
        return out

    # -- internals ---------------------------------------------------------------------
    def _extend(self, pos: int) -> Sequence[int]:
        """Grow the window over future reads while its distinct bytes fit the budget."""
        front = self._front
        read_t, count, nbytes = self._win_t, self._count, self._nbytes
        out: list[int] = []
        prev_w = self._win_prev_write
        is_read = self._win_is_read
        wbytes, budget, r = self._wbytes, self.budget_bytes, len(read_t)
        while front < r:
            t = read_t[front]
            if count[t] == 0:
                b = nbytes[t]
                if wbytes + b > budget:
                    break
                wbytes += b
                if self.horizon:
                    self._entered.append(t)
                if is_read[front] and prev_w[front] < pos:  # value comes from the host, not from a write ahead
                    out.append(t)
            count[t] += 1
            front += 1
        self._front, self._wbytes = front, wbytes
        return out

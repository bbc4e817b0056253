"""The baselines every learned policy must beat: none, replay (ZeRO-3/FSDP), markov (DeepUM).

    from predictor.policies import make_policy
    policy = make_policy("replay", lookahead=16)

All three subclass predictor.interface.BasePolicy and define `upcoming(k)`: the next k
reads the policy currently predicts, soonest first (offline evaluation scores it). Reads are
events with access == READ; writes are context and never requested.

Replay follows DeepSpeed ZeRO-3's PartitionedParameterCoordinator: the trace is valid
while every access matches it; the first mismatch invalidates it and stops prefetching
for the rest of the step. DeepSpeed then spends one more step recording (INVALID ->
RECORD -> COMPLETE, at `reset_step`); we always record, so the step that diverged
becomes the trace for the next one. That is one step kinder than DeepSpeed, never less.
The trace is also followed across the step boundary (the next step is expected to start
as this one did), where ZeRO-3 only prefetches within a pass.
"""

from __future__ import annotations

from typing import Sequence

from predictor.horizon import Outstanding
from predictor.interface import NO_PREDICTION, BasePolicy, TensorInfo
from runtime.defaults import EVAL_LOOKAHEAD
from runtime.trace_format import Access

_READ = int(Access.READ)


def _check_lookahead(lookahead: int) -> None:
    if lookahead < 1:
        raise ValueError(f"lookahead must be >= 1, got {lookahead}")


class NoPrefetch(BasePolicy):
    """Never prefetches: every access is a demand fetch. The floor of every comparison."""

    name = "none"

    def __init__(self, lookahead: int = EVAL_LOOKAHEAD) -> None:
        self.lookahead = lookahead

    def start(self, tensors: TensorInfo) -> None:
        pass

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        return ()

    def predicted_next_use(self, tensor_id: int) -> float:
        return NO_PREDICTION

    def upcoming(self, k: int) -> list[int]:
        return []


def _cyclic_next_gap(trace: list[int]) -> list[int]:
    """For each position, how many reads later the same id comes again, the trace
    repeating (len(trace) when it comes only at the same place next time)."""
    n = len(trace)
    gap = [n] * n
    nxt: dict[int, int] = {}
    for i in range(2 * n - 1, -1, -1):
        tid = trace[i % n]
        if i < n and tid in nxt:
            gap[i] = nxt[tid] - i
        nxt[tid] = i
    return gap


class Replay(BasePolicy):
    """The previous step's read order, invalidated for the rest of a step on divergence."""

    name = "replay"

    def __init__(self, lookahead: int = EVAL_LOOKAHEAD) -> None:
        _check_lookahead(lookahead)
        self.lookahead = lookahead

    def start(self, tensors: TensorInfo) -> None:
        self.trace_: list[int] = []  # reads of the last complete step
        self.recording_: list[int] = []  # reads of this step so far
        self.pos_ = 0  # index into trace_ of the next expected read
        self.valid_ = False  # trace_ matched every read of this step so far
        self.step_: int | None = None
        self.now_ = 0  # reads observed this session
        self.invalidations_ = 0
        self.pending_ = Outstanding(self.lookahead)
        self.admitted_ = -1  # absolute read index up to which the window has been admitted
        self.next_gap_: list[int] = []

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        if step != self.step_:  # reset_step: the recording becomes the trace
            self.step_ = step
            if self.recording_:
                self.trace_, self.recording_ = self.recording_, []
            self.pos_, self.valid_ = 0, bool(self.trace_)
            self.admitted_ = -1  # the window maps to new positions: admit it whole again
            self.next_gap_ = _cyclic_next_gap(self.trace_)
        if access != _READ:
            return ()
        self.now_ += 1
        self.pending_.consume(tensor_id)
        self.recording_.append(tensor_id)
        if not self.valid_:
            return ()
        if self.pos_ >= len(self.trace_) or self.trace_[self.pos_] != tensor_id:
            self.valid_ = False  # "Invalidate trace cache": no prefetching until next step
            self.invalidations_ += 1
            self.pending_.clear()
            return ()
        self.pos_ += 1
        now = self.now_
        if self.admitted_ < now:  # a fresh trace this step: admit the whole window once
            window = self.upcoming(self.lookahead)
            self.admitted_ = now + len(window)
            return self.pending_.admit(window, range(now + 1, now + 1 + len(window)), now)
        # The window slid by one read: only positions past the last admitted can be new,
        # and an id already outstanding keeps its sooner due. O(1) per read, not O(lookahead).
        # One exception: the id just read may come again inside the window (forward, then
        # backward); that later position was passed over while it was outstanding.
        out: list[int] = []
        gap = self.next_gap_[self.pos_ - 1]
        if gap <= self.lookahead and now + gap <= self.admitted_:
            out.extend(self.pending_.admit((tensor_id,), (now + gap,), now))
        due, trace, n = self.pending_.due, self.trace_, len(self.trace_)
        stale_before = now - self.lookahead
        for k in range(self.admitted_ + 1, now + self.lookahead + 1):
            tid = trace[(self.pos_ + k - now - 1) % n]
            old = due.get(tid)
            if old is None or old < stale_before:
                out.extend(self.pending_.admit((tid,), (k,), now))
        self.admitted_ = now + self.lookahead
        return out

    def upcoming(self, k: int) -> list[int]:
        if not self.valid_:
            return []
        n = len(self.trace_)  # past the end, the next step is expected to start like this one
        return [self.trace_[(self.pos_ + i) % n] for i in range(min(k, self.lookahead))]

    def predicted_next_use(self, tensor_id: int) -> float:
        # O(1): the window's due times are kept by `pending_` (eviction asks this a lot)
        if not self.valid_:
            return NO_PREDICTION
        when = self.pending_.due.get(tensor_id)  # Outstanding.next_use, inlined: the hottest call
        now = self.now_
        if when is None or when < now - self.lookahead:
            return NO_PREDICTION
        return float(max(1, when - now))


class Markov(BasePolicy):
    """A bounded successor table learnt online (DeepUM's correlation table): from the
    last read, follow the most frequent successor, up to the lookahead."""

    name = "markov"

    def __init__(self, lookahead: int = EVAL_LOOKAHEAD, num_successors: int = 4) -> None:
        _check_lookahead(lookahead)
        if num_successors < 1:
            raise ValueError(f"num_successors must be >= 1, got {num_successors}")
        self.lookahead = lookahead
        self.num_successors = num_successors

    def start(self, tensors: TensorInfo) -> None:
        self.counts_: dict[int, dict[int, int]] = {}  # tensor -> {successor: count}, <= num_successors
        self.best_: dict[int, int] = {}  # tensor -> its most frequent successor
        self.prev_: int | None = None
        self.chain_: list[int] = []
        self.now_ = 0
        self.pending_ = Outstanding(self.lookahead)

    def _learn(self, a: int, b: int) -> None:
        succ = self.counts_.setdefault(a, {})
        if b not in succ and len(succ) >= self.num_successors:
            del succ[min(succ, key=succ.__getitem__)]  # bounded: drop the rarest successor
        succ[b] = succ.get(b, 0) + 1
        best = self.best_.get(a)
        if best is None or best not in succ or succ[b] >= succ[best]:
            self.best_[a] = b  # ties go to the most recent

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        if access != _READ:
            return ()
        self.now_ += 1
        self.pending_.consume(tensor_id)
        if self.prev_ is not None:
            self._learn(self.prev_, tensor_id)
        self.prev_ = tensor_id
        chain: list[int] = []
        seen = {tensor_id}
        a = tensor_id
        for _ in range(self.lookahead):
            a = self.best_.get(a, -1)
            if a < 0 or a in seen:
                break
            chain.append(a)
            seen.add(a)
        self.chain_ = chain
        return self.pending_.admit(chain, range(self.now_ + 1, self.now_ + 1 + len(chain)), self.now_)

    def upcoming(self, k: int) -> list[int]:
        return self.chain_[:k]

    def predicted_next_use(self, tensor_id: int) -> float:
        return self.pending_.next_use(tensor_id, self.now_)

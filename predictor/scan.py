"""`scan`: replay, except inside a loop that re-reads more bytes than the device holds.

    prefetch simulate datasets/samples/generate-train --policy scan --budget 0.4
    policy = make_policy("scan:room=2.0")

Generation (`generate()` in generate-train) reads every parameter once per token: a
cyclic scan of L bytes with a budget B < L. LRU-like eviction, and Belady with prefetching
too (it evicts the tensor just read and streams everything again), copies all L bytes
every iteration: the step is link-bound. The classic answer for a cyclic scan larger than
the cache (LIRS's and ARC's scan resistance; DeepSpeed-Inference's and FlexGen's weight
streaming with a resident fraction) is to keep a fixed part of the loop resident and
stream only the rest, once per iteration: L - pinned bytes cross the link instead of L.

How it works, per read (O(1) except when a loop is found):
- *Detection.* Each read's gap to the previous read of the same tensor. A run of `period`
  consecutive reads in one phase that all have the same gap `period` is a loop of `period`
  distinct tensors that repeated once whole. It is *oversized* when its bytes exceed the
  tier's budget (`bind_tier`); a loop that fits is left to replay (LRU and replay already
  keep it). The loop starts where a micro-step starts (generation: the token's first read).
- *Pinned prefix.* Walking the loop in order, a tensor is pinned while the pinned bytes
  stay within budget - room x the loop's largest tensor (room for the streamed one being
  read and the next one in flight).
- *Scan mode* (a read of a loop tensor in the loop's phase): a pinned tensor read since
  the last optimizer step is predicted at 1 read (`KEEP`): the tier evicts it last and no
  prefetch may evict it. Every other loop tensor is predicted at its distance in loop
  order when it is within the window (the next min(lookahead, period - 1) reads), else
  NO_PREDICTION: a streamed tensor just read is evicted first and not queued again (a
  finite prediction would make the tier re-request it and ping-pong copies). Requests are
  the window's tensors, in loop order, as they enter it.
- *Elsewhere* (another phase, a tensor outside the loop, no oversized loop): an inner
  `Replay` decides. It sees every event except the scan-mode reads, so its recorded step
  is the part of the step around the loop (training forward, backward, optimizer), which
  repeats from step to step even when the number of loop iterations does not.

Without an oversized loop the inner replay sees every event and this *is* replay.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from predictor.baselines import Replay, _check_lookahead
from predictor.interface import NO_PREDICTION, BasePolicy, TensorInfo, TierView
from runtime.defaults import EVAL_LOOKAHEAD
from runtime.trace_format import Access, Phase

_READ = int(Access.READ)
_OPTIMIZER = int(Phase.OPTIMIZER)
KEEP = 1.0
"""A held pinned tensor's predicted next use: no later than any request's due, so the tier's
refusal rule never lets a prefetch evict it, and eviction takes it last."""


class Scan(BasePolicy):
    """Replay, plus a fixed resident prefix and streaming for loops bigger than the budget."""

    name = "scan"

    def __init__(self, lookahead: int = EVAL_LOOKAHEAD, room: float = 2.0, max_period: int = 4096) -> None:
        _check_lookahead(lookahead)
        if not room >= 0:
            raise ValueError(f"room must be >= 0, got {room}")
        if max_period < 2:
            raise ValueError(f"max_period must be >= 2, got {max_period}")
        self.lookahead, self.room, self.max_period = lookahead, room, max_period
        self.tier_: TierView | None = None

    def bind_tier(self, tier: TierView) -> None:
        self.tier_ = tier  # read lazily: a live store fixes its budget after the first step

    # -- session state -----------------------------------------------------------------------
    def start(self, tensors: TensorInfo) -> None:
        self.inner_ = Replay(self.lookahead)
        self.inner_.start(tensors)
        n = tensors.num_tensors
        self.nb_: list[int] = tensors.nbytes.tolist()
        self.last_: list[int] = [-1] * n  # read index of each tensor's previous read
        self.pos_in_: list[int] = [-1] * n  # position in the loop, -1 outside it
        self.pinned_ = bytearray(n)
        self.held_ = bytearray(n)  # pinned and read since the last optimizer step: resident
        self.held_ids_: list[int] = []  # those ids, to release them without a pass over every tensor
        self.hist_: deque[tuple[int, int]] = deque(maxlen=self.max_period)  # (tid, micro_step) of the last reads
        self.reads_ = 0
        self.gap_ = 0  # the gap shared by the current run of reads
        self.run_ = 0  # reads in that run
        self.run_phase_ = -1
        self.step_: int | None = None
        self.loop_: list[int] = []  # the oversized loop, in order (empty: none)
        self.loop_phase_ = -1
        self.sized_for_: int | None = None  # the budget the pinned set was sized for
        self.pinned_bytes_ = 0
        self.active_ = False  # the last read was a scan-mode read
        self.pos_ = 0  # its loop position
        self.window_ = 0  # loop reads ahead that are requested
        self.loops_found_ = 0

    def extend(self, tensors: TensorInfo, first_id: int) -> None:
        self._grow(first_id + tensors.num_tensors)
        self.nb_[first_id:first_id + tensors.num_tensors] = tensors.nbytes.tolist()
        self.inner_.extend(tensors, first_id)

    def _grow(self, n: int) -> None:
        """Room for ids below `n` (an id the table did not have: size unknown, 0)."""
        grow = n - len(self.nb_)
        if grow > 0:
            self.nb_.extend([0] * grow)
            self.last_.extend([-1] * grow)
            self.pos_in_.extend([-1] * grow)
            self.pinned_.extend(bytes(grow))
            self.held_.extend(bytes(grow))

    # -- the loop ----------------------------------------------------------------------------
    def _budget(self) -> int | None:
        return None if self.tier_ is None else self.tier_.budget_bytes

    def _found(self, period: int, phase: int) -> None:
        """The last `period` reads repeated whole: keep them as the loop if they do not fit."""
        budget = self._budget()
        recent = list(self.hist_)[-period:]
        tids = [t for t, _ in recent]
        if budget is None or self._fits(tids, budget):
            return  # fits (or no budget yet): LRU and replay keep it
        start = next((j for j in range(1, period) if recent[j][1] != recent[j - 1][1]), 0)
        loop = tids[start:] + tids[:start]  # from the first read of a micro-step
        if loop == self.loop_ and phase == self.loop_phase_:
            return
        self._forget()
        self.loop_, self.loop_phase_ = loop, phase
        for j, t in enumerate(loop):
            self.pos_in_[t] = j
        self.window_ = min(self.lookahead, period - 1)
        self.loops_found_ += 1
        self.sized_for_ = None
        self._size(budget)

    def _fits(self, tids: list[int], budget: int) -> bool:
        """The regime's test: a loop whose bytes the budget holds is no scan problem."""
        return sum(self.nb_[t] for t in tids) <= budget

    def _forget(self) -> None:
        """No oversized loop any more (another one was found, or the budget now holds it)."""
        for t in self.loop_:
            self.pos_in_[t] = -1
            self.pinned_[t] = 0
        self.loop_, self.loop_phase_, self.pinned_bytes_, self.active_ = [], -1, 0, False

    def _size(self, budget: int) -> None:
        """Pin loop tensors, in loop order, within budget - room x the largest one."""
        nb, pinned = self.nb_, self.pinned_
        if self._fits(self.loop_, budget):
            self._forget()  # the budget grew: the loop fits, replay decides
            return
        avail = budget - self.room * max(nb[t] for t in self.loop_)
        total = 0
        for t in self.loop_:
            pinned[t] = 0
        for t in self.loop_:
            if total + nb[t] <= avail:
                pinned[t] = 1
                total += nb[t]
        self.pinned_bytes_, self.sized_for_ = total, budget

    @property
    def oversized(self) -> bool:
        """An oversized loop has been found (the regime this policy exists for)."""
        return bool(self.loop_)

    def pinned_ids(self) -> list[int]:
        """The loop's pinned tensors, in loop order."""
        return [t for t in self.loop_ if self.pinned_[t]]

    # -- the hooks ---------------------------------------------------------------------------
    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        if step != self.step_ or phase == _OPTIMIZER:  # the optimizer drops every parameter's device copy
            if step != self.step_:
                self.step_ = step
            if self.held_ids_:
                for u in self.held_ids_:
                    self.held_[u] = 0
                self.held_ids_.clear()
        if access != _READ:
            self.active_ = False
            return self.inner_.observe(step, micro_step, phase, access, tensor_id)
        t = tensor_id
        if t >= len(self.nb_):
            self._grow(t + 1)
        # detection: a run of `period` reads in one phase, each `period` after its previous read
        self.reads_ = r = self.reads_ + 1
        gap = r - self.last_[t] if self.last_[t] >= 0 else 0
        self.last_[t] = r
        self.hist_.append((t, micro_step))
        if gap == self.gap_ and phase == self.run_phase_ and gap > 1:
            self.run_ += 1
            if self.run_ % gap == 0 and gap <= self.max_period and not (
                    gap == len(self.loop_) and self.pos_in_[t] >= 0 and phase == self.loop_phase_):
                self._found(gap, phase)  # a lap repeated whole (checked each lap: the budget may come later)
        else:
            self.gap_, self.run_, self.run_phase_ = gap, 1, phase
        j = self.pos_in_[t]
        if j < 0 or phase != self.loop_phase_:
            self.active_ = False
            return self.inner_.observe(step, micro_step, phase, access, t)
        budget = self._budget()
        if budget is not None and budget != self.sized_for_:
            self._size(budget)
            if not self.loop_:
                return self.inner_.observe(step, micro_step, phase, access, t)
        # scan mode
        if self.pinned_[t] and not self.held_[t]:
            self.held_[t] = 1
            self.held_ids_.append(t)
        resumed = not self.active_ or j != (self.pos_ + 1) % len(self.loop_)  # entered, or skipped ahead
        self.active_, self.pos_ = True, j
        loop, n, w = self.loop_, len(self.loop_), self.window_
        pinned, held = self.pinned_, self.held_
        if resumed:
            ks = range(1, w + 1)  # the whole window enters
        else:
            ks = (w,)  # the window slid by one read
        out = []
        for k in ks:
            u = loop[(j + k) % n]
            if not (pinned[u] and held[u]):
                out.append(u)
        return out

    def predicted_next_use(self, tensor_id: int) -> float:
        if not self.active_:
            return self.inner_.predicted_next_use(tensor_id)
        j = self.pos_in_[tensor_id] if tensor_id < len(self.pos_in_) else -1
        if j < 0:
            return self.inner_.predicted_next_use(tensor_id)
        if self.pinned_[tensor_id] and self.held_[tensor_id]:
            return KEEP
        d = (j - self.pos_) % len(self.loop_)
        return float(d) if 0 < d <= self.window_ else NO_PREDICTION

    def upcoming(self, k: int) -> list[int]:
        if not self.active_:
            return self.inner_.upcoming(k)
        loop, n = self.loop_, len(self.loop_)
        return [loop[(self.pos_ + i) % n] for i in range(1, min(k, self.window_) + 1)]

"""`stride:k=N`: the previous step's reads by position, each asked for k reads ahead.

    policy = make_policy("stride:k=2")

ChampSim's next-line prefetcher at distance k, over tensors: the n-th read of a step is
assumed to be the n-th read of the previous step, so at read n it requests the previous
step's read n + k (past the end: the next step starts like this one did). It never
invalidates (replay does): a diverged step misaligns it until the next one. It is also
the smallest complete policy, the template for a new one (docs/predictor.md).
"""

from __future__ import annotations

from typing import Sequence

from predictor.interface import NO_PREDICTION, BasePolicy, TensorInfo
from runtime.defaults import EVAL_LOOKAHEAD
from runtime.trace_format import Access

_READ = int(Access.READ)


class Stride(BasePolicy):
    """At read n of a step, prefetch read n + k of the previous step."""

    name = "stride"

    def __init__(self, lookahead: int = EVAL_LOOKAHEAD, k: int = 1) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.lookahead, self.k = lookahead, k

    def start(self, tensors: TensorInfo) -> None:
        self.last_: list[int] = []  # reads of the last complete step
        self.this_: list[int] = []  # reads of this step so far
        self.step_: int | None = None
        self.reads_ = 0  # reads this session
        self.due_: dict[int, int] = {}  # requested id -> the read count it is expected at

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        if step != self.step_:
            self.step_ = step
            if self.this_:
                self.last_, self.this_ = self.this_, []
        if access != _READ:
            return ()
        self.reads_ += 1
        self.due_.pop(tensor_id, None)
        self.this_.append(tensor_id)
        if not self.last_:
            return ()
        nxt = self.last_[(len(self.this_) - 1 + self.k) % len(self.last_)]
        self.due_[nxt] = self.reads_ + self.k
        return (nxt,)

    def predicted_next_use(self, tensor_id: int) -> float:
        due = self.due_.get(tensor_id)
        if due is None or due < self.reads_ - self.lookahead:  # never asked for, or long overdue
            return NO_PREDICTION
        return float(max(1, due - self.reads_))

"""What a policy has already asked for: requested ids not yet read, with when they are due.

Every policy keeps one `Outstanding`: it turns "these ids should be resident soon" into
"these ids are *new* requests" (the interface returns only ids entering the horizon),
and it answers predicted_next_use for eviction. Bounded: entries leave when their
tensor is read, and a purge drops those long overdue (a wrong prediction).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from predictor.interface import NO_PREDICTION


class Outstanding:
    """Requested tensor ids -> the read index they are expected at."""

    __slots__ = ("lookahead", "due", "_max_size")

    def __init__(self, lookahead: int) -> None:
        self.lookahead = lookahead
        self.due: dict[int, int] = {}
        self._max_size = 8 * lookahead + 64

    def clear(self) -> None:
        self.due.clear()

    def consume(self, tensor_id: int) -> None:
        """`tensor_id` was read: its request is used up."""
        self.due.pop(tensor_id, None)

    def admit(self, ids: Sequence[int], dues: Iterable[int], now: int) -> list[int]:
        """Mark `ids` (soonest first) as wanted by read index `dues`; return those not
        already outstanding, or outstanding but overdue by more than the lookahead."""
        new: list[int] = []
        due = self.due
        stale_before = now - self.lookahead
        seen: set[int] = set()
        for tid, when in zip(ids, dues):
            if tid in seen:
                continue  # a window longer than a step lists a tensor twice: the sooner counts
            seen.add(tid)
            old = due.get(tid)
            if old is None or old < stale_before:
                new.append(tid)
            due[tid] = when
        if len(due) > self._max_size:
            self.due = {t: d for t, d in due.items() if d >= stale_before}
        return new

    def next_use(self, tensor_id: int, now: int) -> float:
        """Reads until `tensor_id` is expected (>= 1), NO_PREDICTION if not requested."""
        when = self.due.get(tensor_id)
        if when is None or when < now - self.lookahead:
            return NO_PREDICTION
        return float(max(1, when - now))

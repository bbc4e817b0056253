"""Router hints as a trace keeps them, so a simulation of it gives each where the run took it.

Router hooks (runtime.routers) hint between two events. A trace keeps every hint in its
manifest under `router_hints`: `at[i]` is the number of events the trace held when hint i
came (so it comes right before event `at[i]` of the trace), `time_ns[i]` when, by the clock
of the trace's events, `want[i]` and `skip[i]` its tensor ids. The recorder (runtime.recorder)
and a prefetched run's own trace (runtime.live_trace) both keep them. The simulator
(prefetch.sim_trace) gives hint i to its tier before the first managed event at or after
`at[i]`, at that time, through the same DeviceTier.hint a live run calls, so the two decide
alike (the copies a hint starts start then).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

MANIFEST_KEY = "router_hints"
_FIELDS = ("at", "time_ns", "want", "skip")

Entry = tuple[int, int, list[int], list[int]]
"""(at, time_ns, want, skip): one hint as a trace keeps it."""


class HintLog:
    """A trace keeper's hints: `log(want, skip)` records one at the keeper's event count and clock."""

    def __init__(self, events: Callable[[], int], clock: Callable[[], int]):
        self.events = events
        self.clock = clock
        self.entries: list[Entry] = []

    def log(self, want: Sequence[int], skip: Sequence[int]) -> None:
        self.entries.append((self.events(), self.clock(), list(want), list(skip)))

    def as_manifest(self) -> dict[str, Any]:
        return {name: [e[k] for e in self.entries] for k, name in enumerate(_FIELDS)}


def from_manifest(obj: Any, source: str, num_events: int, num_tensors: int) -> list[Entry]:
    """The hints a trace manifest keeps, in order; a one-line ValueError naming `source` when
    malformed (unequal lists, a hint past the last event or out of order, an id past the tensor table)."""
    where = f"{source}: {MANIFEST_KEY}"
    ok = isinstance(obj, dict) and all(isinstance(obj.get(k), list) for k in _FIELDS)
    if not ok or len({len(obj[k]) for k in _FIELDS}) != 1:
        raise ValueError(f"{where} must be {{at: [int, ...], time_ns: [int, ...], want: [[int, ...], ...], "
                         "skip: [[int, ...], ...]}} of equal lengths")
    out: list[Entry] = []
    last = 0
    for i, (at, t, want, skip) in enumerate(zip(*(obj[k] for k in _FIELDS))):
        if type(at) is not int or not last <= at <= num_events:
            raise ValueError(f"{where}: hint {i} is at event {at!r}; expected an int from {last} (the previous "
                             f"hint's) to {num_events} (the trace's events)")
        if type(t) is not int:
            raise ValueError(f"{where}: hint {i} has time_ns {t!r}; expected an int")
        for ids in (want, skip):
            if not isinstance(ids, list) or not all(type(x) is int and 0 <= x < num_tensors for x in ids):
                raise ValueError(f"{where}: hint {i} must list tensor ids in 0..{num_tensors - 1}")
        out.append((at, t, want, skip))
        last = at
    return out

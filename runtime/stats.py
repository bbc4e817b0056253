"""One statistics record for every prefetch executor: the simulator and the live runtime.

Warm-up is dropped the ChampSim way: snapshot at the end of warm-up, subtract at the
end (`final - warm`). Late hits are counted apart from hits, because folding them in
hides exactly the timing we tune.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class AccessStats:
    """Counters over reads of managed tensors (writes allocate; they are not accesses)."""

    accesses: int = 0
    hits: int = 0  # resident, copy complete
    late: int = 0  # copy in flight: waited for it
    misses: int = 0  # absent: fetched synchronously
    stall_ns: int = 0  # time the compute stream waited (late waits + miss fetches)
    bytes_copied: int = 0  # host-to-device bytes, prefetches and demand fetches
    bytes_written_back: int = 0  # device-to-host bytes for evicted dirty tensors
    prefetch_issued: int = 0
    prefetch_used: int = 0  # issued prefetches whose tensor was read before eviction
    evictions: int = 0
    steps: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0

    @property
    def accuracy(self) -> float:
        """Used / issued prefetches."""
        return self.prefetch_used / self.prefetch_issued if self.prefetch_issued else 0.0

    @property
    def coverage(self) -> float:
        """Share of accesses served by a prefetch, on time or late."""
        return (self.hits + self.late) / self.accesses if self.accesses else 0.0

    def snapshot(self) -> "AccessStats":
        return dataclasses.replace(self)

    def __sub__(self, other: "AccessStats") -> "AccessStats":
        return AccessStats(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in dataclasses.fields(self)}
        )

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stall_s"] = self.stall_ns / 1e9
        d["hit_rate"] = self.hit_rate
        d["accuracy"] = self.accuracy
        d["coverage"] = self.coverage
        return d

    def summary(self) -> str:
        return (
            f"hit {self.hit_rate:6.2%}  late {self.late}  miss {self.misses}  "
            f"stall {self.stall_ns / 1e9:.3f}s  copied {self.bytes_copied / 2**20:.1f} MiB  "
            f"accuracy {self.accuracy:.2%} ({self.prefetch_used}/{self.prefetch_issued})"
        )

"""What run a trace is: its workload, its seed and a hash of each step's access order.

    from runtime.trace_identity import trace_identity
    trace_identity(load_trace("datasets/samples/moe/train"))
    # {"workload": "moe", "seed": 0, "step_order_hashes": ["3f2a...", ...]}

A learned policy evaluated on the run it was trained on scores well for the wrong
reason (predictor.provenance decides when that is so). The seed says it when it is
known; the step-order hashes say it when it is not: a re-recording of a run has the
same order of accesses, step by step, whatever the file names or event counts.

The hash of a step covers the MANAGED stream (trace_format.is_managed: what every
policy sees), in order, one record per event: an 8-byte hash of the tensor's KEY (not
its id: ids depend on the order tensors were first seen, keys are stable across runs),
the phase and the access. The same code hashes a trace on disk, the trace writer's
batches as they are written (runtime.trace_writer) and a live run (runtime.prefetcher),
so the three agree byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

import numpy as np

from runtime.trace_format import Trace, is_managed

IDENTITY_KEY = "identity"
"""The manifest key holding {"workload", "seed", "step_order_hashes"}."""
DIGEST_BYTES = 8
"""Size of one step's hash (hex string of 16 characters)."""

# One record per managed event: key hash, phase, access (packed, little-endian).
_RECORD = np.dtype([("key", "<u8"), ("phase", "u1"), ("access", "u1")])


def key_hash(key: str) -> int:
    """A stable 64-bit hash of a tensor key (blake2b, not Python's salted hash())."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """(n,) uint64: key_hash of every key, in order."""
    return np.fromiter((key_hash(k) for k in keys), dtype=np.uint64, count=len(keys))


def event_records(key_hash_of_event: np.ndarray, phase: np.ndarray, access: np.ndarray) -> bytes:
    """The bytes a step's hash is taken over, for events in order (all managed)."""
    rec = np.empty(len(key_hash_of_event), dtype=_RECORD)
    rec["key"] = key_hash_of_event
    rec["phase"] = phase
    rec["access"] = access
    return rec.tobytes()


class StepOrderHasher:
    """Accumulates per-step hashes over events given in order, in any number of batches.

    Batches may split a step anywhere: blake2b over concatenated bytes is the same as
    over the whole, so a streamed trace hashes like the trace read back."""

    def __init__(self) -> None:
        self._key = np.zeros(0, dtype=np.uint64)  # per tensor id
        self._managed = np.zeros(0, dtype=bool)  # per tensor id
        self._steps: dict[int, Any] = {}  # step -> blake2b object

    def add_tensors(self, rows: Iterable[dict[str, Any]]) -> None:
        """Tensor rows (tensor_id, key, kind, nbytes), as in the trace's tensor table."""
        rows = list(rows)
        if not rows:
            return
        top = max(int(r["tensor_id"]) for r in rows) + 1
        if top > len(self._key):
            self._key = np.concatenate([self._key, np.zeros(top - len(self._key), np.uint64)])
            self._managed = np.concatenate([self._managed, np.zeros(top - len(self._managed), bool)])
        for r in rows:
            tid = int(r["tensor_id"])
            self._key[tid] = key_hash(str(r["key"]))
            self._managed[tid] = is_managed(int(r["kind"]), int(r["nbytes"]))

    def set_tensors(self, keys: np.ndarray, managed: np.ndarray) -> None:
        """Per tensor id: the key hashes (key_hashes) and whether it is managed."""
        self._key = np.asarray(keys, dtype=np.uint64)
        self._managed = np.asarray(managed, dtype=bool)

    def add_events(self, step: np.ndarray, phase: np.ndarray, access: np.ndarray, tensor_id: np.ndarray,
                   *, all_managed: bool = False) -> None:
        """Events in order (numpy columns); unmanaged ones are skipped unless all_managed."""
        tensor_id = np.asarray(tensor_id, dtype=np.int64)
        if not len(tensor_id):
            return
        step, phase, access = np.asarray(step), np.asarray(phase), np.asarray(access)
        if not all_managed:
            known = tensor_id < len(self._managed)
            keep = known.copy()
            keep[known] = self._managed[tensor_id[known]]
            step, phase, access, tensor_id = step[keep], phase[keep], access[keep], tensor_id[keep]
            if not len(tensor_id):
                return
        data_key = self._key[tensor_id]
        bounds = np.flatnonzero(np.diff(step)) + 1  # runs of equal step (steps come in order)
        for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(step)]))):
            self.add_step(int(step[lo]), data_key[lo:hi], phase[lo:hi], access[lo:hi])

    def add_step(self, step: int, key_hash_of_event: np.ndarray, phase: np.ndarray, access: np.ndarray) -> None:
        """Managed events of one step, in order, by key hash (a live run's, which has keys, not a table)."""
        h = self._steps.get(step)
        if h is None:
            h = self._steps[step] = hashlib.blake2b(digest_size=DIGEST_BYTES)
        h.update(event_records(key_hash_of_event, phase, access))

    def hashes(self) -> list[str]:
        """Hex hash of every step from 0 to the last one with a managed event (a step
        without any gets the hash of nothing)."""
        if not self._steps:
            return []
        empty = hashlib.blake2b(digest_size=DIGEST_BYTES).hexdigest()
        return [self._steps[s].hexdigest() if s in self._steps else empty for s in range(max(self._steps) + 1)]


def step_order_hashes(trace: Trace) -> list[str]:
    """The per-step access-order hashes of a trace, computed from its events."""
    hasher = StepOrderHasher()
    hasher.set_tensors(key_hashes(trace.keys), trace.managed_tensors())
    if trace.num_events:
        hasher.add_events(trace.column("step"), trace.column("phase"), trace.column("access"), trace.column("tensor_id"))
    return hasher.hashes()


def trace_identity(trace: Trace) -> dict[str, Any]:
    """{"workload", "seed", "step_order_hashes"} of a trace: the manifest's when the
    recorder stored it (and the trace is complete), else computed from the events (traces
    recorded before identities existed, or cut short)."""
    stored = trace.manifest.get(IDENTITY_KEY)
    if isinstance(stored, dict) and isinstance(stored.get("step_order_hashes"), list) and not trace.truncated:
        return {"workload": stored.get("workload", trace.manifest.get("workload")),
                "seed": stored.get("seed", trace.manifest.get("seed")),
                "step_order_hashes": [str(h) for h in stored["step_order_hashes"]]}  # fmt: skip
    return {"workload": trace.manifest.get("workload"), "seed": trace.manifest.get("seed"),
            "step_order_hashes": step_order_hashes(trace)}  # fmt: skip

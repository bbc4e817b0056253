"""The one interface every prefetch policy implements: learned, baselines and oracle.

The simulator (prefetch.simulate), the daemon (prefetch.daemon) and offline evaluation
(predictor.evaluate) all drive a policy the same way, so their figures compare directly:

    policy.start(tensors)                       # once per trace / run / daemon session
    for each access, in order:
        requests = policy.observe(step, micro_step, phase, access, tensor_id)
        # the executor issues prefetches for `requests` (soonest first), skipping
        # tensors already resident or in flight, as far as budget and link allow
    policy.predicted_next_use(tensor_id)        # optional; eviction asks for it

Like ChampSim's prefetcher plug-ins, a policy only *decides*; the executor acts and
may refuse (budget full). `observe` returns only the new requests this access causes
(ids entering the policy's lookahead horizon), not its whole window each time: that
keeps a step of a large model cheap to simulate and small on the wire.

Arguments are plain ints rather than an event object: observe() runs once per access
(hundreds of thousands per second in the simulator) and an allocation per call shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

NO_PREDICTION = float("inf")


@dataclass(frozen=True)
class TensorInfo:
    """What a policy may know about the managed tensors: the trace's tensor table as arrays.

    Index i describes tensor id i (ids are dense). Policies use it for context
    (kind, layer, module) and sizes; it is built from a Trace or from a daemon hello.
    """

    keys: tuple[str, ...]
    kinds: np.ndarray  # int8, trace_format.Kind
    nbytes: np.ndarray  # int64
    layers: np.ndarray  # int16, -1 if none
    modules: tuple[str, ...]

    @property
    def num_tensors(self) -> int:
        return len(self.keys)

    @classmethod
    def from_table(cls, table) -> "TensorInfo":  # table: pyarrow.Table in TENSOR_SCHEMA
        order = np.argsort(table.column("tensor_id").to_numpy())
        keys = table.column("key").to_pylist()
        modules = table.column("module").to_pylist()
        return cls(
            keys=tuple(keys[i] for i in order),
            kinds=table.column("kind").to_numpy()[order].astype(np.int8),
            nbytes=table.column("nbytes").to_numpy()[order].astype(np.int64),
            layers=table.column("layer").to_numpy()[order].astype(np.int16),
            modules=tuple(modules[i] for i in order),
        )


@runtime_checkable
class Policy(Protocol):
    """Observes accesses in order and answers which tensor ids to prefetch next."""

    name: str

    def start(self, tensors: TensorInfo) -> None:
        """A new session begins (a trace, a run, a daemon client); forget per-run state
        that refers to tensor ids, keep what was learned offline."""
        ...

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        """Record one access; return the tensor ids to prefetch because of it, soonest
        needed first. Called for every access (reads and writes) of every phase."""
        ...

    def predicted_next_use(self, tensor_id: int) -> float:
        """Predicted number of accesses until `tensor_id` is read again (NO_PREDICTION
        when unknown). Eviction drops the largest; policies without a view return
        NO_PREDICTION for all and the executor falls back to LRU."""
        ...


class PolicyError(ValueError):
    """A policy name or model directory that cannot be used."""

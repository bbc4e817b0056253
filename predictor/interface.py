"""The one interface every prefetch policy implements: learned, baselines and oracle.

The simulator (prefetch.simulate), the daemon (prefetch.daemon) and offline evaluation
(predictor.evaluate) all drive a policy the same way, so their figures compare directly:

    policy.start(tensors)                       # once per trace / run / daemon session
    for each access, in order:
        requests = policy.observe(step, micro_step, phase, access, tensor_id)
        # the executor issues prefetches for `requests` (soonest first), skipping
        # tensors already resident or in flight, as far as budget and link allow
    policy.predicted_next_use(tensor_id)        # eviction asks for it (default: no view, LRU)

`Policy` below declares every hook an executor may call, each with when it is called and
what its default means; `BasePolicy` supplies the defaults, so a new policy writes
`start` and `observe` and inherits the rest (predictor/stride.py is the smallest example).

Like ChampSim's prefetcher plug-ins, a policy only *decides*; the executor acts and
may refuse (budget full). `observe` returns only the new requests this access causes
(ids entering the policy's lookahead horizon), not its whole window each time: that
keeps a step of a large model cheap to simulate and small on the wire.

Arguments are plain ints rather than an event object: observe() runs once per access
(hundreds of thousands per second in the simulator) and an allocation per call shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # numpy is imported where used: the CLI reads the policy registry at startup
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
        import numpy as np

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
    """Every hook an executor (simulator, live store, daemon, offline evaluation) may call.

    A policy only decides; the executor acts. `start` and `observe` are what every policy
    must write; the other hooks have defaults in `BasePolicy`, which every policy
    subclasses, so executors call them all directly and never probe. A hook that exists
    only to make the simulator faster (`admit_prefetch`, `next_read_key`/`rekeyed`) is
    used only when the policy overrides it (`overrides`, checked once per run, not per event).
    """

    name: str
    """The registry name (`predictor.policies.POLICIES`), as reports print it."""
    served_by: str | None
    """What actually serves when it is not `name` (a daemon's fallback); None: `name` serves."""
    note: str | None
    """One line for the live report (`policy_note`): where predictions come from; None: nothing to say."""
    variant: str | None
    """Which strategy of a portfolio this instance is (the oracle's), for the simulator's report."""
    paced: bool
    """The policy bounds by bytes how far ahead it requests (the oracle's window), so the
    tier's own prefetch window (runtime.defaults.AHEAD_SHARE) does not apply to it."""

    def start(self, tensors: TensorInfo) -> None:
        """A new session begins (a trace, a run, a daemon client); forget per-run state
        that refers to tensor ids, keep what was learned offline. Called once, before any observe."""
        ...

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        """Record one access; return the tensor ids to prefetch because of it, soonest
        needed first. Called for every managed access (reads and writes) of every phase."""
        ...

    def predicted_next_use(self, tensor_id: int) -> float:
        """Predicted number of reads until `tensor_id` is read again (NO_PREDICTION when
        unknown). Eviction drops the largest; the default, NO_PREDICTION for all, makes
        every executor fall back to LRU."""
        ...

    def upcoming(self, k: int) -> list[int] | None:
        """The next k reads the policy predicts now, soonest first; offline evaluation
        (predictor.evaluate) scores it before every read. Default None: no ranked view, and
        evaluation scores the policy's outstanding requests instead."""
        ...

    def extend(self, tensors: TensorInfo, first_id: int) -> None:
        """The session's tensor table grew by `tensors`, ids from `first_id` (a daemon
        TENSORS message: tensors created after HELLO). Default: nothing (ids are just ints)."""
        ...

    def admit_prefetch(self, tensor_id: int, end_ns: int, now_ns: int, compute_ns: int) -> bool:
        """Simulator only, the last word before a queued request is issued, knowing its copy
        would complete at end_ns (now_ns: simulated time; compute_ns: the trace's compute time
        so far, no stalls). False drops the request. Default True; the simulator calls it only
        when overridden."""
        ...

    def next_read_key(self, tensor_id: int) -> int:
        """Simulator fast path: the read count at the tensor's next read (reads so far +
        predicted_next_use; INF_POS for NO_PREDICTION), changing only when the tensor is
        observed or listed by `rekeyed()`. When overridden the simulator keeps residents in
        a heap and finds the same victims in O(log n). Default INF_POS (unused)."""
        ...

    def rekeyed(self) -> list[int]:
        """With next_read_key: tensors whose key changed since the last call without being
        observed. Called after every observe when next_read_key is overridden. Default []."""
        ...

    def bind_clock(self, now_ns: Callable[[], int]) -> None:
        """The executor's clock (nanoseconds, rising), for a policy that models time itself:
        the simulated daemon path (predictor.daemon_path) needs it to tell when a batch's reply
        has come back. Executors call it once, before start(); the simulator passes its clock (the
        trace's compute time plus the waits so far, as a live run's wall clock would read). A live
        run need not call it (real time passes by itself). Default: nothing."""
        ...

    def bind_tier(self, tier: "TierView") -> None:
        """The device tier serving this policy (live store or simulator), read-only: its
        budget and its counters, for a policy that watches its own results (the guarded
        learned policy compares its stall with the simple policies'; a scan-aware policy
        sizes what it keeps by the budget). Executors call it whenever the tier takes the
        policy (before start() and again on a policy swap). Default: nothing."""
        ...

    def hint(self, want: Sequence[int], skip: Sequence[int]) -> Sequence[int] | None:
        """A router has chosen, or predicted, the experts a routed layer runs next
        (runtime.routers): `want`, the parameters of those that will run; `skip`, those of the
        layer's other experts. Return the ids to request now, soonest needed first (the executor
        then also drops its queued requests for `skip`), or None to take no hints. Called between
        accesses, in forward; a live run's trace keeps them and its simulation replays them.
        Default None: the simple policies stay what their names say."""
        ...

    def close(self) -> None:
        """The run is over (live runs call it at Prefetcher.close): release sockets and
        threads. Idempotent. Default: nothing."""
        ...


class TierView(Protocol):
    """What a policy may read of the device tier that serves it (runtime.tier.DeviceTier
    is one): the budget (None until fixed), the running counters, and per tensor id its
    kind, size and whether the tier manages it. Never written by a policy, except that it
    may append its own shadow tiers to `followers`."""

    budget_bytes: int | None
    used: int
    reads: int
    hits: int
    late: int
    misses: int
    stall_ns: int
    optimizer_wait_ns: int
    grad_wait_ns: int
    steps: int
    kind: list[int]
    nb: list[int]
    managed: list[bool | None]
    followers: list[Any]
    """Tiers that take this one's optimizer steps and gradients (a policy's own shadow tiers)."""


INF_POS = 1 << 62
"""next_read_key's 'never read again'."""


class BasePolicy:
    """The defaults of every optional hook (see `Policy`); every policy subclasses it.

    A new policy writes `name`, `start` and `observe` (and `predicted_next_use` when it
    knows), then one line in predictor.policies.POLICIES makes it usable everywhere.
    """

    name: str = "base"
    served_by: str | None = None
    note: str | None = None
    variant: str | None = None
    paced: bool = False

    def start(self, tensors: TensorInfo) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement start()")

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        raise NotImplementedError(f"{type(self).__name__} must implement observe()")

    def predicted_next_use(self, tensor_id: int) -> float:
        return NO_PREDICTION

    def upcoming(self, k: int) -> list[int] | None:
        return None

    def extend(self, tensors: TensorInfo, first_id: int) -> None:
        pass

    def admit_prefetch(self, tensor_id: int, end_ns: int, now_ns: int, compute_ns: int) -> bool:
        return True

    def next_read_key(self, tensor_id: int) -> int:
        return INF_POS

    def rekeyed(self) -> list[int]:
        return []

    def bind_clock(self, now_ns: Callable[[], int]) -> None:
        pass

    def bind_tier(self, tier: "TierView") -> None:
        pass

    def hint(self, want: Sequence[int], skip: Sequence[int]) -> Sequence[int] | None:
        return None

    def close(self) -> None:
        pass


def overrides(policy: Policy, hook: str) -> bool:
    """Whether `policy` defines `hook` itself rather than inheriting BasePolicy's default.
    Executors check this once per run to skip a fast-path hook's work in hot loops."""
    return getattr(type(policy), hook) is not getattr(BasePolicy, hook)


def check_policy(policy: object) -> Policy:
    """`policy` if it has every hook of `Policy`, else a one-line TypeError (a plug-in that
    does not subclass BasePolicy and misses a hook). Called once where an executor takes one."""
    missing = [h for h in _HOOKS if not hasattr(policy, h)]
    if missing:
        raise TypeError(f"policy {type(policy).__name__} lacks {', '.join(missing)}: subclass "
                        "predictor.interface.BasePolicy, which supplies the defaults")
    return policy  # type: ignore[return-value]


_HOOKS = ("name", "served_by", "note", "variant", "start", "observe", "predicted_next_use", "upcoming", "extend",
          "admit_prefetch", "next_read_key", "rekeyed", "bind_clock", "bind_tier", "close", "paced", "hint")


class PolicyError(ValueError):
    """A policy name or model directory that cannot be used."""

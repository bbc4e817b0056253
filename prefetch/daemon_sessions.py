"""The daemon's per-client state: the policy a HELLO gets (the factory, its fallback and the
reason a client may see) and the session it lives in, plus the daemon's counters."""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from predictor.interface import Policy, PolicyError, TensorInfo
from prefetch.daemon_config import FALLBACK_CHOICES
from runtime.daemon_launch import DEFAULT_FALLBACK


# -- policies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyChoice:
    """What a policy factory made for a HELLO: a *started* policy, what it is, and why."""

    policy: Policy
    served: str
    """The spec that actually serves ("learned", "replay", ...): sent to the client, so no path."""
    fallback_reason: str | None = None
    """Why `served` is not what the client asked for (None when it is); sent to the client,
    so it names no path and no other architecture (`public_reason`)."""
    detail: str | None = None
    """The full reason, with paths, for the daemon's own log."""


class PolicyFactory(Protocol):
    def __call__(self, spec: str, *, architecture: str, tensors: TensorInfo, lookahead: int) -> PolicyChoice:
        """A started policy for a client's HELLO; raise PolicyError to refuse it."""
        ...


def public_reason(exc: BaseException) -> str:
    """Why a learned predictor cannot serve, fit for a client: no folder, path, or list of
    the other architectures the daemon holds (remote clients may be anyone's)."""
    artifact = sys.modules.get("predictor.artifact")  # loaded by whoever raised an artifact error
    if artifact is not None and isinstance(exc, artifact.ArchitectureMismatchError):
        return "no predictor for this architecture in the daemon's models"
    if artifact is not None and isinstance(exc, artifact.CorruptModelError):
        what = f" ({exc.file}: {exc.problem})" if exc.file and exc.problem else ""
        return f"the predictor for this architecture failed validation{what}"
    if isinstance(exc, PolicyError) and "no trained predictor" in str(exc):
        return "the daemon's models folder holds no trained predictor"
    if isinstance(exc, PolicyError):
        return "the daemon cannot serve a learned predictor for this architecture (its log says why)"
    return f"the predictor could not be loaded ({type(exc).__name__}; the daemon's log has the details)"


def make_policy_factory(models_dir: str | os.PathLike[str] | None, fallback: str = DEFAULT_FALLBACK) -> PolicyFactory:
    """The daemon's default factory, over predictor.policies.make_policy.

    `learned` and `learned:ANYTHING` are served from the daemon's own `models_dir` (a
    client's path means nothing on the daemon's side); when it has no usable artifact
    for the client's architecture (none, another architecture, a file that fails
    validation, or anything else that raises while loading), `fallback` serves instead
    and HELLO_OK says why; fallback "error" refuses the HELLO. Baseline specs are
    served as asked."""
    from predictor.policies import make_policy

    if fallback not in FALLBACK_CHOICES:
        raise ValueError(f"policy fallback {fallback!r}: choose from {', '.join(FALLBACK_CHOICES)}")
    folder = str(Path(models_dir).resolve()) if models_dir is not None else None
    if folder is not None:  # LightGBM's import takes seconds: pay it at start, not in a client's HELLO
        import predictor.artifact  # noqa: F401

    def factory(spec: str, *, architecture: str, tensors: TensorInfo, lookahead: int) -> PolicyChoice:
        name = spec.partition(":")[0]
        if name != "learned":
            return PolicyChoice(make_policy(spec, lookahead=lookahead, tensors=tensors), served=spec)
        if folder is None:
            reason = detail = "the daemon was started without --models"
        else:
            try:
                policy = make_policy(f"learned:{folder}", lookahead=lookahead, tensors=tensors,
                                     architecture=architecture)
                return PolicyChoice(policy, served="learned", detail=f"learned:{folder}")
            except Exception as exc:  # noqa: BLE001 - no artifact, corrupt files, a loader bug: fall back
                reason, detail = public_reason(exc), f"{type(exc).__name__}: {exc}"
        if fallback == "error":
            raise PolicyError(f"{reason} (the daemon runs with --policy-fallback error)")
        policy = make_policy(fallback, lookahead=lookahead, tensors=tensors)
        return PolicyChoice(policy, served=fallback, fallback_reason=reason, detail=detail)

    return factory


# -- sessions ------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """One client: its policy, what it has sent, and the batches it has waiting."""

    session_id: int
    identity: bytes
    architecture: str
    policy: Policy
    served: str
    num_tensors: int
    next_use: bool
    last_seen: float
    batches: int = 0
    events: int = 0
    commands: int = 0
    bad_ids: int = 0  # ids a policy returned outside the table (dropped)
    queue: deque = field(default_factory=deque)  # _Batch, oldest first
    queued_events: int = 0


@dataclass(slots=True)
class DaemonStats:
    messages: int = 0
    events: int = 0
    commands: int = 0
    errors: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0
    sessions_expired: int = 0
    sessions_evicted: int = 0
    batches_queued: int = 0  # batches larger than chunk_events (or behind one), worked off in rounds
    busy_refused: int = 0  # batches refused because their session's queue was full
    errors_by_code: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]

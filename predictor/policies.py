"""Policies by name: the one place that turns `--policy SPEC` into a Policy.

    policy = make_policy("replay", lookahead=16)
    policy = make_policy("learned:models/", architecture=trace.architecture, tensors=info)

SPEC is `none`, `replay`, `markov` or `learned:MODEL_DIR`; `oracle` needs the future
and exists only inside the simulator (prefetch.oracle).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from predictor.baselines import Markov, NoPrefetch, Replay
from predictor.horizon import DEFAULT_LOOKAHEAD
from predictor.interface import Policy, PolicyError, TensorInfo

CHOICES = ("none", "replay", "markov", "oracle", "learned:MODEL_DIR")


@lru_cache(maxsize=16)
def _cached_artifact(folder: str, architecture: str | None, mtime_ns: int):
    from predictor.artifact import load_artifact

    return load_artifact(folder, architecture)


def load_learned(model_dir: str | os.PathLike[str], architecture: str | None = None):
    """The Artifact for `architecture` in model_dir, loaded once per process (per file version)."""
    from predictor.artifact import META_FILE, find_artifact

    folder = find_artifact(model_dir, architecture)
    mtime = (Path(folder) / META_FILE).stat().st_mtime_ns
    return _cached_artifact(str(folder), architecture, mtime)


def make_policy(
    spec: str,
    *,
    lookahead: int = DEFAULT_LOOKAHEAD,
    tensors: TensorInfo | None = None,
    architecture: str | None = None,
) -> Policy:
    """A fresh policy for `spec`; started on `tensors` when given.

    `architecture` (the trace manifest's or the daemon hello's signature) picks the
    predictor in a learned MODEL_DIR; a folder without one for it raises
    ArchitectureMismatchError (a PolicyError)."""
    name, sep, arg = spec.partition(":")
    policy: Policy
    if name == "none" and not sep:
        policy = NoPrefetch(lookahead=lookahead)
    elif name == "replay" and not sep:
        policy = Replay(lookahead=lookahead)
    elif name == "markov" and not sep:
        policy = Markov(lookahead=lookahead)
    elif name == "oracle":
        raise PolicyError("policy 'oracle' needs the future: it exists only in the simulator (prefetch simulate)")
    elif name == "learned":
        if not arg:
            raise PolicyError("policy 'learned' needs a model folder: learned:MODEL_DIR")
        from predictor.model import LearnedPolicy

        policy = LearnedPolicy(load_learned(arg, architecture), lookahead=lookahead)
    else:
        raise PolicyError(f"unknown policy {spec!r}; choose from: {', '.join(CHOICES)}")
    if tensors is not None:
        policy.start(tensors)
    return policy

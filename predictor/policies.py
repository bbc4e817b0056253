"""Policies by name: the one registry, and the one place that turns `--policy SPEC` into a Policy.

    policy = make_policy("replay", lookahead=16)
    policy = make_policy("stride:k=2")
    policy = make_policy("learned:models/", architecture=trace.architecture, tensors=info)

SPEC is `NAME` or `NAME:key=value,key=value`, the keys being the policy class's
constructor parameters, typed from its annotations (int, float, bool, str); a key in
the spec overrides the executor's `lookahead`. `learned:MODEL_DIR` takes a folder
instead. `oracle` needs the future and exists only inside the simulator (prefetch.oracle).
Adding a policy is one class (a predictor.interface.BasePolicy) and one line in POLICIES:
the CLI, the daemon, the simulator, offline evaluation, the demo and the report read it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from predictor.interface import Policy, PolicyError, TensorInfo
from runtime.defaults import EVAL_LOOKAHEAD


@dataclass(frozen=True, slots=True)
class Registered:
    """One registry entry: where the class is (imported on first use) and what it does."""

    target: str
    """`module:Class`, a predictor.interface.BasePolicy subclass taking `lookahead=`."""
    description: str
    """One line for `--help` and docs."""

    def cls(self) -> type:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


POLICIES: dict[str, Registered] = {
    "none": Registered("predictor.baselines:NoPrefetch", "never prefetches: every read is a demand fetch (the floor)"),
    "replay": Registered("predictor.baselines:Replay", "the previous step's read order (ZeRO-3), off for the rest of a step once it diverges"),
    "markov": Registered("predictor.baselines:Markov", "a bounded successor table learnt online (DeepUM), followed up to the lookahead"),
    "stride": Registered("predictor.stride:Stride", "the previous step's reads by position, each asked for k reads ahead (next-line at distance k)"),
    "scan": Registered("predictor.scan:Scan", "replay, but a loop re-reading more than the budget keeps a resident prefix and streams the rest"),
    "mirror": Registered("predictor.mirror:Mirror", "a micro-step's backward from its own forward reversed; the forward from the last one, found again after a divergence"),
    "learned": Registered("predictor.model:LearnedPolicy", "the LightGBM predictor trained by `prefetch train` (learned:MODEL_DIR)"),
}  # fmt: skip
"""Every policy an executor builds by name, in report order (`learned` last)."""

LEARNED = "learned"
ORACLE = "oracle"
"""The simulator's bound (prefetch.oracle): built from the trace itself, so not in POLICIES."""


def baseline_names() -> tuple[str, ...]:
    """The policies that need no model folder, in registry order: what the demo, the daemon's
    fallback and offline evaluation run beside `learned`."""
    return tuple(n for n in POLICIES if n != LEARNED)


def spec_help() -> str:
    """`none | replay | ... | learned:MODEL_DIR`, for --help and errors (imports no policy:
    the CLI builds its help at startup)."""
    return " | ".join("learned:MODEL_DIR" if n == LEARNED else n for n in POLICIES)


def describe() -> list[str]:
    """One line per policy: its spec with parameters and what it does (imports every class)."""
    out = []
    for name, entry in POLICIES.items():
        keys = [f"{k}={t.__name__}" for k, t in _params(name).items()] if name != LEARNED else []
        spec = "learned:MODEL_DIR" if name == LEARNED else name + (f"[:{','.join(keys)}]" if keys else "")
        out.append(f"{spec}: {entry.description}")
    return out


@lru_cache(maxsize=None)
def _params(name: str) -> dict[str, type]:
    """The constructor's keyword parameters of a registered policy and their types."""
    cls = POLICIES[name].cls()
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out[p.name] = hints.get(p.name, str)
    return out


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(spec: str, key: str, text: str, typ: type) -> object:
    try:
        if typ is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        return typ(text)
    except ValueError:
        raise PolicyError(f"policy {spec!r}: {key} must be {typ.__name__}, got {text!r}") from None


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """(name, typed keyword arguments) of a `NAME[:key=value,...]` spec; PolicyError when a
    name, key or value is bad. `learned:MODEL_DIR` gives {"model_dir": MODEL_DIR}."""
    name, sep, arg = spec.partition(":")
    if name == ORACLE:
        raise PolicyError("policy 'oracle' needs the future: it exists only in the simulator (prefetch simulate)")
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {spec!r}; choose from: {spec_help()} (NAME:key=value sets a parameter; oracle: simulator only)")
    if name == LEARNED:
        if not arg:
            raise PolicyError("policy 'learned' needs a model folder: learned:MODEL_DIR")
        return name, {"model_dir": arg}
    if sep and not arg:
        raise PolicyError(f"policy {spec!r}: nothing after ':'; write {name} or {name}:key=value")
    params = _params(name)
    kwargs: dict[str, object] = {}
    for item in arg.split(",") if arg else ():
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise PolicyError(f"policy {spec!r}: {item!r} is not key=value")
        if key not in params:
            raise PolicyError(f"policy {spec!r}: unknown key {key!r}; {name} takes: {', '.join(params) or 'none'}")
        if key in kwargs:
            raise PolicyError(f"policy {spec!r}: {key} given twice")
        kwargs[key] = _convert(spec, key, text.strip(), params[key])
    return name, kwargs


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
    lookahead: int = EVAL_LOOKAHEAD,
    tensors: TensorInfo | None = None,
    architecture: str | None = None,
) -> Policy:
    """A fresh policy for `spec`; started on `tensors` when given.

    `architecture` (the trace manifest's or the daemon hello's signature) picks the
    predictor in a learned MODEL_DIR; a folder without one for it raises
    ArchitectureMismatchError (a PolicyError)."""
    name, kwargs = parse_spec(spec)
    policy: Policy
    if name == LEARNED:
        cls = POLICIES[LEARNED].cls()
        policy = cls(load_learned(kwargs["model_dir"], architecture), lookahead=lookahead)
    else:
        try:
            policy = POLICIES[name].cls()(**{"lookahead": lookahead, **kwargs})
        except ValueError as exc:  # the constructor's own checks (k >= 1, ...)
            raise PolicyError(f"policy {spec!r}: {exc}") from None
    if tensors is not None:
        policy.start(tensors)
    return policy

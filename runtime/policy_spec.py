"""Which `--policy` specs a live run accepts, checked before a training step runs.

    check_policy_spec("learned:models/")      # PolicyError unless models/ holds a trained predictor

`prefetch run` (prefetch/run.py, prefetch/commands/run.py) and `PrefetchCallback`
(runtime/hf.py) refuse a bad spec up front with the same one-line error. It lives in the
runtime, not in prefetch/, because the runtime never imports prefetch/ (docs/architecture.md,
"Floors").
"""

from __future__ import annotations

from pathlib import Path


def check_policy_spec(spec: str, *, daemon: str | None = None) -> None:
    """PolicyError (a ValueError) for a policy `prefetch run` cannot use: an unknown name,
    `oracle`, `learned:` without a folder, or (without --daemon, whose own --models
    folder serves) a folder that does not exist or holds no trained predictor."""
    from predictor.interface import PolicyError
    from predictor.policies import make_policy

    name, sep, arg = spec.partition(":")
    if name != "learned":
        try:
            make_policy(spec)  # raises for unknown names and for oracle (simulator only)
        except PolicyError as exc:
            raise PolicyError(f"--policy: {exc}") from None
        return
    if not arg.strip():
        raise PolicyError(f"--policy {spec!r}: learned needs a model folder, e.g. learned:models/")
    if daemon is not None:
        return  # the daemon's --models folder is the one that counts
    from predictor.artifact import list_artifacts

    folder = Path(arg)
    if not folder.is_dir():
        raise PolicyError(f"--policy {spec}: model folder {arg} not found (run `prefetch train ... --out {arg}`)")
    if not list_artifacts(folder):
        raise PolicyError(f"--policy {spec}: {arg} holds no trained predictor (no */meta.json); run `prefetch train`")

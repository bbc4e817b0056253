"""Everything that lives inside the training process.

    import runtime
    with runtime.record(model, optimizer, out="traces/"):
        ...
    with runtime.prefetching(model, optimizer, policy="learned:models/", budget=0.4) as pf:
        ...
    print(pf.report())
"""

from __future__ import annotations

from typing import Any

from runtime.recorder import Recorder, record

__all__ = ["record", "Recorder", "prefetching"]


def __getattr__(name: str) -> Any:
    # prefetching pulls in the predictor and zmq; recording should not pay for that.
    if name == "prefetching":
        from runtime.prefetcher import prefetching

        return prefetching
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

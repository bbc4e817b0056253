"""PyTorch Lightning integration: record or prefetch a `Trainer.fit` by adding one callback.

    from runtime.lightning import PrefetchCallback, RecordCallback
    trainer = lightning.Trainer(max_steps=100, callbacks=[PrefetchCallback(policy="replay", budget=0.4,
                                                                           json="run.json")])
    trainer.fit(module, datamodule)        # unchanged
    callback.report                        # or the JSON file

    lightning.Trainer(..., callbacks=[RecordCallback(out="traces/")])   # a trace, as runtime.record writes

`on_train_start` is the first moment the LightningModule, its optimizers and a resumed
checkpoint's state all exist (the sanity-check validation has run by then, unmanaged).
`trainer.optimizers[0]` is managed; others (manual optimization with several optimizers)
are left alone and the report names them (`unmanaged_optimizers`). `on_train_end` closes the
Prefetcher (or Recorder) and writes the report; so does `on_exception`, which Lightning calls
when `fit` raises or is interrupted, so a failed run still has its report.

Lightning's automatic optimization runs `training_step` and `backward` inside
`optimizer.step(closure)`; runtime.closure_step runs that closure before the store's
pre-step work, as in a `backward(); step()` loop. Everything else is the Trainer's own:
gradient accumulation, clipping, validation, checkpoints.

`lightning` is imported here, not by `runtime` (`pip install 'learned-prefetch[zoo]'`
installs it). The callbacks subclass `lightning.pytorch.Callback`: a Trainer imported from
the older `pytorch_lightning` package checks for its own base class and will not take them.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("runtime.lightning needs lightning: pip install 'learned-prefetch[zoo]'") from exc

from runtime.trainer_session import PrefetchSession, RecordSession

__all__ = ["PrefetchCallback", "RecordCallback"]


def _seed() -> int | None:
    """The seed `lightning.seed_everything` set (it exports PL_GLOBAL_SEED), if any."""
    raw = os.environ.get("PL_GLOBAL_SEED", "")
    return int(raw) if raw.lstrip("-").isdigit() else None


def _optimizers(trainer: Any) -> tuple[Any, list[str]]:
    """(the managed optimizer or None, the class names of the others)."""
    opts = list(trainer.optimizers)
    return (opts[0] if opts else None), [type(o).__name__ for o in opts[1:]]


class PrefetchCallback(Callback, PrefetchSession):
    """Runs `trainer.fit(...)` under `runtime.prefetching(...)`: see the module doc.

    Arguments are `runtime.prefetching`'s (`policy`, `budget`, and any PrefetchConfig field
    such as `lookahead`, `device`, `link_ratio`, `warmup_steps`), plus `json` (the report file)
    and `timeline` (a Chrome trace file). `seed` defaults to `seed_everything`'s.
    """

    def __init__(self, policy: str = "replay", budget: float | int | str = 0.4, *,
                 json: str | os.PathLike[str] | None = None, timeline: str | os.PathLike[str] | None = None,
                 **config: Any):
        PrefetchSession.__init__(self, "PrefetchCallback", policy, budget, json=json, timeline=timeline, **config)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer, others = _optimizers(trainer)
        self.start(pl_module, optimizer, seed=_seed(), unmanaged_optimizers=others)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close()


class RecordCallback(Callback, RecordSession):
    """Records `trainer.fit(...)`'s tensor accesses to a trace in `out` (as `runtime.record`).

    `workload` names the trace (default: the module's class); `seed` defaults to
    `seed_everything`'s. Other keyword arguments go to `runtime.recorder.Recorder`.
    """

    def __init__(self, out: str | os.PathLike[str] = "traces", *, workload: str | None = None, **recorder: Any):
        RecordSession.__init__(self, out, workload=workload, **recorder)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start(pl_module, _optimizers(trainer)[0], seed=_seed())

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close()

"""Hugging Face `Trainer` integration: record or prefetch a run by adding one callback.

    from runtime.hf import PrefetchCallback, RecordCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[PrefetchCallback(policy="replay", budget=0.4, json="run.json")])
    trainer.train()                       # unchanged
    trainer.callback_handler.callbacks[-1].report   # or the JSON file

    Trainer(..., callbacks=[RecordCallback(out="traces/")])   # a trace, as runtime.record writes

Why callbacks and not a Trainer subclass: a callback composes with any Trainer subclass
(SFT, Seq2Seq, the user's own), and `on_train_begin` is the first moment both the model
and the optimizer exist (the Trainer creates the optimizer inside `train()`, after the
checkpoint's model weights and optimizer state are loaded, so a resumed run starts from
the loaded state). The optimizer the Trainer hands over is accelerate's
`AcceleratedOptimizer`; its `step()` calls the wrapped torch optimizer's, whose step
hooks are the ones that fire, so that inner optimizer is the one managed.

Each `train()` call gets its own Prefetcher (or Recorder), closed in `on_train_end`,
which also writes the report. The Trainer calls no callback when training raises:
call `callback.close()` in your own `finally` if you need the report of a failed run.

`transformers` is imported here, not by `runtime`: recording and prefetching a plain
loop do not need it (`pip install 'learned-prefetch[zoo]'` installs it).
"""

from __future__ import annotations

import os
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("runtime.hf needs transformers: pip install 'learned-prefetch[zoo]'") from exc

from runtime.trainer_session import PrefetchSession, RecordSession

__all__ = ["PrefetchCallback", "RecordCallback", "torch_optimizer", "torch_model"]


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer under accelerate's (or anyone's) `.optimizer` wrappers: its
    step hooks fire on every real step, the wrapper's do not."""
    seen = 0
    while optimizer is not None and hasattr(optimizer, "optimizer") and seen < 8:
        inner = optimizer.optimizer
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer, seen = inner, seen + 1
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"the Trainer's optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer")
    return optimizer


def torch_model(model: Any) -> torch.nn.Module:
    """The model under DataParallel/DDP's `.module` (the Trainer hands over the unwrapped
    one on a single process; a wrapped one would hook the wrapper, not the layers)."""
    while isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the Trainer's model is a {type(model).__name__}, not a torch.nn.Module")
    return model


class PrefetchCallback(TrainerCallback, PrefetchSession):
    """Runs `trainer.train()` under `runtime.prefetching(...)`: see the module doc.

    Arguments are `runtime.prefetching`'s (`policy`, `budget`, and any PrefetchConfig
    field such as `lookahead`, `device`, `link_ratio`, `warmup_steps`), plus `json`
    (the report file, written at `on_train_end`) and `timeline` (a Chrome trace file).
    `seed` defaults to the Trainer's `args.seed` (the learned policy's in-sample check).
    """

    def __init__(self, policy: str = "replay", budget: float | int | str = 0.4, *,
                 json: str | os.PathLike[str] | None = None, timeline: str | os.PathLike[str] | None = None,
                 **config: Any):
        PrefetchSession.__init__(self, "PrefetchCallback", policy, budget, json=json, timeline=timeline, **config)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.start(torch_model(model), torch_optimizer(optimizer), seed=getattr(args, "seed", None))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()


class RecordCallback(TrainerCallback, RecordSession):
    """Records `trainer.train()`'s tensor accesses to a trace in `out` (as `runtime.record`).

    `workload` names the trace (default: the model's class); `seed` defaults to the
    Trainer's `args.seed`. Other keyword arguments go to `runtime.recorder.Recorder`.
    """

    def __init__(self, out: str | os.PathLike[str] = "traces", *, workload: str | None = None, **recorder: Any):
        RecordSession.__init__(self, out, workload=workload, **recorder)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.start(torch_model(model), torch_optimizer(optimizer), seed=getattr(args, "seed", None))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

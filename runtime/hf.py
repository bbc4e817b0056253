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

import json
import os
from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("runtime.hf needs transformers: pip install 'learned-prefetch[zoo]'") from exc

from runtime.policy_spec import check_policy_spec
from runtime.prefetcher import PrefetchConfig, Prefetcher
from runtime.recorder import Recorder

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


def _check_json_path(path: str | os.PathLike[str] | None, what: str) -> Path | None:
    """Refuse an unwritable report path now, not after training."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and p.is_dir():
        raise ValueError(f"{what}={str(p)!r} is a directory, not a file")
    if p.parent.exists() and not p.parent.is_dir():
        raise ValueError(f"{what}={str(p)!r}: {p.parent} is not a directory")
    return p


class PrefetchCallback(TrainerCallback):
    """Runs `trainer.train()` under `runtime.prefetching(...)`: see the module doc.

    Arguments are `runtime.prefetching`'s (`policy`, `budget`, and any PrefetchConfig
    field such as `lookahead`, `device`, `link_ratio`, `warmup_steps`), plus `json`
    (the report file, written at `on_train_end`) and `timeline` (a Chrome trace file).
    `seed` defaults to the Trainer's `args.seed` (the learned policy's in-sample check).
    """

    def __init__(self, policy: str = "replay", budget: float | int | str = 0.4, *,
                 json: str | os.PathLike[str] | None = None, timeline: str | os.PathLike[str] | None = None,
                 **config: Any):
        try:
            check_policy_spec(policy, daemon=config.get("daemon"))  # unknown names, learned: without a folder
        except ValueError as exc:  # its messages name prefetch run's flag
            raise ValueError(f"PrefetchCallback: {str(exc).replace('--policy', 'policy', 1)}") from None
        # validated now (PrefetchConfig.__post_init__): a bad budget is refused at construction
        self._config_kwargs = dict(policy=policy, budget=budget, timeline=timeline is not None, **config)
        try:
            PrefetchConfig(**self._config_kwargs)
        except (TypeError, ValueError) as exc:  # an unknown keyword is a TypeError
            raise ValueError(f"PrefetchCallback: {exc}") from None
        self.json_path = _check_json_path(json, "PrefetchCallback: json")
        self.timeline_path = _check_json_path(timeline, "PrefetchCallback: timeline")
        self.prefetcher: Prefetcher | None = None
        self.report: dict[str, Any] | None = None
        """The last train() call's report (`Prefetcher.report()` keys), set at its end."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.close()  # a previous train() that raised
        opt = torch_optimizer(optimizer)
        if opt is None:
            raise ValueError("PrefetchCallback: the Trainer has no optimizer at on_train_begin; nothing to prefetch")
        kw = dict(self._config_kwargs)
        kw.setdefault("seed", getattr(args, "seed", None))
        self.report = None
        self.prefetcher = Prefetcher(torch_model(model), opt, PrefetchConfig(**kw))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> dict[str, Any] | None:
        """Stop prefetching (parameters back on their host masters), write the report and
        timeline files, return the report. Idempotent; None when nothing was running."""
        pf, self.prefetcher = self.prefetcher, None
        if pf is None:
            return None
        pf.close()
        self.report = pf.report()
        if self.timeline_path is not None:
            self.timeline_path.parent.mkdir(parents=True, exist_ok=True)
            self.timeline_path.write_text(json.dumps(pf.chrome_trace()))
            self.report["timeline"] = str(self.timeline_path)
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps(self.report, indent=2, default=str))
        return self.report


class RecordCallback(TrainerCallback):
    """Records `trainer.train()`'s tensor accesses to a trace in `out` (as `runtime.record`).

    `workload` names the trace (default: the model's class); `seed` defaults to the
    Trainer's `args.seed`. Other keyword arguments go to `runtime.recorder.Recorder`.
    """

    def __init__(self, out: str | os.PathLike[str] = "traces", *, workload: str | None = None, **recorder: Any):
        from runtime.trace_writer import check_output_dir

        check_output_dir(out)  # refuse an unusable folder before training
        self.out = out
        self.workload = workload
        self._recorder_kwargs = recorder
        self.recorder: Recorder | None = None
        self.stem: Path | None = None
        """The last train() call's trace (`<stem>.events.arrow`, `.manifest.json`)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.close()
        kw = dict(self._recorder_kwargs)
        kw.setdefault("seed", getattr(args, "seed", None))
        self.recorder = Recorder(torch_model(model), torch_optimizer(optimizer), self.out,
                                 workload=self.workload, **kw).start()
        self.stem = self.recorder.stem

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self, **manifest_updates: Any) -> Path | None:
        """Finish the trace files; return their stem. Idempotent."""
        rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        rec.close(**manifest_updates)
        return rec.stem

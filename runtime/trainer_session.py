"""What a trainer callback does, whichever trainer calls it: build a Prefetcher (or a Recorder)
when training begins, close it and write its report when training ends.

runtime.hf (transformers' Trainer) and runtime.lightning (Lightning's Trainer) are thin
adapters over the two classes here: the trainers' hook names and how each hands over its
model and optimizer differ; what is refused up front, what starts, and what the report file
holds do not. A callback class subclasses its trainer's callback base and one of these, so
`callback.report`, `callback.prefetcher`, `callback.stem` and `callback.close()` mean the same
in both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from runtime.policy_spec import check_policy_spec
from runtime.prefetcher import PrefetchConfig, Prefetcher
from runtime.recorder import Recorder


def check_json_path(path: str | os.PathLike[str] | None, what: str) -> Path | None:
    """Refuse an unwritable report path now, not after training."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and p.is_dir():
        raise ValueError(f"{what}={str(p)!r} is a directory, not a file")
    if p.parent.exists() and not p.parent.is_dir():
        raise ValueError(f"{what}={str(p)!r}: {p.parent} is not a directory")
    return p


class PrefetchSession:
    """One training run under `runtime.prefetching(...)` per `start`, its report at `close`.

    `owner` names the callback in every error. Arguments are `runtime.prefetching`'s
    (`policy`, `budget`, and any PrefetchConfig field), plus `json` (the report file, written
    at close) and `timeline` (a Chrome trace file). Everything is checked at construction:
    an unknown policy, `learned:` without a model folder, a bad budget or keyword, a report
    path that is a folder.
    """

    def __init__(self, owner: str, policy: str = "replay", budget: float | int | str = 0.4, *,
                 json: str | os.PathLike[str] | None = None, timeline: str | os.PathLike[str] | None = None,
                 **config: Any):
        self.owner = owner
        try:
            check_policy_spec(policy, daemon=config.get("daemon"))  # unknown names, learned: without a folder
        except ValueError as exc:  # its messages name prefetch run's flag
            raise ValueError(f"{owner}: {str(exc).replace('--policy', 'policy', 1)}") from None
        # validated now (PrefetchConfig.__post_init__): a bad budget is refused at construction
        self._config_kwargs = dict(policy=policy, budget=budget, timeline=timeline is not None, **config)
        try:
            PrefetchConfig(**self._config_kwargs)
        except (TypeError, ValueError) as exc:  # an unknown keyword is a TypeError
            raise ValueError(f"{owner}: {exc}") from None
        self.json_path = check_json_path(json, f"{owner}: json")
        self.timeline_path = check_json_path(timeline, f"{owner}: timeline")
        self.prefetcher: Prefetcher | None = None
        self.report: dict[str, Any] | None = None
        """The last training run's report (`Prefetcher.report()` keys), set at its end."""
        self._unmanaged: list[str] = []

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, *, seed: int | None = None,
              unmanaged_optimizers: list[str] | None = None) -> None:
        """Training begins: a previous run that raised is closed first, then the model and its
        optimizer are managed. `seed` (the learned policy's in-sample check) unless configured;
        `unmanaged_optimizers`: the trainer's other optimizers, named in the report."""
        self.close()
        if optimizer is None:
            raise ValueError(f"{self.owner}: the trainer has no optimizer when training begins; nothing to prefetch")
        kw = dict(self._config_kwargs)
        kw.setdefault("seed", seed)
        self.report = None
        self._unmanaged = list(unmanaged_optimizers or [])
        self.prefetcher = Prefetcher(model, optimizer, PrefetchConfig(**kw))

    def close(self) -> dict[str, Any] | None:
        """Stop prefetching (parameters back on their host masters), write the report and
        timeline files, return the report. Idempotent; None when nothing was running."""
        pf, self.prefetcher = self.prefetcher, None
        if pf is None:
            return None
        pf.close()
        self.report = pf.report()
        if self._unmanaged:
            self.report["unmanaged_optimizers"] = self._unmanaged
        if self.timeline_path is not None:
            self.timeline_path.parent.mkdir(parents=True, exist_ok=True)
            self.timeline_path.write_text(json.dumps(pf.chrome_trace()))
            self.report["timeline"] = str(self.timeline_path)
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps(self.report, indent=2, default=str))
        return self.report


class RecordSession:
    """One training run recorded to a trace in `out` per `start` (as `runtime.record`).

    `workload` names the trace (default: the model's class). Other keyword arguments go to
    `runtime.recorder.Recorder`. An unusable folder is refused at construction.
    """

    def __init__(self, out: str | os.PathLike[str] = "traces", *, workload: str | None = None, **recorder: Any):
        from runtime.trace_writer import check_output_dir

        check_output_dir(out)  # refuse an unusable folder before training
        self.out = out
        self.workload = workload
        self._recorder_kwargs = recorder
        self.recorder: Recorder | None = None
        self.stem: Path | None = None
        """The last training run's trace (`<stem>.events.arrow`, `.manifest.json`)."""

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, *, seed: int | None = None) -> None:
        self.close()
        kw = dict(self._recorder_kwargs)
        kw.setdefault("seed", seed)
        self.recorder = Recorder(model, optimizer, self.out, workload=self.workload, **kw).start()
        self.stem = self.recorder.stem

    def close(self, **manifest_updates: Any) -> Path | None:
        """Finish the trace files; return their stem. Idempotent."""
        rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        rec.close(**manifest_updates)
        return rec.stem


def compare_with_resident(report: dict[str, Any] | None, reference: Any, run: Any, *, losses: list[float],
                          reference_losses: list[float], json_path: Path | None = None) -> bool:
    """A callback run checked against the same run all resident (the examples' last act): the
    report plus `state_compare.identity_report` of the two final states (`StateSnapshot`s) and
    losses, written to `json_path`, summed up in two printed lines. True when bit-identical."""
    from runtime import state_compare

    out = dict(report or {})
    out.update(state_compare.identity_report(reference, run, losses=losses, reference_losses=reference_losses))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2, default=str))
    ok = bool(out["losses_identical"] and out["params_identical"] and out["optimizer_state_identical"])
    closures = f", {out['closures_run_first']} closures run first" if out.get("closures_run_first") else ""
    print(f"policy {out['policy']}: hit rate {out['hit_rate']:.1%}, {out['misses']} misses, "
          f"stall {out['stall_s']:.3f}s, {out['bytes_copied'] / 2**20:.1f} MiB copied, "
          f"budget {out['budget_bytes'] / 2**20:.2f} of {out['managed_bytes'] / 2**20:.2f} MiB managed{closures}")
    print("losses, parameters and optimizer state " + ("bit-identical to all resident" if ok else
          f"DIFFER from all resident: {out.get('state_mismatches')}"))
    return ok

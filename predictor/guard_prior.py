"""The guard's prior: which candidate served best on the training runs' held-out steps.

    fit_priors(folders, trace_paths)                            # prefetch.guard_prior_fit, at `prefetch train`
    prior = load_prior("models/", architecture)                 # at a learned run's start
    cell = prior.nearest(budget_share=0.4, link_ratio=0.5)

The guard (predictor.guard) scores its candidates on the run itself, so it can only switch
after the warm-up and `min_steps` scored steps: a quarter of a 12-step run served by the
model where a simple rival was better all along (issue 11's generalisation suite: on a
dense architecture at budget 0.4, no prefetching had both the most hits and the least
stall, and the learned run lost 2.6 points in its first three steps). The training runs
already answer that question for this architecture: `measure_prior` simulates every
candidate (the model as a live run serves it, through the daemon path, and each
alternate) on the steps training held out of the model, at a small grid of budgets and
link ratios (prefetch.guard_prior_fit: the simulator sits above the predictor), and keeps
each candidate's stall and hits per cell. The guard looks up the
cell nearest its run (budget share, link ratio) and, by its own rule (`pick_best`), lets
the winner serve from the first scored step; it keeps shadowing the others, so the run's
own steps still decide after `min_steps`.

Honest by construction: the model is scored only on steps it was not trained on (the
held-out tail of each training trace, after one training step as warm-up); nothing from
an evaluation run goes in. The prior is JSON in the artifact's meta.json, checked on load.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

META_KEY = "guard_prior"
"""Where the prior lives in an artifact's meta.json."""
LEARNED = "learned"
DEFAULT_BUDGETS = (0.25, 0.4, 0.7)
"""Budget shares the prior is measured at (a run's nearest is used)."""
DEFAULT_LINK_RATIOS = (0.25, 0.5, 1.0, 2.0)
"""Link ratios the prior is measured at (runtime.link: copying every managed byte takes ratio x a step)."""


@dataclass(frozen=True, slots=True)
class PriorCell:
    """Every candidate's stall and hits at one (budget share, link ratio), summed over the
    held-out steps of the training runs; `compute_ns` their compute time (the guard's noise floor)."""

    budget: float
    link_ratio: float
    stall_ns: Mapping[str, int]
    hits: Mapping[str, int]
    compute_ns: int

    def distance(self, budget_share: float, link_ratio: float) -> float:
        """How far a run is from this cell: log distance, budget and link alike."""
        return abs(math.log(budget_share / self.budget)) + abs(math.log(link_ratio / self.link_ratio))


@dataclass(frozen=True, slots=True)
class GuardPrior:
    """The prior of one artifact: its cells, and the held-out steps they were measured on."""

    cells: tuple[PriorCell, ...]
    source: str
    """Which steps of which training runs (for the guard's note and the docs)."""

    def nearest(self, budget_share: float, link_ratio: float) -> PriorCell:
        if not (budget_share > 0 and link_ratio > 0):
            raise ValueError(f"budget share and link ratio must be > 0, got {budget_share}, {link_ratio}")
        return min(self.cells, key=lambda c: c.distance(budget_share, link_ratio))

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "cells": [
            {"budget": c.budget, "link_ratio": c.link_ratio, "stall_ns": dict(c.stall_ns), "hits": dict(c.hits),
             "compute_ns": c.compute_ns} for c in self.cells]}  # fmt: skip

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "GuardPrior":
        """The prior `as_json` wrote; a one-line ValueError naming `where` and the field when malformed."""
        bad = f"{where}: '{META_KEY}'"
        if not isinstance(obj, dict) or not isinstance(obj.get("cells"), list) or not obj["cells"]:
            raise ValueError(f"{bad} must be {{\"source\": str, \"cells\": [...]}} with at least one cell")
        cells = []
        for i, c in enumerate(obj["cells"]):
            ok = isinstance(c, dict) and all(_positive(c.get(k)) for k in ("budget", "link_ratio"))
            maps = [c.get(k) for k in ("stall_ns", "hits")] if ok else []
            ok = ok and all(isinstance(m, dict) and m and all(isinstance(k, str) and _count(v) for k, v in m.items())
                            for m in maps) and set(maps[0]) == set(maps[1]) and _count(c.get("compute_ns"))
            if not ok:
                raise ValueError(f"{bad}: cell {i} must hold budget and link_ratio > 0, stall_ns and hits "
                                 "(the same candidate names, counts >= 0) and compute_ns >= 0")
            cells.append(PriorCell(float(c["budget"]), float(c["link_ratio"]), dict(c["stall_ns"]), dict(c["hits"]),
                                   int(c["compute_ns"])))
        return cls(tuple(cells), str(obj.get("source", "")))


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def pick_best(stall: Mapping[Any, int], hits: Mapping[Any, int], slack: Callable[[int], float],
              keep: Any = None, prefer: Any = None) -> Any:
    """The guard's rule, one place for the run and its prior: `keep` (the one serving) while its
    stall is within slack(least) of the least; otherwise, of those within it, the one with the
    most hits (`prefer`, then the first listed, on a tie)."""
    least = min(stall.values())
    order = list(stall)
    near = [k for k in order if stall[k] <= least + slack(least)]
    if keep in near:
        return keep
    return max(near, key=lambda k: (hits.get(k, 0), k == prefer, -order.index(k)))


def write_prior(folder: str | os.PathLike[str], prior: GuardPrior) -> None:
    """Put `prior` into the artifact folder's meta.json (atomically: the old file stays whole
    until the new one is complete)."""
    from predictor.artifact import update_meta

    update_meta(folder, META_KEY, prior.as_json())


def load_prior(model_dir: str, architecture: str | None) -> GuardPrior | None:
    """The prior in the artifact for `architecture` under model_dir; None when the folder is
    not here (a remote daemon's) or the artifact has none (trained before priors). A malformed
    one raises CorruptModelError naming meta.json."""
    from predictor.artifact import META_FILE, _corrupt, _read_meta, find_artifact
    from predictor.interface import PolicyError

    try:
        folder = find_artifact(model_dir, architecture)
    except PolicyError:  # not here, or not for this architecture: the daemon reports its own errors
        return None
    path = folder / META_FILE
    obj = _read_meta(path).get(META_KEY)
    if obj is None:
        return None
    try:
        return GuardPrior.from_json(obj, str(path))
    except ValueError as exc:
        raise _corrupt(path, str(exc).split(": ", 1)[-1]) from None

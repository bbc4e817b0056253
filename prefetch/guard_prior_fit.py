"""Measuring the guard's prior (predictor.guard_prior) after training: the simulator, on the held-out steps.

    fit_priors(["models/GPT2LMHeadModel-..."], ["traces/gpt2"])   # what `prefetch train` does

For each artifact, the traces it was trained on (matched by the fingerprint meta.json keeps) are cut
to their held-out steps, the training step before them kept as a warm-up, and simulated at
every cell of a small (budget share, link ratio) grid with the learned candidate served as
live runs serve it (the daemon path's model) and with each of the guard's alternates. The
model never trained on those steps (predictor.train holds them out), so the prior is
measured out of sample; no evaluation run goes in. This sits here, above the predictor,
because the simulator does.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from predictor.guard_prior import DEFAULT_BUDGETS, DEFAULT_LINK_RATIOS, LEARNED, GuardPrior, PriorCell, write_prior
from runtime.trace_format import Trace, find_traces, load_trace


def fit_priors(folders: Iterable[str | os.PathLike[str]], trace_paths: Iterable[str | os.PathLike[str]], *,
               budgets: Sequence[float] = DEFAULT_BUDGETS, link_ratios: Sequence[float] = DEFAULT_LINK_RATIOS,
               progress: bool = True, log: Callable[[str], None] = print) -> None:
    """Measure and write the prior of every artifact folder in `folders` from the traces under
    `trace_paths` it was trained on; an artifact whose traces are not here (remote URIs) or
    have no held-out steps keeps none (its guard starts with the model, as before priors)."""
    from predictor.artifact import load_artifact
    from predictor.dask_tasks import is_uri
    from predictor.evaluate import trace_fingerprint

    paths = [p for p in trace_paths if not is_uri(str(p))]
    traces = [load_trace(s) for s in find_traces(paths)] if paths else []
    # a training trace is named in meta.json by its fingerprint (of its managed stream)
    by_print = {trace_fingerprint(t.managed()): t for t in traces}
    for folder in folders:
        t0 = time.perf_counter()
        artifact = load_artifact(folder)
        entries = artifact.meta.get("training", {}).get("traces", [])
        found = [(by_print[e["fingerprint"]], e["holdout_steps"]) for e in entries if e.get("fingerprint") in by_print]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(budgets) * len(link_ratios), leave=False, unit="cell",
                       desc=f"guard prior {artifact.architecture[:30]}")
        try:
            prior = measure_prior([t for t, _ in found], [ho for _, ho in found], artifact, budgets=budgets,
                                  link_ratios=link_ratios, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        if prior is None:
            log(f"  guard prior: none for {folder} (no training trace with held-out steps found here)")
            continue
        write_prior(folder, prior)
        log(f"  guard prior: {len(prior.cells)} cells on the {prior.source}, {time.perf_counter() - t0:.1f} s")


def tail_trace(trace: Trace, first_step: int) -> Trace:
    """The trace from `first_step` on, as if the run had started there: events and their
    router hints (manifest `router_hints`, indexed by event) move with it; a recorded
    reply schedule is dropped (the prior simulates the daemon path's model)."""
    from runtime import hint_schedule

    later = np.flatnonzero(trace.column("step") >= first_step)
    first = int(later[0]) if len(later) else trace.num_events
    manifest = {k: v for k, v in trace.manifest.items() if k != "daemon_replies"}
    hints = trace.manifest.get(hint_schedule.MANIFEST_KEY)
    if hints:
        kept = [e for e in hint_schedule.from_manifest(hints, str(trace.stem), trace.num_events, trace.num_tensors)
                if e[0] >= first]
        manifest[hint_schedule.MANIFEST_KEY] = {
            "at": [e[0] - first for e in kept], "time_ns": [e[1] for e in kept],
            "want": [e[2] for e in kept], "skip": [e[3] for e in kept]}  # fmt: skip
    return Trace(stem=trace.stem, events=trace.events.slice(first), tensors=trace.tensors, manifest=manifest,
                 truncated=trace.truncated)


def measure_prior(traces: Sequence[Trace], holdout: Sequence[Sequence[int]], artifact, *,
                  alternates: Iterable[str] | None = None, budgets: Sequence[float] = DEFAULT_BUDGETS,
                  link_ratios: Sequence[float] = DEFAULT_LINK_RATIOS, lookahead: int | None = None,
                  progress: Callable[[int], None] | None = None) -> GuardPrior | None:
    """Simulate the learned candidate (through the daemon path, as live runs serve it) and each
    alternate on every trace's held-out steps (`holdout[i]`, after the step before them as
    warm-up), at every (budget, link ratio); None when no trace has held-out steps.
    `traces` are whole recordings (the simulator needs their compute times and hints)."""
    from predictor.guard import DEFAULT_ALTERNATES
    from predictor.model import LearnedPolicy
    from predictor.policies import make_policy
    from prefetch.simulate import simulate
    from runtime.defaults import LIVE_LOOKAHEAD

    lookahead = lookahead or LIVE_LOOKAHEAD
    names = [LEARNED, *(alternates if alternates is not None else DEFAULT_ALTERNATES)]
    tails, used = [], []
    for trace, ho in zip(traces, holdout):
        steps = [int(s) for s in trace.steps()]
        if not ho or int(ho[0]) not in steps or steps.index(int(ho[0])) == 0:
            continue
        tails.append(tail_trace(trace, steps[steps.index(int(ho[0])) - 1]))
        used.append(f"{trace.stem.name} steps {int(ho[0])}-{int(ho[-1])}")
    if not tails:
        return None
    cells = []
    for b in budgets:
        for r in link_ratios:
            stall = dict.fromkeys(names, 0)
            hits = dict.fromkeys(names, 0)
            compute = 0
            for tail in tails:
                for name in names:
                    pol = (LearnedPolicy(artifact, lookahead) if name == LEARNED
                           else make_policy(name, lookahead=lookahead))
                    rep = simulate(tail, pol, budget=b, link_ratio=r, warmup_steps=1, lookahead=lookahead,
                                   daemon=name == LEARNED, guard=False)
                    stall[name] += int(rep.stats.stall_ns + rep.grad_wait_ns)
                    hits[name] += int(rep.stats.hits)
                    if name == LEARNED:
                        compute += int(rep.baseline_ns)
            cells.append(PriorCell(float(b), float(r), stall, hits, compute))
            if progress is not None:
                progress(1)
    return GuardPrior(tuple(cells), "held-out steps of " + ", ".join(used))

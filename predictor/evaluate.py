"""Offline evaluation of every policy on held-out steps and held-out runs.

    prefetch eval --model models/ traces/moe/ traces/moe-seed1/ --json eval.json

Each policy is driven over a whole trace exactly as the simulator and the daemon
drive it (start, then observe every event). Just before each read, its `upcoming(D)`
(the next D reads it currently predicts, soonest first) is compared with the truth:

- top-1 / top-k: the next read is the first / among the first k predicted;
- recall@D: the share of the distinct tensors among the next D reads that are among
  the first D predicted (D = the lookahead);
- coverage: the share of reads whose tensor had been requested through observe()
  (and not read since) or had been read within the last D reads: a hit rate with an
  unlimited device budget and an instant link. The simulator gives the real one.

Scopes: a trace of a run the model was trained on (predictor.provenance: the same
workload and seed, or the same access order step by step when a seed is unknown; not
the same file or event count, so a re-recording of a training seed is caught) is scored
on the steps held out of training ("held-out steps") and flagged `in_sample`; any other
trace ("held-out run", e.g. another seed) on all its steps but the first (warm-up:
replay and markov learn online). Breakdowns are by the phase and the tensor kind of the
read being predicted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from predictor.interface import Policy, TensorInfo, check_policy
from runtime.defaults import EVAL_LOOKAHEAD
from runtime.trace_format import Access, Kind, Phase, Trace

HELD_OUT_STEPS = "held-out steps"
HELD_OUT_RUN = "held-out run"
WARMUP_STEPS = 1
METRICS = ("top1", "topk", "recall", "coverage")


def trace_fingerprint(trace: Trace) -> str:
    """Names a recording in meta.json (informative only: whether an evaluated run is a
    training run is predictor.provenance's decision, not this string's)."""
    m = trace.manifest
    return f"{trace.stem.name}|{trace.architecture}|{m.get('seed')}|{trace.num_events}"


@dataclass
class PolicyRun:
    """What one policy predicted before each read of a trace."""

    reads: np.ndarray  # (R,) tensor ids read
    phase: np.ndarray  # (R,)
    kind: np.ndarray  # (R,)
    step: np.ndarray  # (R,)
    pred: np.ndarray  # (R, D) upcoming(D) just before each read, -1 padded
    covered: np.ndarray  # (R,) bool
    observe_ns: int  # total time spent in observe()
    events: int
    requests: int


def run_policy(policy: Policy, trace: Trace, lookahead: int = EVAL_LOOKAHEAD) -> PolicyRun:
    """Drive `policy` over `trace` (one Python call per event: what the daemon does)."""
    D = lookahead
    access = trace.column("access")
    is_read = access == int(Access.READ)
    R = int(is_read.sum())
    pred = np.full((R, D), -1, dtype=np.int64)
    covered = np.zeros(R, dtype=bool)
    requested: dict[int, int] = {}
    last_read: dict[int, int] = {}
    upcoming = check_policy(policy).upcoming
    policy.start(TensorInfo.from_table(trace.tensors))
    cols = [trace.column(c).tolist() for c in ("step", "micro_step", "phase", "access", "tensor_id")]
    READ = int(Access.READ)
    r = 0
    total_ns = 0
    n_requests = 0
    clock = time.perf_counter_ns
    observe = policy.observe
    for step, micro, phase, acc, tid in zip(*cols):
        if acc == READ:
            up = upcoming(D)
            if up is None:  # no ranked view (BasePolicy's default): its outstanding requests, oldest first
                up = list(requested)[:D]
            if up:
                pred[r, : len(up)] = up[:D]
            covered[r] = requested.pop(tid, None) is not None or r - last_read.get(tid, -(10**12)) <= D
            last_read[tid] = r
            r += 1
        t0 = clock()
        reqs = observe(step, micro, phase, acc, tid)
        total_ns += clock() - t0
        for q in reqs:
            requested[q] = r
        n_requests += len(reqs)
    return PolicyRun(
        reads=trace.column("tensor_id")[is_read].astype(np.int64),
        phase=trace.column("phase")[is_read].astype(np.int64),
        kind=trace.column("kind")[is_read].astype(np.int64),
        step=trace.column("step")[is_read].astype(np.int64),
        pred=pred,
        covered=covered,
        observe_ns=total_ns,
        events=len(access),
        requests=n_requests,
    )


def per_read_scores(run: PolicyRun, topk: int) -> dict[str, np.ndarray]:
    """(R,) arrays: top1, topk (bool), recall (float), coverage (bool)."""
    r, pred = run.reads, run.pred
    R, D = pred.shape
    top1 = pred[:, 0] == r
    topk_hit = (pred[:, : min(topk, D)] == r[:, None]).any(axis=1)
    future = np.lib.stride_tricks.sliding_window_view(np.concatenate([r, np.full(D, -2)]), D)[:R]  # (R, D)
    first = np.empty((R, D), dtype=bool)
    hit = np.empty((R, D), dtype=bool)
    for j in range(D):  # D vectorised passes
        col = future[:, j : j + 1]
        first[:, j] = (col[:, 0] >= 0) & ~(future[:, :j] == col).any(axis=1)
        hit[:, j] = (pred == col).any(axis=1)
    distinct = first.sum(axis=1)
    recall = np.where(distinct > 0, (hit & first).sum(axis=1) / np.maximum(distinct, 1), 0.0)
    return {"top1": top1, "topk": topk_hit, "recall": recall, "coverage": run.covered}


def _summary(scores: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, float]:
    n = int(mask.sum())
    out: dict[str, Any] = {"reads": n}
    for m in METRICS:
        out[m] = float(scores[m][mask].mean()) if n else None
    return out


def score_run(run: PolicyRun, mask: np.ndarray, topk: int) -> dict[str, Any]:
    """Metrics over the reads in `mask`, overall and by phase and kind of the read."""
    scores = per_read_scores(run, topk)
    out = _summary(scores, mask)
    out["by_phase"] = {p.name.lower(): _summary(scores, mask & (run.phase == p)) for p in Phase if (mask & (run.phase == p)).any()}
    out["by_kind"] = {k.name.lower(): _summary(scores, mask & (run.kind == k)) for k in Kind if (mask & (run.kind == k)).any()}
    out["us_per_event"] = run.observe_ns / max(run.events, 1) / 1e3
    out["requests_per_read"] = run.requests / max(len(run.reads), 1)
    return out


def scope_of(trace: Trace, trained: Sequence[int] | None) -> tuple[str, list[int]]:
    """The scope and measured steps of a trace, given the steps the model was trained on
    when the trace is a training run (provenance's matched entry), else None."""
    steps = [int(s) for s in trace.steps()]
    if trained is not None:
        done = {int(s) for s in trained}
        return HELD_OUT_STEPS, [s for s in steps if s not in done]
    return HELD_OUT_RUN, steps[WARMUP_STEPS:]


def evaluate_trace(
    trace: Trace,
    policies: dict[str, Policy],
    *,
    scope: str,
    steps: Sequence[int],
    lookahead: int = EVAL_LOOKAHEAD,
    topk: int = 5,
) -> dict[str, Any]:
    """Every policy on one trace, scored on `steps`."""
    result: dict[str, Any] = {
        "trace": str(trace.stem),
        "architecture": trace.architecture,
        "workload": trace.manifest.get("workload"),
        "seed": trace.manifest.get("seed"),
        "scope": scope,
        "steps": list(steps),
        "policies": {},
    }
    for name, policy in policies.items():
        run = run_policy(policy, trace, lookahead)
        mask = np.isin(run.step, np.asarray(list(steps), dtype=np.int64))
        result["policies"][name] = score_run(run, mask, topk)
    return result


def evaluate(
    model_dir: str | None,
    traces: Iterable[Trace],
    *,
    lookahead: int = EVAL_LOOKAHEAD,
    topk: int = 5,
    baselines: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the learned predictor in model_dir (if given) and the baselines on `traces`
    (default: every registered policy but learned, predictor.policies.baseline_names)."""
    from predictor.policies import baseline_names, load_learned, make_policy
    from predictor.provenance import assess, combine, training_data, warn_if_in_sample
    from runtime.trace_identity import trace_identity

    traces = list(traces)
    baselines = baseline_names() if baselines is None else tuple(baselines)
    provs = []
    results = []
    it = traces
    if progress:
        from tqdm import tqdm

        it = tqdm(traces, desc="evaluating", unit="trace")
    for trace in it:
        policies: dict[str, Policy] = {b: make_policy(b, lookahead=lookahead) for b in baselines}
        prov = None
        if model_dir is not None:
            artifact = load_learned(model_dir, trace.architecture)
            prov = assess(training_data(artifact.meta), trace_identity(trace))
            policies["learned"] = make_policy(f"learned:{model_dir}", lookahead=lookahead, architecture=trace.architecture)
        trained = prov.matched.get("steps") if prov is not None and prov.in_sample and prov.matched else None
        if prov is not None and prov.in_sample and trained is None:  # a training run, steps unknown: all of it
            trained = [int(s) for s in trace.steps()]
        scope, steps = scope_of(trace, trained)
        result = evaluate_trace(trace, policies, scope=scope, steps=steps, lookahead=lookahead, topk=topk)
        if prov is not None:
            result.update(prov.as_dict())
            provs.append(prov)
            warn_if_in_sample(prov, f"prefetch eval {trace.stem.name}")
        results.append(result)
    report = {"lookahead": lookahead, "topk": topk, "model": model_dir, "traces": results, "summary": summarize(results)}
    if provs:
        report.update(combine(provs).as_dict())
    return report


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Read-weighted means per (workload, architecture, scope) over traces."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["workload"], r["architecture"], r["scope"]), []).append(r)
    out = []
    for (workload, arch, scope), rs in groups.items():
        entry: dict[str, Any] = {"workload": workload, "architecture": arch, "scope": scope, "traces": len(rs), "policies": {}}
        flags = [r["in_sample"] for r in rs if "in_sample" in r]
        if flags:  # learned evaluated: in sample if any trace is, unknown if any cannot tell
            entry["in_sample"] = True if True in flags else (None if None in flags else False)
        for name in rs[0]["policies"]:
            reads = sum(r["policies"][name]["reads"] for r in rs)
            agg: dict[str, Any] = {"reads": reads}
            for m in METRICS:
                agg[m] = (
                    sum((r["policies"][name][m] or 0.0) * r["policies"][name]["reads"] for r in rs) / reads if reads else None
                )
            entry["policies"][name] = agg
        out.append(entry)
    return out


def provenance_line(report: dict[str, Any]) -> str:
    """One line: the learned model's training and evaluated seeds, and whether they overlap."""
    fmt = lambda seeds: ", ".join("?" if x is None else str(x) for x in seeds) or "?"  # noqa: E731
    state = {True: "IN SAMPLE", False: "not in sample", None: "in sample: unknown"}[report["in_sample"]]
    return (f"learned: trained on seed(s) {fmt(report['train_seeds'])}, evaluated on seed(s) {fmt(report['eval_seeds'])}: "
            f"{state} ({report['in_sample_reason']})")


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as text tables: a summary, then recall@D by phase per trace."""
    D, k = report["lookahead"], report["topk"]
    lines = []
    if "in_sample" in report:
        lines.append(provenance_line(report))
        lines.append("")
    head = f"{'workload':<16} {'scope':<15} {'policy':<8} {'top-1':>7} {f'top-{k}':>7} {f'recall@{D}':>9} {'coverage':>8} {'reads':>7}"
    lines.append(head)
    lines.append("-" * len(head))
    for s in report["summary"]:
        for name, m in s["policies"].items():
            vals = " ".join(f"{(m[x] or 0) * 100:6.2f}%" if x != "recall" else f"{(m[x] or 0) * 100:8.2f}%"
                            for x in ("top1", "topk", "recall", "coverage"))  # fmt: skip
            flag = ""
            if name == "learned" and "in_sample" in s:
                flag = {True: "  IN SAMPLE", None: "  in sample?", False: ""}[s["in_sample"]]
            lines.append(f"{str(s['workload'])[:16]:<16} {s['scope']:<15} {name:<8} {vals} {m['reads']:>7}{flag}")
    lines.append("")
    lines.append(f"recall@{D} by phase of the predicted read:")
    phases = [p.name.lower() for p in Phase]
    lines.append(f"{'trace':<28} {'policy':<8} " + " ".join(f"{p:>9}" for p in phases) + f" {'us/event':>9}")
    for r in report["traces"]:
        label = f"{r['workload']} s{r['seed']} ({'steps' if r['scope'] == HELD_OUT_STEPS else 'run'})"
        if r.get("in_sample"):
            label = f"IN SAMPLE {r['workload']} s{r['seed']}"
        for name, m in r["policies"].items():
            cells = []
            for p in phases:
                v = m["by_phase"].get(p)
                cells.append(f"{v['recall'] * 100:8.2f}%" if v and v["reads"] else f"{'-':>9}")
            lines.append(f"{label[:28]:<28} {name:<8} " + " ".join(cells) + f" {m['us_per_event']:9.1f}")
    return "\n".join(lines)

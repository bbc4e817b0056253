"""The report's data: one row per run (and per workload for the oracle), seed summaries, sweep points.

What report.json holds; the tables and plots only format these rows.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

from predictor.policies import POLICIES
from prefetch.report_inputs import ORACLE, ReportError, Source, SweepPoint, _as_parts, _policy_name
from runtime.run_report import IDENTITY_KEYS, RunReport


POLICY_ORDER = tuple(POLICIES)
"""Table and plot order of the policies (the registry's); others follow in order of appearance, the oracle last."""
ORACLE_LABEL = "oracle (sim)"
MiB = 2**20


# -- rows -----------------------------------------------------------------------------------


def _seed_list(x: Any) -> list[int] | None:
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        return sorted(set(x))
    return None


_SUFFIX = re.compile(r"-(train|heldout|held-out|test|eval|run|seed\d+|s\d+)$")


def _workload_of(r: RunReport | SweepPoint, known: Sequence[str] = ()) -> str:
    """A report's workload: its `workload`, else guessed from its trace's name."""
    if r.workload:
        return r.workload
    trace = r.trace
    if not trace and isinstance(r, RunReport) and r.traces:
        trace = r.traces[0].trace
    if not trace:
        return (r.architecture if isinstance(r, RunReport) else None) or "?"
    name = Path(trace).name
    for w in sorted(known, key=len, reverse=True):
        if name == w or name.startswith(w + "-"):
            return w
    return _SUFFIX.sub("", name) or name


def _row(r: RunReport, kind: str, source: Source, known: Sequence[str]) -> dict[str, Any]:
    s, live, ident, prov = r.stats, r.live, r.identity, r.provenance or {}
    book = (live.overhead or {}).get("bookkeeping_s") if live is not None else None
    train, demo_train = _seed_list(prov.get("train_seeds")), _seed_list(r.demo_train_seeds)
    return {
        "workload": _workload_of(r, known),
        "policy": ORACLE_LABEL if kind == ORACLE else _policy_name(r.policy),
        "policy_spec": r.policy,
        "kind": kind,
        "device": r.device,
        "hit_rate": r.hit_rate,  # strict: hits / accesses
        "accesses": s.accesses,
        "hits": s.hits,
        "late": s.late,
        "misses": s.misses,
        "stall_s": s.stall_ns / 1e9,
        "bookkeeping_ms": 1e3 * book if isinstance(book, (int, float)) else None,  # per step (runtime.overhead)
        "slowdown": r.slowdown,
        "step_time_s": r.step_time_s,
        "baseline_step_time_s": r.baseline_step_time_s,
        "bytes_copied": s.bytes_copied,
        "mib_copied": s.bytes_copied / MiB,
        "prefetch_issued": s.prefetch_issued,
        "prefetch_used": s.prefetch_used,
        "accuracy": s.accuracy,
        **{k: getattr(ident, k) if ident is not None else None for k in IDENTITY_KEYS},
        "seed": r.seed,
        "in_sample": r.in_sample,
        "in_sample_reported": "in_sample" in prov,
        "in_sample_reason": prov.get("in_sample_reason"),
        "train_seeds": train or demo_train,
        "train_seeds_from": "report" if train else ("demo" if demo_train else None),
        "eval_seeds": _seed_list(prov.get("eval_seeds")),
        "managed_bytes": r.managed_bytes,
        "budget_bytes": r.budget_bytes,
        "budget_fraction": r.budget_fraction,
        "peak_device_bytes": r.peak_device_bytes,
        "steps": r.steps,
        "warmup_steps": r.warmup_steps,
        "link": r.link,
        "simulated_hit_rate": r.simulated_hit_rate,
        "simulated_slowdown": r.simulated_slowdown,
        "oracle_hit_rate": r.simulated_oracle_hit_rate,
        "sim_vs_oracle_pt": None,
        "oracle_variant": r.variant,
        "timeline": r.timeline,
        "served_by": live.policy_served_by if live is not None else None,
        "policy_note": live.policy_note if live is not None else None,
        "source": source,
    }


def _policy_rank(order: list[str]):
    def rank(name: str) -> tuple[int, int]:
        if name == ORACLE_LABEL:
            return (2, 0)
        if name in POLICY_ORDER:
            return (0, POLICY_ORDER.index(name))
        return (1, order.index(name) if name in order else len(order))
    return rank


def build_rows(docs: Any) -> list[dict[str, Any]]:
    """The per-run rows: one per run, then one per (workload, seed) for the oracle (kind 'oracle').

    docs: parsed JSON documents (run reports, lists of them, results documents), or
    (source, document) pairs, or the Parts of load_inputs(). Rows are ordered by workload
    (first appearance) then policy (none, replay, markov, learned, others, oracle), then
    input order. The hit rate is strict: hits / accesses (late hits are not hits). The
    oracle is simulated, so a run is set against it only through its own simulated hit rate
    on the same trace (`sim_vs_oracle_pt`), never through its live figures."""
    parts = _as_parts(docs)
    if not parts.runs and not parts.oracle:
        raise ReportError("no run reports in the inputs")
    known = [r.workload for r, _ in parts.runs if r.workload]
    rows = [_row(r, "run", s, known) for r, s in parts.runs]
    seen_oracle: set[tuple[str, int | None]] = set()
    oracle: dict[tuple[str, int | None], float | None] = {}
    for r, s in parts.oracle:
        row = _row(r, ORACLE, s, known)
        key = (row["workload"], row["seed"])
        if key in seen_oracle:  # one oracle per trace: the first
            continue
        seen_oracle.add(key)
        oracle[key] = row["hit_rate"]
        rows.append(row)
    for r in rows:
        if r["kind"] == ORACLE:
            continue
        if r["oracle_hit_rate"] is None and r["simulated_hit_rate"] is not None:
            r["oracle_hit_rate"] = oracle.get((r["workload"], r["seed"]))  # the same trace only
        if r["oracle_hit_rate"] is not None and r["simulated_hit_rate"] is not None:
            r["sim_vs_oracle_pt"] = 100 * (r["simulated_hit_rate"] - r["oracle_hit_rate"])
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    rank = _policy_rank(policies)
    rows.sort(key=lambda r: (workloads.index(r["workload"]), rank(r["policy"])))  # stable: input order kept
    return rows


def _spread(values: Iterable[Any]) -> dict[str, float] | None:
    """{'median', 'min', 'max', 'n'} of the values that are numbers, or None."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def _all_true(values: Iterable[bool | None]) -> bool | None:
    """False if any is False; True if all are True; None (not reported) otherwise."""
    vals = list(values)
    if any(v is False for v in vals):
        return False
    return True if vals and all(v is True for v in vals) else None


def summarize(rows: list[dict[str, Any]], protocol: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per (workload, policy) over its runs (seeds): median with min-max.

    Learned runs flagged in sample are left out of every figure (`refused` counts them): they
    measure the training data, not the predictor. The oracle row (kind 'oracle') holds only
    simulated figures. `fastest` marks, per workload, the policy with the lowest median live
    slowdown, `none` included, so a table shows when prefetching does not pay."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["policy"]), []).append(r)
    protocol = protocol or {}
    out = []
    for (workload, policy), group in groups.items():
        kind = group[0]["kind"]
        refused = [r for r in group if r["in_sample"] is True]
        used = [r for r in group if r["in_sample"] is not True]
        seeds = sorted({r["seed"] for r in used if r["seed"] is not None})
        train = sorted({s for r in used for s in (r["train_seeds"] or [])})
        learned = policy == "learned"
        if learned and not train and protocol.get("train_seeds"):
            train = list(protocol["train_seeds"])
        srow = {
            "workload": workload, "policy": policy, "kind": kind, "runs": len(used), "refused": len(refused),
            "seeds": seeds,
            "train_seeds": train if learned else None,
            "in_sample": (True if refused else _all_false(r["in_sample"] for r in used)) if learned else None,
            "in_sample_reported": all(r["in_sample_reported"] for r in group) if learned else None,
            "device": ", ".join(dict.fromkeys(r["device"] for r in group)),
            "budget_fraction": _same(r["budget_fraction"] for r in group),
            "hit_rate": _spread(r["hit_rate"] for r in used),
            "late": _spread(r["late"] for r in used),
            "misses": _spread(r["misses"] for r in used),
            "stall_s": _spread(r["stall_s"] for r in used),
            "slowdown": _spread(r["slowdown"] for r in used),
            "mib_copied": _spread(r["mib_copied"] for r in used),
            "accuracy": _spread(r["accuracy"] for r in used),
            "simulated_hit_rate": _spread((r["hit_rate"] if kind == ORACLE else r["simulated_hit_rate"]) for r in used),
            "simulated_slowdown": _spread((r["slowdown"] if kind == ORACLE else r["simulated_slowdown"]) for r in used),
            "sim_vs_oracle_pt": _spread(r["sim_vs_oracle_pt"] for r in used),
            "fastest": False,
            "served_by": sorted({_policy_name(r["served_by"]) for r in group
                                 if r.get("served_by") and _policy_name(r["served_by"]) != policy}),
        }
        for key in ("losses_identical", "params_identical", "optimizer_state_identical"):
            srow[key] = None if kind == ORACLE else _all_true(r[key] for r in used)
        out.append(srow)
    for workload in dict.fromkeys(s["workload"] for s in out):
        cands = [s for s in out if s["workload"] == workload and s["kind"] == "run" and s["slowdown"]]
        if cands:
            min(cands, key=lambda s: s["slowdown"]["median"])["fastest"] = True
    return out


def _all_false(values: Iterable[bool | None]) -> bool | None:
    vals = list(values)
    if any(v is True for v in vals):
        return True
    return False if vals and all(v is False for v in vals) else None


def build_sweep(docs: Any) -> list[dict[str, Any]]:
    """The sweep points: {workload, policy, policy_spec, budget_fraction, hit_rate, slowdown}."""
    parts = _as_parts(docs)
    known = [r.workload for r, _ in parts.runs if r.workload]
    return [{"workload": _workload_of(p, known), "policy": _policy_name(p.policy), "policy_spec": p.policy,
             "budget_fraction": p.budget_fraction, "hit_rate": p.hit_rate, "slowdown": p.slowdown, "source": source}
            for p, source in parts.sweep if p.budget_fraction is not None]


def _same(values: Iterable[Any], tol: float = 0.005) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(abs(v - vals[0]) <= tol for v in vals):
        return vals[0]
    return None

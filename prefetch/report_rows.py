"""The report's data: one row per run (and per workload for the oracle), seed summaries, sweep points.

What report.json holds; the tables and plots only format these rows.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

from predictor.policies import POLICIES
from prefetch.report_inputs import ORACLE, ReportError, Source, _as_parts, _policy_name


POLICY_ORDER = tuple(POLICIES)
"""Table and plot order of the policies (the registry's); others follow in order of appearance, the oracle last."""
ORACLE_LABEL = "oracle (sim)"
MiB = 2**20


# -- rows -----------------------------------------------------------------------------------




def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _bool(x: Any) -> bool | None:
    return x if isinstance(x, bool) else None


def _seed_list(x: Any) -> list[int] | None:
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        return sorted(set(x))
    return None


def _int(x: Any) -> int | None:
    v = _num(x)
    return int(v) if v is not None else None


_SUFFIX = re.compile(r"-(train|heldout|held-out|test|eval|run|seed\d+|s\d+)$")


def _workload_of(d: dict[str, Any], known: Sequence[str] = ()) -> str:
    """A report's workload: its 'workload', else guessed from its trace's name."""
    if d.get("workload"):
        return str(d["workload"])
    trace = d.get("trace")
    if not trace and d.get("traces"):
        sub = d["traces"][0]
        trace = sub.get("trace") if isinstance(sub, dict) else None
    if not trace:
        return str(d.get("architecture") or "?")
    name = Path(str(trace)).name
    for w in sorted(known, key=len, reverse=True):
        if name == w or name.startswith(w + "-"):
            return w
    return _SUFFIX.sub("", name) or name


def _row(d: dict[str, Any], kind: str, source: Source, known: Sequence[str]) -> dict[str, Any]:
    accesses, hits = _int(d.get("accesses")), _int(d.get("hits"))
    hit_rate = hits / accesses if (accesses and hits is not None) else _num(d.get("hit_rate"))
    managed, budget = _int(d.get("managed_bytes")), _int(d.get("budget_bytes"))
    copied = _int(d.get("bytes_copied"))
    return {
        "workload": _workload_of(d, known),
        "policy": ORACLE_LABEL if kind == ORACLE else _policy_name(d["policy"]),
        "policy_spec": str(d["policy"]),
        "kind": kind,
        "device": str(d.get("device") or "?"),
        "hit_rate": hit_rate,
        "accesses": accesses,
        "hits": hits,
        "late": _int(d.get("late")),
        "misses": _int(d.get("misses")),
        "stall_s": _num(d.get("stall_s")),
        "bookkeeping_ms": (1e3 * b if (b := _num((d.get("overhead") or {}).get("bookkeeping_s"))) is not None
                           else None),  # per step (runtime.overhead)
        "slowdown": _num(d.get("slowdown")),
        "step_time_s": _num(d.get("step_time_s")),
        "baseline_step_time_s": _num(d.get("baseline_step_time_s")),
        "bytes_copied": copied,
        "mib_copied": copied / MiB if copied is not None else None,
        "prefetch_issued": _int(d.get("prefetch_issued")),
        "prefetch_used": _int(d.get("prefetch_used")),
        "accuracy": _num(d.get("accuracy")),
        "losses_identical": _bool(d.get("losses_identical")),
        "params_identical": _bool(d.get("params_identical")),
        "optimizer_state_identical": _bool(d.get("optimizer_state_identical")),
        "seed": _int(d.get("seed")),
        "in_sample": _bool(d.get("in_sample")) if "in_sample" in d else None,
        "in_sample_reported": "in_sample" in d,
        "in_sample_reason": d.get("in_sample_reason"),
        "train_seeds": _seed_list(d.get("train_seeds")) or _seed_list(d.get("demo_train_seeds")),
        "train_seeds_from": "report" if _seed_list(d.get("train_seeds")) else
                            ("demo" if _seed_list(d.get("demo_train_seeds")) else None),
        "eval_seeds": _seed_list(d.get("eval_seeds")),
        "managed_bytes": managed,
        "budget_bytes": budget,
        "budget_fraction": budget / managed if (managed and budget is not None) else _num(d.get("budget_fraction")),
        "peak_device_bytes": _int(d.get("peak_device_bytes")),
        "steps": _int(d.get("steps")),
        "warmup_steps": _int(d.get("warmup_steps")),
        "link": d.get("link") if isinstance(d.get("link"), dict) else None,
        "simulated_hit_rate": _num(d.get("simulated_hit_rate")),
        "simulated_slowdown": _num(d.get("simulated_slowdown")),
        "oracle_hit_rate": _num(d.get("simulated_oracle_hit_rate")),
        "sim_vs_oracle_pt": None,
        "oracle_variant": d.get("oracle_variant"),
        "timeline": d.get("timeline"),
        "served_by": d.get("policy_served_by"),
        "policy_note": d.get("policy_note"),
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
    known = [str(r["workload"]) for r, _ in parts.runs if r.get("workload")]
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


def _budget_fraction(d: dict[str, Any]) -> float | None:
    if _num(d.get("budget_fraction")) is not None:
        return _num(d["budget_fraction"])
    managed = _int(d.get("managed_bytes"))
    b = d.get("budget")
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        if b <= 1.0:
            return float(b)
        return b / managed if managed else None
    if isinstance(b, str):
        try:
            from runtime.budget import parse_budget

            pb = parse_budget(b)
        except ValueError:
            return None
        if pb.fraction is not None:
            return pb.fraction
        return pb.nbytes / managed if managed else None
    budget_bytes = _int(d.get("budget_bytes"))
    return budget_bytes / managed if (budget_bytes is not None and managed) else None


def build_sweep(docs: Any) -> list[dict[str, Any]]:
    """The sweep points: {workload, policy, policy_spec, budget_fraction, hit_rate, slowdown}."""
    parts = _as_parts(docs)
    known = [str(r["workload"]) for r, _ in parts.runs if r.get("workload")]
    out = []
    for d, source in parts.sweep:
        frac = _budget_fraction(d)
        if frac is None:
            continue
        out.append({
            "workload": _workload_of(d, known),
            "policy": _policy_name(d["policy"]),
            "policy_spec": str(d["policy"]),
            "budget_fraction": frac,
            "hit_rate": _num(d.get("hit_rate")),
            "slowdown": _num(d.get("slowdown")),
            "source": source,
        })
    return out


def _same(values: Iterable[Any], tol: float = 0.005) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(abs(v - vals[0]) <= tol for v in vals):
        return vals[0]
    return None

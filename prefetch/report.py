"""Run reports -> a report a person wants to look at: Markdown + JSON table, PNG plots, a timeline.

    prefetch report out/demo/results.json --out out/demo/report
    prefetch report runs/gpt2-replay.json runs/gpt2-learned.json --out report/ --title "gpt2 at 40%"

    from prefetch.report import build_rows, format_markdown, write_report
    written = write_report(["out/demo/results.json"], "out/report")   # {"markdown": Path, ...}

Inputs are JSON files, each one of:
  * one run report (`prefetch run --json`, `Prefetcher.report()` plus `workload`);
  * a list of run reports (simulator reports with policy "oracle" in it count as oracles);
  * a results document (what `prefetch demo` writes):
        {"machine": {...}, "runs": [run reports], "oracle": [simulator reports],
         "sweep": [{"workload", "policy", "budget", "hit_rate", "slowdown"}, ...]}
    every part optional except that, over all inputs, there must be at least one run;
  * a simulator sweep (`prefetch simulate --sweep --json`): {"sweep": [simulator reports]}.

Writes into the output folder:
  report.md            the table: workload x policy -> hit rate (strict: hits / accesses),
                       late, misses, stall, slowdown vs all resident, MiB copied, accuracy,
                       losses identical, the gap to the oracle; a row per workload for the
                       (simulated) oracle; device, link, budget and a legend
  report.json          the same rows (and the sweep, the machine, the inputs)
  hit_rate.png         grouped bars: hit rate per policy per workload, oracle as a line
  slowdown.png         grouped bars: step time / all resident per policy per workload
  budget_sweep.png     hit rate and slowdown over the budget (only with sweep data)
  timeline.trace.json  a copy of the first run's timeline (Perfetto / chrome://tracing)

The policy "learned:SOME/DIR" is shown as "learned" (the full spec stays in report.json).
Plots use matplotlib's object API with the Agg canvas: no pyplot, no global backend change.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from predictor.policies import POLICIES

POLICY_ORDER = tuple(POLICIES)
"""Table and plot order of the policies (the registry's); others follow in order of appearance, the oracle last."""
ORACLE = "oracle"
ORACLE_LABEL = "oracle (sim)"
MiB = 2**20
POLICY_COLORS = {
    "none": "#9e9e9e",
    "replay": "#1f77b4",
    "markov": "#ff7f0e",
    "learned": "#2ca02c",
}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
SLOWDOWN_TARGET = 1.08
"""The issue's target for learned on static workloads: drawn as a reference line."""

Source = str
"""Where a document came from (a file name), for error messages and report.json."""


class ReportError(ValueError):
    """An input that cannot be reported on: the message names the file."""


# -- reading --------------------------------------------------------------------------------


@dataclass
class Parts:
    """What the inputs hold, sorted by kind; each item keeps its source."""

    runs: list[tuple[dict[str, Any], Source]] = field(default_factory=list)
    oracle: list[tuple[dict[str, Any], Source]] = field(default_factory=list)
    sweep: list[tuple[dict[str, Any], Source]] = field(default_factory=list)
    machine: dict[str, Any] | None = None
    protocol: dict[str, Any] | None = None
    """The evaluation protocol of a `prefetch demo` results document (training/evaluation seeds)."""


def load_document(path: str | os.PathLike[str]) -> Any:
    """The parsed JSON of one input file; ReportError (naming the file) if missing or invalid."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{p}: no such file")
    if p.is_dir():
        raise ReportError(f"{p}: is a directory; pass the JSON files (e.g. {p}/*.json)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{p}: not valid JSON (not UTF-8 text)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{p}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _is_report(d: Any) -> bool:
    return isinstance(d, dict) and "policy" in d and ("hit_rate" in d or "accesses" in d)


def _check_report(d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ReportError(f"{where} is not a report (a JSON object), got {type(d).__name__}")
    if "policy" not in d:
        raise ReportError(f"{where} is not a run report: it has no 'policy'")
    if d.get("hit_rate") is None and not ("hits" in d and "accesses" in d):
        raise ReportError(f"{where} ({d['policy']}) has neither 'hit_rate' nor 'hits' and 'accesses'")
    return d


def split_document(doc: Any, source: Source, parts: Parts | None = None) -> Parts:
    """Sort one document's run reports, oracle reports and sweep points into `parts`."""
    parts = parts if parts is not None else Parts()
    expected = "expected a run report, a list of them, or a results document with 'runs'"
    if isinstance(doc, list):
        if not doc:
            raise ReportError(f"{source}: no run reports in it (an empty list)")
        for i, item in enumerate(doc):
            r = _check_report(item, f"{source}: item {i}")
            (parts.oracle if _policy_name(r["policy"]) == ORACLE else parts.runs).append((r, source))
        return parts
    if not isinstance(doc, dict):
        raise ReportError(f"{source}: no run reports in it (a JSON {type(doc).__name__}); {expected}")
    if _is_report(doc):
        _check_report(doc, source)
        (parts.oracle if _policy_name(doc["policy"]) == ORACLE else parts.runs).append((doc, source))
        return parts
    if not any(k in doc for k in ("runs", "oracle", "sweep")):
        keys = ", ".join(list(doc)[:6]) or "none"
        raise ReportError(f"{source}: no run reports in it (keys: {keys}); {expected}")
    for key in ("runs", "oracle", "sweep"):
        items = doc.get(key)
        if items is None:
            continue
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise ReportError(f"{source}: '{key}' must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            where = f"{source}: {key}[{i}]"
            if key == "sweep":
                if not isinstance(item, dict) or "policy" not in item or "hit_rate" not in item:
                    raise ReportError(f"{where} is not a sweep point (needs policy, budget, hit_rate)")
                parts.sweep.append((item, source))
            else:
                r = _check_report(item, where)
                if key == "runs" and _policy_name(r["policy"]) == ORACLE:
                    parts.oracle.append((r, source))
                else:
                    (parts.runs if key == "runs" else parts.oracle).append((r, source))
    if isinstance(doc.get("machine"), dict) and parts.machine is None:
        parts.machine = doc["machine"]
    if isinstance(doc.get("protocol"), dict) and parts.protocol is None:
        parts.protocol = doc["protocol"]
    if not doc.get("runs") and not doc.get("oracle") and not doc.get("sweep"):
        raise ReportError(f"{source}: no run reports in it ('runs' is empty or missing)")
    return parts


def load_inputs(paths: Sequence[str | os.PathLike[str]]) -> Parts:
    """Read and sort every input; ReportError naming the file for the first bad one."""
    if not paths:
        raise ReportError("no input files: pass one or more run report JSON files")
    parts = Parts()
    for p in paths:
        split_document(load_document(p), str(p), parts)
    if not parts.runs:
        names = ", ".join(str(p) for p in paths)
        raise ReportError(f"no run reports in {names} (only oracle or sweep data): nothing to tabulate")
    return parts


def _as_parts(docs: Any) -> Parts:
    """build_rows' input: a Parts, or documents (each optionally a (source, doc) pair)."""
    if isinstance(docs, Parts):
        return docs
    if isinstance(docs, dict):
        docs = [docs]
    parts = Parts()
    for i, d in enumerate(docs):
        if isinstance(d, tuple) and len(d) == 2 and isinstance(d[0], (str, os.PathLike)):
            split_document(d[1], str(d[0]), parts)
        else:
            split_document(d, f"input {i + 1}", parts)
    return parts


# -- rows -----------------------------------------------------------------------------------


def _policy_name(spec: Any) -> str:
    """'learned:/x/y' -> 'learned'; 'learned -> learned:/x' -> 'learned'; others unchanged."""
    s = str(spec).strip()
    s = s.split(" -> ")[0].strip()
    return s.partition(":")[0] if ":" in s else s


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


# -- Markdown -------------------------------------------------------------------------------


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _describe_device(rows: list[dict[str, Any]], machine: dict[str, Any] | None) -> str:
    devices = list(dict.fromkeys(r["device"] for r in rows if r["kind"] == "run"))
    out = []
    for d in devices:
        if d == "simulated":
            out.append("simulated device (no CUDA: copies run on a copy-engine thread and take the time "
                       "the link model gives)")
        elif d.startswith("cuda"):
            gpu = (machine or {}).get("device") or (machine or {}).get("cuda")
            out.append(f"{d} ({gpu})" if gpu and "simulated" not in str(gpu) else d)
        else:
            out.append(d)
    return "; ".join(out) or "unknown"


def _describe_link(rows: list[dict[str, Any]]) -> str | None:
    links = [(r["workload"], r["link"]) for r in rows if r["kind"] == "run" and r["link"]]
    if not links:
        return None
    ratios = {lk.get("ratio") for _, lk in links}
    lat = {lk.get("latency_us") for _, lk in links}
    bw: dict[str, float] = {}
    for w, lk in links:
        if lk.get("bandwidth_GBps") is not None:
            bw.setdefault(w, float(lk["bandwidth_GBps"]))
    parts = []
    if len(ratios) == 1 and None not in ratios:
        parts.append(f"ratio {ratios.pop():g} (copying every managed byte once takes that share of a step's "
                     "compute time)")
    if len(lat) == 1 and None not in lat:
        parts.append(f"latency {lat.pop():g} us per copy")
    if bw:
        parts.append("bandwidth " + ", ".join(f"{w} {v:.3g} GB/s" for w, v in bw.items()))
    return "; ".join(parts)


def _same(values: Iterable[Any], tol: float = 0.005) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(abs(v - vals[0]) <= tol for v in vals):
        return vals[0]
    return None


def _seed_text(seeds: Any) -> str:
    return ",".join(str(x) for x in seeds) if isinstance(seeds, (list, tuple)) and seeds else "?"


def _ident(v: bool | None) -> str:
    return "?" if v is None else ("yes" if v else "**NO**")


def _identity_cell(r: dict[str, Any]) -> str:
    """losses/params/optimizer state bit-identical to the all-resident twin ('?' = not reported)."""
    return "/".join(_ident(r[k]) for k in ("losses_identical", "params_identical", "optimizer_state_identical"))


def _med(sp: dict[str, float] | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "n/a" if sp is None else f"{scale * sp['median']:{spec}}{suffix}"


def _range(sp: dict[str, float] | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    """'median [min-max]' over the seeds; just the value for one run."""
    if sp is None:
        return "n/a"
    med = f"{scale * sp['median']:{spec}}{suffix}"
    if sp["n"] < 2:
        return med
    return f"{med} [{scale * sp['min']:{spec}}-{scale * sp['max']:{spec}}]"


def _seeds_cell(s: dict[str, Any]) -> str:
    text = ",".join(str(x) for x in s["seeds"]) or "?"
    if s["policy"] == "learned":
        text += "; trained " + (",".join(str(x) for x in s["train_seeds"]) if s["train_seeds"] else "?")
        if s["refused"]:
            text += f"; {s['refused']} in-sample run(s) refused"
        elif not s["in_sample_reported"]:
            text += "; in-sample not reported"
    return text


def format_table(rows: list[dict[str, Any]], protocol: dict[str, Any] | None = None) -> str:
    """The summary table (what `prefetch demo` prints): one row per workload and policy.

    Live figures are the median over the runs (seeds) with [min-max] for hit rate and
    slowdown; late, misses, stall and MiB copied are medians. The simulated columns replay
    each run's own trace; the oracle row has only simulated figures. The fastest policy
    per workload (lowest median slowdown, `none` included) is marked."""
    summary = summarize(rows, protocol)
    runs = [s for s in summary if s["kind"] == "run"]
    budget_col = _same(s["budget_fraction"] for s in runs) is None and any(s["budget_fraction"] for s in summary)
    device_col = len({s["device"] for s in runs}) > 1
    sim_col = any(s["simulated_hit_rate"] is not None for s in summary)
    cols = [("workload", "---"), ("policy", "---"), ("seeds", "---")]
    cols += [("device", "---")] if device_col else []
    cols += [("budget", "---:")] if budget_col else []
    cols += [(h, "---:") for h in ("hit rate", "late", "misses", "stall s", "slowdown", "MiB copied")]
    cols += [("identical loss/param/optim", ":---:")]
    cols += [("sim hit rate", "---:"), ("sim slowdown", "---:")] if sim_col else []
    head, align = [c[0] for c in cols], [c[1] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for s in summary:
        is_oracle = s["kind"] == ORACLE
        name = f"*{s['policy']}*" if is_oracle else s["policy"]
        if s["served_by"]:  # a fallback served (some of) these runs: they are not this policy's figures
            name += f" (served by {', '.join(s['served_by'])})"
        cells = [s["workload"], name, _seeds_cell(s)]
        if device_col:
            cells.append("simulated" if is_oracle else s["device"])
        if budget_col:
            bf = s["budget_fraction"]
            cells.append("n/a" if bf is None else f"{100 * bf:.0f}%")
        if is_oracle:
            cells += ["-"] * 7
        elif s["runs"] == 0 and s["refused"]:
            cells += ["REFUSED: in sample"] + ["-"] * 6
        else:
            slow = _range(s["slowdown"], ".3f", suffix="x") + (" **fastest**" if s["fastest"] else "")
            cells += [_range(s["hit_rate"], ".2f", 100, "%"), _med(s["late"], ".0f"), _med(s["misses"], ".0f"),
                      _med(s["stall_s"], ".3f"), slow, _med(s["mib_copied"], ".1f"), _identity_cell(s)]
        if sim_col:
            cells += [_range(s["simulated_hit_rate"], ".2f", 100, "%"), _med(s["simulated_slowdown"], ".3f", suffix="x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_runs_table(rows: list[dict[str, Any]]) -> str:
    """Every run on its own line (report.md's detail table), with its seed."""
    runs = [r for r in rows if r["kind"] == "run"]
    budget_col = _same(r["budget_fraction"] for r in runs) is None and any(r["budget_fraction"] for r in rows)
    device_col = len({r["device"] for r in runs}) > 1
    sim_col = any(r["simulated_hit_rate"] is not None for r in rows)
    oracle_col = any(r["sim_vs_oracle_pt"] is not None for r in rows)
    book_col = any(r.get("bookkeeping_ms") is not None for r in runs)
    cols = [("workload", "---"), ("policy", "---"), ("seed", "---:")]
    cols += [("device", "---")] if device_col else []
    cols += [("budget", "---:")] if budget_col else []
    cols += [(h, "---:") for h in ("hit rate", "late", "misses", "stall s")]
    cols += [("bookkeeping ms/step", "---:")] if book_col else []
    cols += [(h, "---:") for h in ("slowdown", "MiB copied", "accuracy")]
    cols += [("identical loss/param/optim", ":---:")]
    cols += [("sim hit rate", "---:"), ("sim slowdown", "---:")] if sim_col else []
    cols += [("sim vs oracle", "---:")] if oracle_col else []
    head, align = [c[0] for c in cols], [c[1] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        is_oracle = r["kind"] == ORACLE
        cells = [r["workload"], f"*{r['policy']}*" if is_oracle else r["policy"], _fmt(r["seed"], "d")]
        if device_col:
            cells.append("simulated" if is_oracle else r["device"])
        if budget_col:
            bf = r["budget_fraction"]
            cells.append("n/a" if bf is None else f"{100 * bf:.0f}%")
        if is_oracle:
            cells += ["-"] * (8 + book_col)
        elif r["in_sample"] is True:
            cells += ["REFUSED: in sample"] + ["-"] * (7 + book_col)
        else:
            cells += [
                _pct(r["hit_rate"]),
                _fmt(r["late"], "d"),
                _fmt(r["misses"], "d"),
                _fmt(r["stall_s"], ".3f"),
                *([_fmt(r.get("bookkeeping_ms"), ".2f")] if book_col else []),
                "n/a" if r["slowdown"] is None else f"{r['slowdown']:.3f}x",
                _fmt(r["mib_copied"], ".1f"),
                _pct(r["accuracy"], 1),
                _identity_cell(r),
            ]
        if sim_col:
            sim_hit = r["hit_rate"] if is_oracle else r["simulated_hit_rate"]
            sim_slow = r["slowdown"] if is_oracle else r["simulated_slowdown"]
            cells += ["" if sim_hit is None else _pct(sim_hit),
                      "" if sim_slow is None else f"{sim_slow:.3f}x"]
        if oracle_col:
            cells.append("" if r["sim_vs_oracle_pt"] is None else f"{r['sim_vs_oracle_pt']:+.2f} pt")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = """\
- **seeds**: the runs (seeds) behind a row; every live figure is their median, hit rate and slowdown
  with [min-max]. A learned row also names the seeds its model was trained on: the protocol keeps them
  disjoint, and a run whose report flags `in_sample` is refused, never shown as a result.
- **hit rate**: hits / accesses to managed tensors (parameters and saved activations) over the measured
  steps, warm-up excluded. Strict: a *late* access (its copy still in flight) is not a hit.
- **late**: accesses that found their prefetch in flight and waited for it; **misses**: accesses that found
  the tensor absent and fetched it synchronously.
- **stall s**: time the computation waited for copies (late + misses), summed over the measured steps.
- **bookkeeping ms/step**: the prefetcher's own code on the training thread (hooks, store, policy), per
  measured step; with stall and emulation it is the run's `overhead` split (docs/overhead.md).
- **slowdown**: step time over the same job with everything resident (1.000x = no cost); for `prefetch run`,
  the median per-step ratio against an all-resident twin stepped alternately. **fastest**: the lowest median
  slowdown of the workload, `none` (no prefetching) included: when it is `none`, prefetching did not pay.
- **MiB copied**: host-to-device bytes copied in the measured steps (MiB = 2^20 bytes).
- **accuracy**: prefetches used / prefetches issued.
- **identical loss/param/optim**: the prefetched run's losses, final parameters and optimizer state equal the
  all-resident twin's, bit for bit (`?`: not reported by the run).
- **sim hit rate / sim slowdown**: the simulator (prefetch.simulate) replaying each live run's own trace with
  the same policy, budget and link. ***oracle (sim)***: the offline bound on those same traces; it is
  simulated, so compare it with the sim columns only, never with live figures.
- **sim vs oracle**: a run's simulated hit rate minus the oracle's on the same trace, in percentage points."""


def format_markdown(rows: list[dict[str, Any]], *, title: str | None = None, machine: dict[str, Any] | None = None,
                    images: Sequence[str] = (), timeline: dict[str, Any] | None = None,
                    inputs: Sequence[str] = (), notes: Sequence[str] = (),
                    protocol: dict[str, Any] | None = None) -> str:
    """The whole report.md: title, setup (protocol, device, link, budget), the summary table,
    every run, the in-sample and bit-identity notes, legend, files."""
    runs = [r for r in rows if r["kind"] == "run"]
    out = [f"# {title or 'Prefetch report'}", ""]
    setup = []
    if protocol:
        setup.append(f"- **protocol**: learned trained on seeds {_seed_text(protocol.get('train_seeds'))} "
                     f"({protocol.get('train_steps', '?')} steps each); every policy run live on the unseen seeds "
                     f"{_seed_text(protocol.get('eval_seeds'))}, one run per seed; figures are the median over "
                     "them with [min-max]; simulated figures replay each live run's own trace")
    setup.append(f"- **device**: {_describe_device(rows, machine)}")
    link = _describe_link(rows)
    if link:
        setup.append(f"- **link** (simulated device): {link}")
    bf = _same(r["budget_fraction"] for r in runs)
    if bf is not None:
        setup.append(f"- **budget**: {100 * bf:.0f}% of the managed bytes (parameters and saved activations)")
    steps, warm = _same(r["steps"] for r in runs), _same(r["warmup_steps"] for r in runs)
    if steps is not None:
        setup.append(f"- **steps**: {steps} measured per run" + (f", after {warm} warm-up" if warm is not None else ""))
    if machine:
        keys = ("cpu_count", "platform", "python", "torch", "torch_threads", "transformers", "lightgbm", "pyzmq")
        facts = ", ".join(f"{k} {machine[k]}" for k in keys if machine.get(k) is not None)
        if facts:
            setup.append(f"- **machine**: {facts}")
    summary = summarize(rows, protocol)
    out += setup + ["", format_table(rows, protocol), ""]
    slow = [s for s in summary if s["fastest"] and s["policy"] == "none"]
    if slow:
        out += ["Prefetching did not pay (no prefetching, `none`, was fastest) on: "
                + ", ".join(s["workload"] for s in slow) + ".", ""]
    refused = [s for s in summary if s["refused"]]
    if refused:
        out += ["**Refused (in sample: the evaluated run overlaps the model's training data): "
                + ", ".join(f"{s['workload']}/{s['policy']} ({s['refused']} run(s))" for s in refused)
                + ". Their figures are not shown.**", ""]
    unknown = [s for s in summary if s["policy"] == "learned" and s["in_sample_reported"] is False]
    if unknown:
        out += ["In-sample not reported (unknown) for the learned runs of "
                + ", ".join(s["workload"] for s in unknown)
                + ": their reports carry no `in_sample` flag" + (
                    f"; by the protocol the training seeds ({_seed_text(protocol.get('train_seeds'))}) and "
                    f"evaluation seeds ({_seed_text(protocol.get('eval_seeds'))}) are disjoint" if protocol else "")
                + ".", ""]
    for r in runs:
        served = r.get("served_by")
        if served and _policy_name(served) != r["policy"]:
            out += [f"Note: {r['workload']} / {r['policy']} was served by `{served}`"
                    + (f" ({r['policy_note']})" if r.get("policy_note") else "") + ".", ""]
    bad = [f"{r['workload']}/{r['policy']}" + (f" seed {r['seed']}" if r["seed"] is not None else "")
           + " (" + ", ".join(k.replace("_identical", "") for k in
                               ("losses_identical", "params_identical", "optimizer_state_identical")
                               if r[k] is False) + ")"
           for r in runs if False in (r["losses_identical"], r["params_identical"], r["optimizer_state_identical"])]
    if bad:
        out += [f"**Not bit-identical to the all-resident run (losses differ, or the final parameters or "
                f"optimizer state): {', '.join(bad)}.**", ""]
    if len(runs) > len(summary):
        out += ["Every run:", "", format_runs_table(rows), ""]
    out += list(notes) + ([""] if notes else [])
    out += ["Legend:", "", LEGEND, ""]
    if images:
        out += ["Figures:", ""] + [f"- ![{Path(i).stem}]({Path(i).name})" for i in images] + [""]
    if timeline:
        out += [
            f"Timeline: [`{Path(timeline['path']).name}`]({Path(timeline['path']).name}) is the run "
            f"**{timeline['workload']} / {timeline['policy']}** (from `{timeline['from']}`). Open it in "
            "https://ui.perfetto.dev (\"Open trace file\") or in Chrome at chrome://tracing (\"Load\"). "
            "Tracks: *compute* (one slice per step; stalls marked: late waits and demand fetches) and "
            "*copy engine* (every host-to-device and device-to-host copy).",
            "",
        ]
    if inputs:
        out += ["Inputs: " + ", ".join(f"`{i}`" for i in inputs), ""]
    return "\n".join(out)


# -- plots ----------------------------------------------------------------------------------


def _colors(policies: Sequence[str]) -> dict[str, str]:
    colors, extra = {}, iter(_EXTRA_COLORS * 4)
    for p in policies:
        colors[p] = POLICY_COLORS.get(p) or next(extra)
    return colors


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _grouped_bars(rows: list[dict[str, Any]], path: Path, *, metric: str, title: str, ylabel: str,
                  as_pct: bool, ref: float | None = None, ref_label: str = "") -> None:
    runs = [r for r in rows if r["kind"] == "run" and r[metric] is not None]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    colors = _colors(policies)
    scale = 100.0 if as_pct else 1.0
    per: dict[tuple[str, str], list[float]] = {}
    for r in runs:  # in-sample learned runs are refused, never plotted
        if r["in_sample"] is not True:
            per.setdefault((r["workload"], r["policy"]), []).append(scale * r[metric])
    value = {k: statistics.median(v) for k, v in per.items()}  # bars: the median over seeds
    spread = {k: (value[k] - min(v), max(v) - value[k]) for k, v in per.items()}  # whiskers: min-max
    # The oracle is simulated: it is not drawn over live bars (the table sets it beside simulated figures).
    oracle: dict[str, float] = {}
    n = max(len(policies), 1)
    width = 0.8 / n
    fig = _figure(max(7.0, 0.5 * len(workloads) * max(n, 2) + 2.0), 4.8)
    ax = fig.add_subplot()
    top = max([*value.values(), *oracle.values(), 1.0])
    label_size = 8 if len(workloads) * n <= 16 else 7
    for j, p in enumerate(policies):
        xs = [i + (j - (n - 1) / 2) * width for i, w in enumerate(workloads) if (w, p) in value]
        ys = [value[(w, p)] for w in workloads if (w, p) in value]
        errs = [[spread[(w, p)][0] for w in workloads if (w, p) in value],
                [spread[(w, p)][1] for w in workloads if (w, p) in value]]
        bars = ax.bar(xs, ys, width * 0.92, color=colors[p], label=p, zorder=2,
                      yerr=errs if any(errs[0] + errs[1]) else None, ecolor="black", capsize=2)
        for b, y in zip(bars, ys):
            text = f"{y:.1f}" if as_pct else f"{y:.2f}"
            inside = y > 0.35 * top
            if inside and not as_pct:  # at the base: clear of the oracle line near the tops
                xy, va = (b.get_x() + b.get_width() / 2, 0.02 * top), "bottom"
            else:
                xy = (b.get_x() + b.get_width() / 2, y - 0.015 * top if inside else y + 0.015 * top)
                va = "top" if inside else "bottom"
            ax.text(*xy, text, rotation=90, ha="center", va=va, fontsize=label_size,
                    color="white" if inside and p != "none" else "black", zorder=3)
    first_oracle = True
    for i, w in enumerate(workloads):
        if w in oracle:
            y = oracle[w]
            ax.hlines(y, i - 0.45, i + 0.45, colors="black", linestyles="--", lw=1.6, zorder=4,
                      label=ORACLE_LABEL if first_oracle else None)
            first_oracle = False
            ax.text(i + 0.45, y + 0.012 * top, f"oracle {y:.1f}" if as_pct else f"oracle {y:.2f}", ha="right",
                    va="bottom", fontsize=label_size, zorder=5,
                    bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
    if ref is not None:
        ax.axhline(ref, color="#555555", lw=1.0, ls=":", zorder=1, label=ref_label or None)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_xlim(-0.6, len(workloads) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("workload")
    ax.set_title(title)
    if as_pct:
        ax.set_ylim(0, 112)
        ax.set_yticks(range(0, 101, 20))
    else:
        ax.set_ylim(0, top * 1.15)
    ax.grid(axis="y", color="#dddddd", zorder=0)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6),
               frameon=False)
    fig.savefig(path)


def plot_hit_rate(rows: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Grouped bars: strict live hit rate per policy per workload, median over seeds with min-max whiskers."""
    path = Path(path)
    sub = _subtitle(rows)
    _grouped_bars(rows, path, metric="hit_rate", as_pct=True, ylabel="hit rate (% of accesses, strict)",
                  title=(title + ": " if title else "") + "hit rate per policy" + sub)
    return path


def plot_slowdown(rows: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Grouped bars: step time / all resident per policy per workload, median over seeds with min-max."""
    path = Path(path)
    _grouped_bars(rows, path, metric="slowdown", as_pct=False, ylabel="step time / all resident (x)",
                  title=(title + ": " if title else "") + "slowdown vs all resident" + _subtitle(rows),
                  ref=1.0, ref_label="all resident (1.0x)")
    return path


def _subtitle(rows: list[dict[str, Any]]) -> str:
    runs = [r for r in rows if r["kind"] == "run"]
    bf = _same(r["budget_fraction"] for r in runs)
    dev = list(dict.fromkeys(r["device"] for r in runs))
    bits = ([f"budget {100 * bf:.0f}%"] if bf is not None else []) + ([", ".join(dev)] if dev else [])
    return f"\n({', '.join(bits)})" if bits else ""


def plot_sweep(sweep: list[dict[str, Any]], path: str | os.PathLike[str], *, title: str | None = None,
               workloads: Sequence[str] | None = None, budget_mark: float | None = None) -> Path | None:
    """Hit rate and slowdown over the budget: one row of two panels per workload, a line per policy."""
    path = Path(path)
    points = [s for s in sweep if s["hit_rate"] is not None]
    names = list(dict.fromkeys(s["workload"] for s in points))
    if workloads:
        missing = [w for w in workloads if w not in names]
        if missing:
            raise ReportError(f"no sweep data for workload(s) {', '.join(missing)}; have {', '.join(names) or 'none'}")
        names = list(workloads)
    if not names:
        return None
    policies = list(dict.fromkeys(s["policy"] for s in points if s["policy"] != ORACLE))
    policies.sort(key=_policy_rank(policies))
    colors = _colors(policies)
    fig = _figure(10.5, 2.7 * len(names) + 0.9)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for i, w in enumerate(names):
        ax_hit, ax_slow = axes[i]
        for p in [*policies, ORACLE]:
            pts = sorted((s for s in points if s["workload"] == w and s["policy"] == p),
                         key=lambda s: s["budget_fraction"])
            if not pts:
                continue
            x = [100 * s["budget_fraction"] for s in pts]
            style = dict(color="black", ls="--", marker="D", ms=4) if p == ORACLE else dict(color=colors[p], marker="o", ms=4)
            label = ORACLE_LABEL if p == ORACLE else p
            ax_hit.plot(x, [100 * s["hit_rate"] for s in pts], label=label, lw=1.6, **style)
            ax_slow.plot(x, [s["slowdown"] if s["slowdown"] is not None else float("nan") for s in pts],
                         label=label, lw=1.6, **style)
        ax_hit.set_ylim(0, 102)
        ax_hit.set_ylabel("hit rate (%)")
        ax_slow.set_ylabel("step time / all resident (x)")
        ax_slow.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax_hit.set_title(f"{w}: hit rate", fontsize=10)
        ax_slow.set_title(f"{w}: slowdown", fontsize=10)
        for ax in (ax_hit, ax_slow):
            ax.grid(color="#e0e0e0")
            ax.set_xlim(0, 102)
            if budget_mark is not None:
                ax.axvline(100 * budget_mark, color="#d62728", lw=0.8, ls=":")
            if i == len(names) - 1:
                ax.set_xlabel("device budget (% of managed bytes)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if budget_mark is not None:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="#d62728", lw=0.8, ls=":"))
        labels.append(f"run budget ({100 * budget_mark:.0f}%)")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False)
    fig.suptitle((title + ": " if title else "") + "hit rate and slowdown over the device budget (simulated)",
                 fontsize=12)
    fig.savefig(path)
    return path


# -- the report -----------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _find_timeline(parts: Parts, which: str | None = None) -> tuple[Path, dict[str, Any], Source] | None:
    """The first run with an existing timeline file (of WORKLOAD/POLICY `which` when given)."""
    want_w, _, want_p = (which or "").partition("/")
    for r, source in parts.runs:
        t = r.get("timeline")
        if not t:
            continue
        if which and (str(r.get("workload")) != want_w or (want_p and _policy_name(r["policy"]) != want_p)):
            continue
        cand = [Path(t)] if Path(t).is_absolute() else [Path(t), Path(source).parent / t]
        for c in cand:
            if c.is_file():
                return c, r, source
    return None


def write_report(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 title: str | None = None, plots: bool = True, sweep_workloads: Sequence[str] | None = None,
                 timeline_run: str | None = None, stdout: TextIO | None = None) -> dict[str, Path]:
    """Read the inputs, write report.md, report.json, the PNGs and the timeline into out_dir.

    Returns the written paths: markdown, json, hit_rate_png, slowdown_png, budget_sweep_png (with
    sweep data), timeline (the first run that has one, or the run `timeline_run` names as
    WORKLOAD/POLICY, e.g. "gpt2/learned"). With `stdout`, the Markdown table is printed there."""
    parts = load_inputs(inputs)
    rows = build_rows(parts)
    sweep = build_sweep(parts)
    found = _find_timeline(parts, timeline_run)
    if found is None and timeline_run:
        raise ReportError(f"no run {timeline_run} (WORKLOAD/POLICY) with a timeline file in the inputs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    notes: list[str] = []

    images: list[str] = []
    if plots:
        written["hit_rate_png"] = plot_hit_rate(rows, out / "hit_rate.png", title=title)
        images.append("hit_rate.png")
        if any(r["slowdown"] is not None for r in rows):
            written["slowdown_png"] = plot_slowdown(rows, out / "slowdown.png", title=title)
            images.append("slowdown.png")
        if sweep:
            runs = [r for r in rows if r["kind"] == "run"]
            p = plot_sweep(sweep, out / "budget_sweep.png", title=title, workloads=sweep_workloads,
                           budget_mark=_same(r["budget_fraction"] for r in runs))
            if p is not None:
                written["budget_sweep_png"] = p
                images.append("budget_sweep.png")

    timeline_info = None
    if found is not None:
        src, run, source = found
        dst = out / "timeline.trace.json"
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        written["timeline"] = dst
        timeline_info = {"path": str(dst), "from": str(src), "workload": _workload_of(run),
                         "policy": _policy_name(run["policy"]), "policy_spec": run["policy"], "source": source}
    else:
        wanted = [r.get("timeline") for r, _ in parts.runs if r.get("timeline")]
        if wanted:
            notes.append(f"No timeline copied: {wanted[0]} (named by a run) was not found.")

    md = format_markdown(rows, title=title, machine=parts.machine, images=images, timeline=timeline_info,
                         inputs=[str(i) for i in inputs], notes=notes, protocol=parts.protocol)
    (out / "report.md").write_text(md + "\n")
    written["markdown"] = out / "report.md"
    doc = {
        "title": title,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": [str(i) for i in inputs],
        "machine": parts.machine,
        "protocol": parts.protocol,
        "summary": summarize(rows, parts.protocol),
        "rows": rows,
        "sweep": sweep,
        "timeline": timeline_info,
        "files": {k: Path(v).name for k, v in written.items()},
    }
    (out / "report.json").write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")
    written["json"] = out / "report.json"
    if stdout is not None:
        print(format_table(rows, parts.protocol), file=stdout)
    return written

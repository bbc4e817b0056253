"""The report's inputs: load JSON documents, read every report in them as a RunReport, sort them
into runs, oracle and sweep.

One module reads; every other report module takes the sorted `Parts` and uses attributes. A
report is read by runtime.run_report.RunReport.from_dict: a missing or mistyped key is a
one-line ReportError naming the file (and the item) and the key. A sweep point is either a
whole simulator report or the short point `prefetch demo` writes (SweepPoint).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from runtime.run_report import ReportFormatError, RunReport

ORACLE = "oracle"


Source = str
"""Where a document came from (a file name), for error messages and report.json."""


class ReportError(ValueError):
    """An input that cannot be reported on: the message names the file."""


# -- reading --------------------------------------------------------------------------------


@dataclass
class Parts:
    """What the inputs hold, sorted by kind; each item keeps its source."""

    runs: list[tuple[RunReport, Source]] = field(default_factory=list)
    oracle: list[tuple[RunReport, Source]] = field(default_factory=list)
    sweep: list[tuple["SweepPoint", Source]] = field(default_factory=list)
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


def read_report(d: Any, where: str) -> RunReport:
    """One report as a RunReport; ReportError naming `where` and the key when it is not one."""
    if not isinstance(d, dict):
        raise ReportError(f"{where} is not a report (a JSON object), got {type(d).__name__}")
    if "policy" not in d:
        raise ReportError(f"{where} is not a run report: it has no 'policy'")
    try:
        return RunReport.from_dict(d, source=where)
    except ReportFormatError as exc:
        raise ReportError(str(exc)) from None


@dataclass(kw_only=True, slots=True)
class SweepPoint:
    """One point of a budget sweep: a policy's simulated hit rate and slowdown at a budget."""

    policy: str
    budget_fraction: float | None
    """None when the budget cannot be read as a share of the managed bytes (the point is skipped)."""
    hit_rate: float | None
    slowdown: float | None
    workload: str | None = None
    trace: str | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "SweepPoint":
        """A simulator report (`prefetch simulate --sweep --json`) or a short point `{workload, policy,
        budget, hit_rate, slowdown}` (`prefetch demo`, whose budget may be a fraction, '60%' or a size)."""
        if not isinstance(d, dict) or "policy" not in d or "hit_rate" not in d:
            raise ReportError(f"{where} is not a sweep point (needs policy, budget, hit_rate)")
        if "accesses" in d:  # a whole report
            r = read_report(d, where)
            return cls(policy=r.policy, budget_fraction=r.budget_fraction, hit_rate=r.hit_rate, slowdown=r.slowdown,
                       workload=r.workload, trace=r.trace or (r.traces[0].trace if r.traces else None))
        hit, slow = d.get("hit_rate"), d.get("slowdown")
        for key, v in (("hit_rate", hit), ("slowdown", slow)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ReportError(f"{where}: sweep key '{key}' must be a number or null, got {v!r:.60}")
        return cls(policy=str(d["policy"]), budget_fraction=_budget_fraction(d), hit_rate=hit, slowdown=slow,
                   workload=str(d["workload"]) if d.get("workload") else None,
                   trace=str(d["trace"]) if d.get("trace") else None)


def _budget_fraction(d: dict[str, Any]) -> float | None:
    """A short sweep point's budget as a share of the managed bytes: its budget_fraction, else its
    budget (a fraction, '60%', or a size over its managed_bytes)."""
    frac, managed, b = d.get("budget_fraction"), d.get("managed_bytes"), d.get("budget")
    if isinstance(frac, (int, float)) and not isinstance(frac, bool):
        return float(frac)
    managed = managed if isinstance(managed, int) and not isinstance(managed, bool) else None
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return float(b) if b <= 1.0 else (b / managed if managed else None)
    if isinstance(b, str):
        from runtime.budget import parse_budget

        try:
            pb = parse_budget(b)
        except ValueError:
            return None
        if pb.fraction is not None:
            return pb.fraction
        return pb.nbytes / managed if managed else None
    return None


def split_document(doc: Any, source: Source, parts: Parts | None = None) -> Parts:
    """Sort one document's run reports, oracle reports and sweep points into `parts`."""
    parts = parts if parts is not None else Parts()
    expected = "expected a run report, a list of them, or a results document with 'runs'"
    if isinstance(doc, list):
        if not doc:
            raise ReportError(f"{source}: no run reports in it (an empty list)")
        for i, item in enumerate(doc):
            r = read_report(item, f"{source}: item {i}")
            (parts.oracle if _policy_name(r.policy) == ORACLE else parts.runs).append((r, source))
        return parts
    if not isinstance(doc, dict):
        raise ReportError(f"{source}: no run reports in it (a JSON {type(doc).__name__}); {expected}")
    if _is_report(doc):
        r = read_report(doc, source)
        (parts.oracle if _policy_name(r.policy) == ORACLE else parts.runs).append((r, source))
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
                parts.sweep.append((SweepPoint.from_dict(item, where), source))
            else:
                r = read_report(item, where)
                if key == "runs" and _policy_name(r.policy) == ORACLE:
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


def _policy_name(spec: Any) -> str:
    """'learned:/x/y' -> 'learned'; 'learned -> learned:/x' -> 'learned'; others unchanged."""
    s = str(spec).strip()
    s = s.split(" -> ")[0].strip()
    return s.partition(":")[0] if ":" in s else s

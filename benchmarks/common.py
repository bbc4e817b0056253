"""Helpers shared by the benchmarks: machine facts and table/JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as printed beside every timed figure ("n/a" where unknown)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_info() -> dict[str, Any]:
    """The machine, as every report describes it: prefetch.machine.machine_info (one function)."""
    from prefetch.machine import machine_info as describe

    return describe()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(path: str | os.PathLike[str] | None, obj: Any) -> None:
    if path is None:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=str))

"""Is a learned policy being evaluated on a run it was trained on? The one rule.

    prov = assess(training_data(artifact.meta), trace_identity(trace))
    report.update(prov.as_dict())   # train_seeds, eval_seeds, in_sample, in_sample_reason
    warn_if_in_sample(prov, "prefetch simulate moe")

A model scored on its own training run measures memory, not prediction: on a dynamic
workload (moe's routing, layerdrop's skipped layers, generate-train's lengths) the
access order of an unseen seed differs from every training step, and the learned hit
rate drops. Every learned figure therefore carries where it stands, decided here.

The rule, per training run the artifact recorded (meta.json `training_data`):
- both seeds known: the same workload (or either unknown: the same architecture, which
  the artifact already guarantees) AND the same seed => in sample; another seed or
  another workload => not.
- a seed unknown: the step-order hashes (runtime.trace_identity) decide. Step i of the
  evaluated run is compared with step i of the training run, at the steps whose order
  identifies that run: not when every step of it has one order (gpt2, llama, vit: every
  seed looks alike), and not at a step where a training run of another seed has the
  same order (accum-eval's order follows the step index, not the seed). Matching at
  least half of those steps (and two, where there are two) => in sample; matching
  fewer => not; no identifying step => unknown.
In sample if any training run says so; else unknown if any cannot tell; else not.
Unknown is `in_sample: None` with the reason; nothing is guessed.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence, TextIO

from predictor.interface import PolicyError

REPORT_KEYS = ("train_seeds", "eval_seeds", "in_sample", "in_sample_reason")
"""The keys every learned report carries (pf.report(), simulate's report, eval JSON)."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a learned evaluation stands against the model's training data."""

    train_seeds: tuple[int | None, ...]
    """Seeds of the runs the model was trained on (None: a run recorded without one)."""
    eval_seeds: tuple[int | None, ...]
    """Seeds of the evaluated runs (None: unknown)."""
    in_sample: bool | None
    """True: an evaluated run is a training run; False: none is; None: cannot tell."""
    reason: str
    """Why, in a sentence."""
    matched: dict[str, Any] | None = None
    """The training_data entry the evaluated run is (when in sample), for its trained steps."""

    def as_dict(self) -> dict[str, Any]:
        return {"train_seeds": list(self.train_seeds), "eval_seeds": list(self.eval_seeds),
                "in_sample": self.in_sample, "in_sample_reason": self.reason}  # fmt: skip


def _seeds(values: Sequence[Any]) -> tuple[int | None, ...]:
    """Distinct seeds, known ones sorted first, None last (once)."""
    known = sorted({int(v) for v in values if v is not None})
    return tuple(known) + ((None,) if any(v is None for v in values) else ())


def training_data(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The training runs an artifact's meta.json names: `training_data` (trace, workload,
    seed, steps, step_order_hashes), or for artifacts trained before it existed, the
    older `training.traces` list (workload, seed, trained steps; no hashes)."""
    data = meta.get("training_data")
    if isinstance(data, list):
        return [d for d in data if isinstance(d, dict)]
    old = (meta.get("training") or {}).get("traces") or []
    return [{"trace": t.get("stem"), "workload": t.get("workload"), "seed": t.get("seed"),
             "steps": t.get("train_steps"), "step_order_hashes": None} for t in old if isinstance(t, dict)]  # fmt: skip


def train_seeds(meta: dict[str, Any]) -> tuple[int | None, ...]:
    """The training seeds of an artifact (meta.json `train_seeds`, else from its runs)."""
    return _seeds([d.get("seed") for d in training_data(meta)])


def _identifying_steps(entry: dict[str, Any], others: Sequence[dict[str, Any]]) -> list[int]:
    """Steps of a training run whose order tells it apart (see the module doc)."""
    hashes = entry.get("step_order_hashes") or []
    if len(set(hashes)) < 2:
        return []  # one order for every step: a static workload, every run looks alike
    out = []
    for i, h in enumerate(hashes):
        shared = any(
            (o.get("seed") != entry.get("seed") or o.get("seed") is None)
            and i < len(o.get("step_order_hashes") or []) and o["step_order_hashes"][i] == h
            for o in others
        )
        if not shared:
            out.append(i)
    return out


def _by_hashes(entry: dict[str, Any], others: Sequence[dict[str, Any]], hashes: Sequence[str]) -> tuple[bool | None, str]:
    name = entry.get("trace") or "a training run"
    if not entry.get("step_order_hashes"):
        return None, f"{name} has no step-order hashes (artifact trained before they existed)"
    if not hashes:
        return None, "the evaluated run has no step-order hashes"
    ident = [i for i in _identifying_steps(entry, others) if i < len(hashes)]
    if not ident:
        if len(set(entry["step_order_hashes"])) < 2:
            why = "every step of it has the same access order (a static workload: every seed looks alike)"
        else:
            why = "its access order at each step is also another seed's (the order does not follow the seed)"
        return None, f"seed unknown and the order cannot tell: {why} ({name})"
    matched = sum(1 for i in ident if hashes[i] == entry["step_order_hashes"][i])
    need = max(min(2, len(ident)), math.ceil(len(ident) / 2))
    if matched >= need:
        return True, f"the access order matches training run {name} at {matched} of {len(ident)} identifying steps"
    return False, f"the access order matches training run {name} at only {matched} of {len(ident)} identifying steps"


def assess(training: Sequence[dict[str, Any]], run: dict[str, Any]) -> Provenance:
    """The provenance of one evaluated run ({"workload", "seed", "step_order_hashes"}, as
    runtime.trace_identity gives) against a model's training runs: THE in-sample rule."""
    seeds = _seeds([d.get("seed") for d in training])
    eval_seed = run.get("seed")
    eval_seeds = _seeds([eval_seed])
    if not training:
        return Provenance(seeds, eval_seeds, None, "the model names no training runs (trained before provenance existed)")
    workload = run.get("workload")
    verdicts: list[tuple[bool | None, str, dict[str, Any]]] = []
    for entry in training:
        others = [o for o in training if o is not entry]
        w = entry.get("workload")
        if workload is not None and w is not None and workload != w:
            verdicts.append((False, f"workload {workload} is not {w}", entry))
        elif eval_seed is not None and entry.get("seed") is not None:
            same = int(eval_seed) == int(entry["seed"])
            where = f" (training run {entry['trace']})" if same and entry.get("trace") else ""
            verdicts.append((same, f"seed {eval_seed} is {'a' if same else 'not a'} training seed{where}", entry))
        else:
            ok, why = _by_hashes(entry, others, run.get("step_order_hashes") or [])
            verdicts.append((ok, why, entry))
    for ok, why, entry in verdicts:
        if ok:
            return Provenance(seeds, eval_seeds, True, why, matched=entry)
    unknown = [why for ok, why, _ in verdicts if ok is None]
    if unknown:
        return Provenance(seeds, eval_seeds, None, unknown[0])
    return Provenance(seeds, eval_seeds, False, _not_in_sample_reason(seeds, eval_seed, verdicts))


def _not_in_sample_reason(seeds: tuple[int | None, ...], eval_seed: Any,
                          verdicts: list[tuple[bool | None, str, dict[str, Any]]]) -> str:
    if eval_seed is not None and all(d.get("seed") is not None for _, _, d in verdicts):
        known = ", ".join(str(s) for s in seeds)
        return f"seed {eval_seed} is not a training seed ({known})"
    return "; ".join(dict.fromkeys(why for _, why, _ in verdicts))


def assess_model_dir(model_dir: str | os.PathLike[str], architecture: str | None, run: dict[str, Any]) -> Provenance:
    """assess() against the training runs of the predictor for `architecture` in
    model_dir (its meta.json, read directly: no model is loaded). A folder without one
    gives in_sample None and says why."""
    from predictor.artifact import META_FILE, find_artifact

    try:
        meta = json.loads((find_artifact(model_dir, architecture or None) / META_FILE).read_text())
    except (PolicyError, OSError, ValueError) as exc:
        return Provenance((), _seeds([run.get("seed")]), None, f"the model's training runs are unknown ({exc})")
    if not isinstance(meta, dict):
        return Provenance((), _seeds([run.get("seed")]), None, f"{model_dir}: {META_FILE} is not a JSON object")
    return assess(training_data(meta), run)


def combine(provs: Sequence[Provenance]) -> Provenance:
    """Several evaluated runs (a simulation over many traces): in sample if any is."""
    if not provs:
        return Provenance((), (), None, "nothing evaluated")
    if len(provs) == 1:
        return provs[0]
    train = _seeds([s for p in provs for s in p.train_seeds])
    evals = _seeds([s for p in provs for s in p.eval_seeds])
    for p in provs:
        if p.in_sample:
            return Provenance(train, evals, True, p.reason, matched=p.matched)
    for p in provs:
        if p.in_sample is None:
            return Provenance(train, evals, None, p.reason)
    return Provenance(train, evals, False, "; ".join(dict.fromkeys(p.reason for p in provs)))


_warned: set[str] = set()


def warning_line(prov: Provenance, what: str) -> str:
    """The terminal line for an in-sample evaluation."""
    seeds = ", ".join("?" if s is None else str(s) for s in prov.eval_seeds)
    trained = ", ".join("?" if s is None else str(s) for s in prov.train_seeds)
    return (f"WARNING: IN-SAMPLE EVALUATION: {what}: the learned model is evaluated on a run it was trained on "
            f"(evaluated seed(s) {seeds}, trained on {trained}): {prov.reason}. This figure measures memory, not "
            "prediction; evaluate on an unseen seed.")


def warn_if_in_sample(prov: Provenance, what: str, stream: TextIO | None = None) -> bool:
    """Print the WARNING line on stderr when `prov` is in sample (once per message per
    process: a sweep simulates the same trace many times). True when in sample."""
    if not prov.in_sample:
        return False
    line = warning_line(prov, what)
    if line not in _warned:
        _warned.add(line)
        print(line, file=stream or sys.stderr, flush=True)
    return True

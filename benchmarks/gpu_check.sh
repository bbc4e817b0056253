#!/usr/bin/env bash
# The GPU check: the whole flow on a CUDA machine, in one command (issue 9, item 6).
#
#   bash benchmarks/gpu_check.sh              # on a machine with an NVIDIA GPU
#   bash benchmarks/gpu_check.sh --dry-run    # the same flow on the simulated device, tiny (CI)
#
# For two reference workloads, gpt2 (static) and moe (dynamic):
#   1. record training seeds 0 and 1 (prefetch record; on the CPU: the access order
#      does not depend on the device),
#   2. train the learned predictor on those traces (prefetch train),
#   3. run none, replay, markov and learned on the unseen seed 2 with --device cuda
#      (prefetch run: model, inputs and compute on the GPU; managed tensors on pinned
#      host memory, copied on a side stream), the optimizer on host masters; then replay
#      again with the optimizer stepping on the GPU (runtime.device_stepping),
# and print, per workload and policy: hit rate, late, misses, stall (CUDA events),
# the real slowdown (against the all-resident twin, and against the job with its
# optimizer on the GPU too), peak device memory against the budget and its bound
# (runtime/cuda_monitor.py), and the bit-identity checks (losses, parameters,
# optimizer state). Results go to OUT/gpu_check.json and OUT/gpu_check.md.
# Exit status: 0 when every run is bit-identical, within its memory bound and
# evaluated out of sample; 1 otherwise; 2 for a setup problem (no CUDA).
#
# Setup (GPU mode): the project's .venv (`make setup` when there is none) if its torch
# sees CUDA; otherwise (e.g. a CPU-only torch there) builds .venv-gpu with torch==2.13.0 from PyPI (the Linux wheel on PyPI is the CUDA build;
# set TORCH_INDEX_URL, e.g. https://download.pytorch.org/whl/cu128, to pick another)
# and the project with its dev extra. Pass --python PY to use an interpreter as is.
set -euo pipefail

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "options: --dry-run  --out DIR (default out/gpu_check)  --steps N (default 20)"
    echo "         --train-steps N (default 16)  --budget B (default 0.4)  --python PY"
}

DRY_RUN=0
OUT=""
STEPS=""
TRAIN_STEPS=""
BUDGET="0.4"
PY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        --steps) STEPS="$2"; shift ;;
        --train-steps) TRAIN_STEPS="$2"; shift ;;
        --budget) BUDGET="$2"; shift ;;
        --python) PY="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
T_START=$(date +%s)

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=simulated
    OUT=${OUT:-out/gpu_check_dry}
    STEPS=${STEPS:-2}
    TRAIN_STEPS=${TRAIN_STEPS:-3}
    PY=${PY:-.venv/bin/python}
else
    DEVICE=cuda
    OUT=${OUT:-out/gpu_check}
    STEPS=${STEPS:-20}
    TRAIN_STEPS=${TRAIN_STEPS:-16}
    if ! command -v nvidia-smi >/dev/null 2>&1 && ! ls /dev/nvidia0 >/dev/null 2>&1; then
        echo "gpu_check: no NVIDIA GPU here (no nvidia-smi, no /dev/nvidia0); run on a GPU machine, or use --dry-run" >&2
        exit 2
    fi
    has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
    if [ -z "$PY" ]; then
        if [ ! -x .venv/bin/python ]; then
            make setup  # the project's venv; torch 2.13.0 from PyPI is the CUDA build on Linux
        fi
        if has_cuda .venv/bin/python; then
            PY=.venv/bin/python
        else
            echo "gpu_check: setting up .venv-gpu (torch 2.13.0, CUDA build) ..." >&2
            test -x .venv-gpu/bin/python || python3 -m venv .venv-gpu
            PIP=(.venv-gpu/bin/python -m pip install -q --disable-pip-version-check -c .ci/constraints.txt)
            "${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
            "${PIP[@]}" -e '.[dev]'
            PY=.venv-gpu/bin/python
        fi
    fi
    if ! has_cuda "$PY"; then
        echo "gpu_check: $PY's torch sees no CUDA device (torch.cuda.is_available() is False);" \
             "run on a GPU machine, or use --dry-run" >&2
        exit 2
    fi
    # cuBLAS picks deterministic algorithms only with a fixed workspace (bit-identity checks)
    export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
fi
T_SETUP=$(( $(date +%s) - T_START ))
echo "gpu_check: device=$DEVICE out=$OUT steps=$STEPS train_steps=$TRAIN_STEPS budget=$BUDGET python=$PY (setup ${T_SETUP}s)" >&2
mkdir -p "$OUT"

"$PY" - "$DEVICE" "$OUT" "$STEPS" "$TRAIN_STEPS" "$BUDGET" "$DRY_RUN" <<'PYEOF'
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from predictor.train import TrainConfig, train
from prefetch.demo import QUICK_WORKLOADS
from prefetch.recording import record_workload
from prefetch.run import run_policies

device, out, steps, train_steps, budget, dry = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1"
WORKLOADS = QUICK_WORKLOADS  # one static, one dynamic (the demo's --quick pair)
TRAIN_SEEDS, EVAL_SEED = (0, 1), 2
torch.set_num_threads(1 if dry else min(8, torch.get_num_threads()))
t0 = time.perf_counter()
log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

for sub in ("traces", "models"):  # a rerun starts clean
    shutil.rmtree(out / sub, ignore_errors=True)
traces = []
for name in WORKLOADS:
    for seed in TRAIN_SEEDS:
        record_workload(name, train_steps, out / "traces" / f"{name}-s{seed}", seed=seed, progress=False)
        traces.append(out / "traces" / f"{name}-s{seed}")
        log(f"recorded {name} seed {seed} ({train_steps} steps)")
cfg = TrainConfig(num_trees=3, min_data_in_leaf=5) if dry else TrainConfig()
train(traces, out / "models", cfg, progress=False, log=lambda m: log(f"train: {m}"))
policies = ["none", "replay", "markov", f"learned:{out / 'models'}"]

rows, reports = [], {}
for name in WORKLOADS:
    log(f"run {name} on seed {EVAL_SEED}, device {device}: {', '.join(p.partition(':')[0] for p in policies)}")
    rs = run_policies(name, policies, steps=steps, budget=budget, seed=EVAL_SEED, device=device, progress=False,
                      optimizer_placement="host")
    # both optimizer placements (issue 15): replay again with the optimizer stepping on the device
    rs += run_policies(name, ["replay"], steps=steps, budget=budget, seed=EVAL_SEED, device=device, progress=False,
                       optimizer_placement="device")
    reports[name] = rs
    for r in rs:
        ran = (r.get("optimizer") or {}).get("ran", "host")
        rows.append({
            "workload": name, "policy": r["policy"].partition(":")[0] + (" (device step)" if ran == "device" else ""),
            "optimizer": ran, "device": r["device"],
            "hit_rate": r["hit_rate"], "late": r["late"], "misses": r["misses"], "stall_s": r["stall_s"],
            "slowdown": r.get("slowdown"), "slowdown_vs_device_optimizer": r.get("slowdown_vs_device_optimizer"),
            "budget_bytes": r["budget_bytes"], "peak_device_bytes": r["peak_device_bytes"],
            "cuda_max_memory_allocated": r.get("cuda_max_memory_allocated"),
            "cuda_memory_bound_bytes": r.get("cuda_memory_bound_bytes"),
            "peak_memory_within_bound": r.get("peak_memory_within_bound"),
            "losses_identical": r.get("losses_identical"), "params_identical": r.get("params_identical"),
            "optimizer_state_identical": r.get("optimizer_state_identical"),
            "in_sample": r.get("in_sample"), "train_seeds": r.get("train_seeds", list(TRAIN_SEEDS)),
            "eval_seeds": r.get("eval_seeds", [EVAL_SEED]),
        })
        log(f"  {name} {rows[-1]['policy']}: hit {r['hit_rate']:.1%} stall {r['stall_s']:.3f}s")

def problems(row):
    out = [k for k in ("losses_identical", "params_identical", "optimizer_state_identical") if row[k] is not True]
    if row["peak_memory_within_bound"] is False:
        out.append("peak memory over bound")
    if row["in_sample"] is True:
        out.append("in sample")
    return out

mib = lambda n: "n/a" if n is None else f"{n / 2**20:.1f}"  # noqa: E731
x = lambda v: "n/a" if v is None else f"{v:.3f}x"  # noqa: E731
lines = [
    f"# GPU check ({'DRY RUN, simulated device' if dry else torch.cuda.get_device_name(0)})",
    "",
    f"torch {torch.__version__}; workloads {', '.join(WORKLOADS)}; learned trained on seeds {list(TRAIN_SEEDS)} "
    f"({train_steps} steps each), every policy run on unseen seed {EVAL_SEED} for {steps} steps (1 warm-up); "
    f"budget {budget} of the managed bytes. Command: `bash benchmarks/gpu_check.sh{' --dry-run' if dry else ''}`.",
    "",
    "| workload | policy | hit rate | late | misses | stall s | slowdown (twin) | slowdown (GPU optimizer) "
    "| budget MiB | tier peak MiB | CUDA peak MiB | bound MiB | within bound | bit-identical |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for row in rows:
    bad = problems(row)
    lines.append(
        f"| {row['workload']} | {row['policy']} | {row['hit_rate']:.1%} | {row['late']} | {row['misses']} | {row['stall_s']:.4f} "
        f"| {x(row['slowdown'])} | {x(row['slowdown_vs_device_optimizer'])} | {mib(row['budget_bytes'])} "
        f"| {mib(row['peak_device_bytes'])} | {mib(row['cuda_max_memory_allocated'])} | {mib(row['cuda_memory_bound_bytes'])} "
        f"| {row['peak_memory_within_bound'] if row['peak_memory_within_bound'] is not None else 'n/a'} "
        f"| {'yes' if not any(k.endswith('identical') for k in bad) else 'NO'} |")
failed = [f"{r['workload']}/{r['policy']}: {', '.join(problems(r))}" for r in rows if problems(r)]
elapsed = time.perf_counter() - t0
lines += ["", f"Flow time {elapsed:.0f} s (setup not included).",
          "Slowdown (twin): against the all-resident job stepped alternately (on CUDA its optimizer also steps the "
          "managed parameters on the host, as the prefetched job does: the bit-identity reference). Slowdown (GPU "
          "optimizer): against the all-resident job with everything on the GPU. CUDA peak: the job's own peak device "
          "memory per step (runtime/cuda_monitor.py); bound = budget + persistent + managed gradients + working set.",
          "", "Result: " + ("all checks passed" if not failed else "FAILED: " + "; ".join(failed))]
text = "\n".join(lines) + "\n"
(out / "gpu_check.md").write_text(text)
(out / "gpu_check.json").write_text(json.dumps({"device": device, "dry_run": dry, "steps": steps, "train_steps": train_steps,
                                               "budget": budget, "elapsed_s": elapsed, "rows": rows, "failed": failed,
                                               "reports": reports}, indent=2, default=str))
print(text)
print(f"written: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}")
sys.exit(1 if failed else 0)
PYEOF

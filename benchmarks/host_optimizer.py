"""The host optimizer's step cost per parameter byte: AdamW single-tensor, foreach and fused, on this CPU (issue 15).

    python benchmarks/host_optimizer.py [--max-mib 64] [--num-sizes 4] [--threads 1,2]
        [--variants single,foreach,fused] [--repeats 7] [--json out/benchmarks/host_optimizer.json]
    python benchmarks/host_optimizer.py --quick        # up to 16 MiB, 3 sizes, 3 repeats

A prefetched job steps its optimizer on the host; an all-resident GPU job steps on the
device. This measures the host side (runtime.optimizer_cost.measure_host_optimizer): real
`torch.optim.AdamW` steps on CPU tensors with gradients set, 8 tensors per size, sizes
1, 4, 16, 64 MiB of float32 parameters by default, after 2 warm-up steps; per variant and
torch thread count. Printed per row: ns per parameter byte at the largest size (median
[min-max] over repeats), GB/s of parameters stepped, the fitted line's fixed cost per step
and slope, its worst relative error over the sizes, and the median step at each size; then
the fastest variant per thread count. The machine's load is printed with the table.

The minor page faults per step at the largest size are printed too: single and foreach
allocate per-tensor temporaries every step, and where glibc gives those blocks back to the
OS every step faults them in again (up to ~2x the step; docs/overhead.md). To see the
cost without that, run with MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set above
the largest tensor (e.g. 268435456 each).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import load_average, machine_info, markdown_table, write_json  # noqa: E402
from runtime.optimizer_cost import VARIANTS, HostOptimizerCost, measure_host_optimizer  # noqa: E402

POOR_FIT = 0.2
"""A row whose line misses a measured size by more than this is flagged: do not model with it."""


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"host_optimizer.py: {flag} takes comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise SystemExit(f"host_optimizer.py: {flag} takes positive integers, got {text!r}")
    return vals


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-mib", type=int, default=None, help="largest size in MiB of parameters (default 64; --quick 16)")
    ap.add_argument("--num-sizes", type=int, default=None, help="sizes, each 4x the one before (default 4; --quick 3)")
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts (comma-separated)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per size (default 7; --quick 3)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    max_mib = args.max_mib or (16 if args.quick else 64)
    num_sizes = args.num_sizes or (3 if args.quick else 4)
    repeats = args.repeats or (3 if args.quick else 7)
    threads = _ints(args.threads, "--threads")
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"host_optimizer.py: --variants: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    before_threads = torch.get_num_threads()
    load_before = load_average()
    results: list[HostOptimizerCost] = []
    try:
        for t in threads:
            torch.set_num_threads(t)
            for v in variants:
                try:
                    c = measure_host_optimizer(max_mib << 20, variant=v, repeats=repeats, num_sizes=num_sizes)  # type: ignore[arg-type]
                except ValueError as exc:
                    raise SystemExit(f"host_optimizer.py: {exc}") from None
                results.append(c)
                print(f"  {v} threads {c.torch_threads}: "
                      + (f"{c.ns_per_byte:.3f} ns/byte" if c.supported else f"unsupported ({c.error})"),
                      file=sys.stderr)
    finally:
        torch.set_num_threads(before_threads)
    load_after = load_average()
    ok = [c for c in results if c.supported]
    sizes = ok[0].sizes_bytes if ok else ()
    print(f"Host AdamW step (torch {torch.__version__}, CPU, float32, 8 tensors per size, lr 1e-3, 2 warm-up "
          f"steps, {repeats} timed steps per size, sizes interleaved); sizes {', '.join(_mib(s) for s in sizes)} "
          f"MiB of parameters. OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"{os.cpu_count()} CPUs; load average before {load_before}, after {load_after}. "
          "ns/byte and GB/s at the largest size; fixed and slope from the line fitted over all sizes.")
    print()
    rows = []
    for c in results:
        if not c.supported:
            rows.append([c.variant, c.torch_threads, "unsupported", "", "", "", "", "", *[""] * len(sizes), c.error])
            continue
        rows.append([c.variant, c.torch_threads,
                     f"{c.ns_per_byte:.3f} [{c.ns_per_byte_min:.3f}-{c.ns_per_byte_max:.3f}]",
                     f"{c.gb_per_s:.2f}", f"{c.fixed_ns / 1e3:.0f}", f"{c.per_byte_ns:.3f}",
                     f"{100 * c.fit_max_rel_error:.1f}%", f"{c.page_faults_per_step:.0f}"
                     if c.page_faults_per_step is not None else "n/a", *[f"{t / 1e6:.2f}" for t in c.median_step_ns],
                     f"poor fit (> {POOR_FIT:.0%}): noise, contention or page faults" if c.fit_max_rel_error > POOR_FIT else ""])
    print(markdown_table(["variant", "threads", "ns/byte [min-max]", "GB/s", "fixed us/step", "slope ns/byte",
                          "fit max err", f"faults/step @{_mib(sizes[-1]) if sizes else '?'} MiB", *[f"step ms @{_mib(s)} MiB" for s in sizes], "note"], rows))
    print()
    fastest = {}
    for t in sorted({c.torch_threads for c in ok}):
        best = min((c for c in ok if c.torch_threads == t), key=lambda c: c.ns_per_byte)
        fastest[t] = best.variant
        others = ", ".join(f"{c.variant} {c.ns_per_byte / best.ns_per_byte:.2f}x" for c in ok
                           if c.torch_threads == t and c is not best)
        print(f"Fastest with {t} thread{'s' if t > 1 else ''}: {best.variant} ({best.ns_per_byte:.3f} ns/byte, "
              f"{best.gb_per_s:.2f} GB/s){'; ' + others if others else ''}.")
    write_json(args.json, {"machine": machine_info(), "load_before": load_before, "load_after": load_after,
                           "max_mib": max_mib, "num_sizes": num_sizes, "repeats": repeats, "threads": threads,
                           "fastest": fastest, "results": [c.to_dict() for c in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

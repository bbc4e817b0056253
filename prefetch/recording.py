"""Record a reference workload: `prefetch record --workload NAME --steps N --out DIR`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from runtime.recorder import Recorder
from runtime.trace_writer import check_output_dir

if TYPE_CHECKING:
    from prefetch.workloads import Workload


def record_workload(workload: "str | Workload", steps: int, out: str | os.PathLike[str], *, seed: int = 0,
                    progress: bool = True, routers: str | None = "auto") -> Path:
    """Build `workload` (a reference workload's name, or a Workload such as a generated one)
    with `seed`, run `steps` steps under the recorder; return the trace stem. `routers`:
    the router hints the trace keeps (runtime.routers; "off": none)."""
    from prefetch.workloads import get_workload

    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if isinstance(workload, str):
        workload = get_workload(workload)  # unknown name: a clear error before anything is built
    name = workload.name
    check_output_dir(out)
    job = workload.build(seed)
    bar = tqdm(total=steps, desc=f"record {name}", unit="step", file=sys.stderr, disable=not progress)
    rec = Recorder(job.model, job.optimizer, out, workload=name, seed=seed, config=job.config, progress=bar,
                   routers=routers)
    rec.start()
    losses: list[float] = []
    try:
        for i in range(steps):
            losses.append(job.step(i))
    except BaseException as exc:
        rec.close(error=f"{type(exc).__name__}: {exc}", losses=losses)
        raise
    finally:
        bar.close()
    rec.close(losses=losses, threads=torch.get_num_threads())
    return rec.stem

"""What machine a figure was measured on: the one description every report and benchmark writes.

`prefetch demo`'s results.json, benchmarks/run_all.py's RESULTS and every benchmark's JSON
carry the same keys, so a figure can be traced to its CPUs, device and versions whichever
script produced it (report tables read cpu_count, platform, versions and device from it).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

VERSIONED = (("transformers", "transformers"), ("lightgbm", "lightgbm"), ("zmq", "pyzmq"), ("numpy", "numpy"),
             ("pyarrow", "pyarrow"))
"""(module, key) of the packages whose versions are reported; a missing one is reported as None."""


def machine_info(omp_threads: str | None = None) -> dict[str, Any]:
    """Date, CPUs (count and this process's affinity), platform, Python, torch and its threads,
    OMP_NUM_THREADS (`omp_threads`, else the environment's), package versions, and the device:
    the CUDA GPU's name, or a line saying prefetching runs on the simulated device."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": omp_threads if omp_threads is not None else os.environ.get("OMP_NUM_THREADS"),
    }
    for mod, key in VERSIONED:
        try:
            info[key] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just reported
            info[key] = None
    if torch.cuda.is_available():
        info["device"] = f"CUDA: {torch.cuda.get_device_name(0)} (torch CUDA {torch.version.cuda})"
        info["cuda"] = torch.cuda.get_device_name(0)
    else:
        info["device"] = "CPU only: prefetching runs on the simulated device (copy-engine thread + link model)"
        info["cuda"] = None
    return info


__all__ = ["machine_info"]

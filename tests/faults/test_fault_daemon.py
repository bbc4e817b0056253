"""Daemon faults during a live learned run: SIGKILL, SIGSTOP/SIGCONT, restart, repeated.

Every run must end bit-identical to the same job all resident: the daemon is advisory,
so a dead, frozen or restarted one costs hits, never a different loss or parameter.
PREFETCH_FAULT_REPEATS sets how many times each fault is repeated (1 in CI;
benchmarks/fault_suite.py runs more).
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

import runtime
from tests.fixtures.residual_job import make_job
from runtime.daemon_launch import start_local_daemon
from runtime.link import LinkModel

FAULTS = ("stop", "kill", "restart")
REPEATS = int(os.environ.get("PREFETCH_FAULT_REPEATS", "1"))
STEPS_PER_FAULT = 4  # three through the fault, one after recovery
FIRST_FAULT_AT = 2


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Parameters and optimizer state, cloned, by name."""
    out = {f"param:{k}": v.detach().clone() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"opt:{names[id(p)]}:{k}"] = v.detach().clone()
    return out


def all_resident(steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses and final state of the job with nothing offloaded: what every run must equal."""
    model, opt, step = make_job(0)
    losses = [step() for _ in range(steps)]
    return losses, _state(model, opt)


def num_steps(faults: tuple[str, ...]) -> int:
    return FIRST_FAULT_AT + STEPS_PER_FAULT * len(faults) + 1


def run_with_faults(models: Path, endpoint: str, faults: tuple[str, ...]):
    """One learned run through a daemon that suffers each fault in turn (a daemon start each
    after kill and restart). Returns (losses, state, served): served says the learned policy
    was in use before the first fault."""
    _, daemon = start_local_daemon(models, endpoint=endpoint)
    model, opt, step = make_job(0)
    losses: list[float] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the one DaemonUnavailableWarning is tested elsewhere
            with runtime.prefetching(model, opt, policy=f"learned:{models}", daemon=endpoint, budget=0.5,
                                     device="simulated", link=LinkModel(bandwidth_bytes_per_s=5e9)) as pf:
                client = pf.store.policy.primary.client
                while len(losses) < FIRST_FAULT_AT:
                    losses.append(step())
                served = bool(client.connected and str(client.served_policy).startswith("learned"))
                for fault in faults:
                    if fault == "kill":
                        daemon.process.kill()
                        daemon.process.wait(10)
                    elif fault == "stop":
                        os.kill(daemon.process.pid, signal.SIGSTOP)
                    else:
                        daemon.stop()  # SIGTERM: the daemon says BYE and exits
                    for _ in range(STEPS_PER_FAULT - 1):  # train through it, slowly enough to be noticed
                        losses.append(step())
                        time.sleep(0.05)
                    if fault == "stop":
                        os.kill(daemon.process.pid, signal.SIGCONT)
                    else:
                        _, daemon = start_local_daemon(models, endpoint=endpoint)
                    losses.append(step())
                losses.append(step())
    finally:
        if daemon.alive:
            os.kill(daemon.process.pid, signal.SIGCONT)
        daemon.stop()
    return losses, _state(model, opt), served


@pytest.mark.slow  # three daemon starts: ~10 s on a quiet machine, 30 s on a busy one
def test_daemon_faults_leave_the_run_bit_identical(fault_models, tmp_path):
    """SIGSTOP/SIGCONT, SIGKILL and restart mid-run, REPEATS runs in rotating order: losses,
    parameters and optimizer state equal the job all resident, bit for bit."""
    want_losses, want_state = all_resident(num_steps(FAULTS))
    for rep in range(REPEATS):
        faults = FAULTS[rep % 3:] + FAULTS[:rep % 3]
        losses, state, served = run_with_faults(fault_models, f"ipc://{tmp_path}/d{rep}.sock", faults)
        assert served, "the learned policy was not serving before the faults"
        assert losses == want_losses, (faults, rep)
        assert state.keys() == want_state.keys()
        differ = [k for k in state if not torch.equal(state[k], want_state[k])]
        assert not differ, (faults, rep, differ[:5])

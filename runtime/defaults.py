"""The project's shared defaults, each written once (on the contracts floor, so every floor can import it).

The link model's defaults live with the link model: `runtime.link.DEFAULT_LINK_RATIO` (0.5)
and `runtime.link.DEFAULT_LATENCY_S` (5 us). The lists live in registries:
`predictor.policies.POLICIES` (policy names) and `prefetch.workloads.WORKLOADS` (workload
names); machine facts for reports come from `prefetch.machine.machine_info`.
"""

from __future__ import annotations

LIVE_LOOKAHEAD = 64
"""Future reads a policy keeps requested in a live run or a simulation (`prefetch run`,
`prefetch simulate`, `runtime.prefetching`, a daemon session whose HELLO leaves it to the
daemon). Copies must be started early enough to hide the link's latency behind compute: 64
reads is a few layers ahead on the reference workloads, and the budget, not the lookahead,
bounds what is resident."""

EVAL_LOOKAHEAD = 16
"""D, the horizon of offline evaluation (recall@D) and of training a predictor (the reads a
model learns to predict), and a policy's lookahead when built without one. Smaller than
LIVE_LOOKAHEAD on purpose: recall@D scores how well the *next* few reads are predicted, and
training labels get noisier the further ahead they reach; the figures published for
`prefetch eval` and `prefetch train` are at 16."""

DAEMON_BATCH_EVENTS = 2
"""Access events per message from a training process to the daemon. Fewer means fresher
commands (the daemon answers each batch, so its prefetches reach the reads they predict in
time), more means less CPU per event; live runs send 2, keeping the daemon's commands as fresh
as a local policy's at one message per two accesses."""

DAEMON_ROUND_TRIP_NS = 111_000
"""Nanoseconds from a batch's send to its COMMANDS being readable by the client, as the
simulated daemon path (predictor.daemon_path) models it. Measured, not chosen: the median
round trip (one event per message, learned policy, ipc as a local daemon uses) of
`benchmarks/daemon_latency.py --policy learned --models out/benchmarks/models --round-trips 3000
--warmup 300` on the 2-core dev box, 2026-11-30 (load average 0.6; p99 219 us, tcp 126 us)."""

__all__ = ["DAEMON_BATCH_EVENTS", "DAEMON_ROUND_TRIP_NS", "EVAL_LOOKAHEAD", "LIVE_LOOKAHEAD"]

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

AHEAD_SHARE = 0.5
"""The prefetch window: bytes of prefetches issued and not yet read (in flight or landed)
may fill at most this share of the budget; the next request waits in the queue until a
read uses one up. Without it a policy that looks far ahead (replay at the default lookahead
of 64 reads) fills the whole budget with tensors needed later, so the activations the
forward writes next find nothing evictable but copies in flight, and wait for them
(gpt2 at 0.4, simulated: replay 1.126x with the window off, 1.025x at 0.5; vit 1.243x ->
1.004x; docs/simulator.md "The prefetch window"). A prefetch whose predicted read has
passed without it leaves the window (a wrong guess must not hold the window shut; it stays
resident, evictable). Policies that pace themselves by bytes (the oracle: `paced`) are
exempt. The share was chosen on the generator's tuning seeds (0-19), never on the reported
ones: geometric-mean slowdown of learned there, simulated / live, 2.095x / 1.807x with no
window, 2.044x / 1.739x at 0.5, 2.061x / 1.804x at 0.75."""

__all__ = ["AHEAD_SHARE", "DAEMON_BATCH_EVENTS", "DAEMON_ROUND_TRIP_NS", "EVAL_LOOKAHEAD", "LIVE_LOOKAHEAD"]

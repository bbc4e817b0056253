"""The guarded learned policy: the model watches what the simple policies would have stalled, on the same steps.

    policy = guarded(learned, lookahead=64, link=lambda: device.link, compute_ns=clock.compute_ns)

A learned policy is judged on runs and architectures it never saw, where it can do worse
than the simple policies: it copies what it guessed, which congests the link and evicts
what the step needed next (issue 11: 1.8x the stall of no prefetching on an unseen
model). The guard bounds that by construction, in the spirit of set dueling (Qureshi et
al., ISCA 2007; DIP/DRRIP: leader sets score the rival policies, followers take the
winner). A prefetcher's cost is global (a busy link, evictions), so sampling *tensors*
cannot score it; instead each rival runs in a *shadow*: a device tier of its own
(`ShadowTier`, the same DeviceTier rules as the live store and the simulator) over a
virtual link (a FIFO per direction), fed the same events at the executor's compute time
and the same optimizer steps and gradients (`DeviceTier.followers`). So every step gives,
for the same accesses, the learned policy's real stall and the stall each simple policy
(`DEFAULT_ALTERNATES`: mirror at three lookaheads, scan, markov, none) would have had.

- The learned candidate serves the warm-up's forward; from the warm-up's backward, the one
  the artifact's prior picks (predictor.guard_prior: the same rule on the training runs'
  held-out steps, in the cell nearest this run), the learned one without a prior. Not from
  the next step: the backward's end and the optimizer already ask for that step's first
  reads, and a copy asked for later queues behind them (gpt2: 15 ms late at step 1). After
  `min_steps` scored steps, of the candidates whose stall summed over the scored steps is
  within `margin` of the least, the one with the most hits serves from the next step (the
  learned one on a tie); the one it replaces takes its shadow. The first step is not
  scored: it is every policy's warm-up (mirror, scan and markov know nothing yet). Shadows
  need the budget: when it is a fraction fixed by the warm-up (`runtime.prefetching` without
  a sized tensor table), they start a step later and that step is their warm-up, not scored;
  the prior still picks who serves it.
- At the decision (`decide_steps`), a rival as good as the serving learned candidate (stall
  near, hits within `cheaper_within`) serves on instead: the model costs bookkeeping on every
  access (a daemon round trip), a simple rival far less.
- Only the serving candidate's requests reach the tier, and it answers
  `predicted_next_use` (eviction); the others are observed by their shadows only.
- Without a link model or a compute clock (CUDA today) there are no shadows and the
  learned policy serves alone.

The price: per access, each shadow's tier event and its policy's observe (measured in
benchmarks/guard.py). `note` says which candidate served from which step, and the stalls
that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection, Sequence

from predictor.guard_prior import LEARNED, pick_best
from predictor.interface import NO_PREDICTION, BasePolicy, Policy, TensorInfo, TierView, overrides
from runtime.link import LinkModel
from runtime.tier import DeviceTier
from runtime.trace_format import Access, Kind, Phase

_READ, _ACT = int(Access.READ), int(Kind.ACTIVATION)
_BACKWARD = int(Phase.BACKWARD)

if TYPE_CHECKING:
    from predictor.guard_prior import GuardPrior

DEFAULT_ALTERNATES = ("mirror", "mirror:lookahead=8", "mirror:lookahead=4", "scan", "markov", "none")
"""The simple policies shadowed beside the learned one (scan is replay outside a loop bigger
than the budget). Mirror three times, asking 64, 8 and 4 reads ahead: on a link-bound run a
shorter window copies less that is evicted unread (generalisation tuning seeds 0-19,
simulated at budget 0.4: the least-stall choice among these stalled 0.85x no prefetching's
on average, against 0.94x without the short windows; docs/predictor.md, "The prior")."""


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """When the guard switches."""

    margin: float = 0.05
    """Candidates within this share of the least stall count as near: the one with the most hits serves."""
    min_steps: int = 2
    """Scored steps before any switch: one step can mislead (the step after warm-up, an evaluation step)."""
    decide_steps: int = 4
    """Scored steps after which the shadows stop and the serving candidate serves on (0: never
    stop). Each shadow costs its tier and its policy on every access: at 12-step runs the
    guard cost more bookkeeping than the stall it saved on the static models."""
    noise: float = 0.01
    """Stall differences under this share of the compute time of the scored steps count as
    none: a few milliseconds on a step of hundreds decide nothing."""
    cheaper_within: float = 0.005
    """At the decision (`decide_steps`), a rival whose stall is near the learned one's and whose
    hits are within this share of its hits takes over: the learned candidate costs bookkeeping
    on every access (a daemon round trip), a simple rival far less (0: never)."""
    drop_over: float = 2.0
    """After `min_steps`, a rival whose stall is over this many times the least stops being
    shadowed (it could never serve: the shadows cost bookkeeping on every access). Never the
    learned candidate: it keeps observing every access."""

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if self.min_steps < 1:
            raise ValueError(f"min_steps must be >= 1, got {self.min_steps}")
        if self.decide_steps and self.decide_steps < self.min_steps:
            raise ValueError(f"decide_steps must be 0 or >= min_steps ({self.min_steps}), got {self.decide_steps}")
        if not 0 <= self.noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if not 0 <= self.cheaper_within < 1:
            raise ValueError(f"cheaper_within must be in [0, 1), got {self.cheaper_within}")
        if not self.drop_over > 1 + self.margin:
            raise ValueError(f"drop_over must be > 1 + margin, got {self.drop_over}")


class ShadowTier(DeviceTier):
    """A device tier over a virtual link (a FIFO per direction), fed the executor's events
    and its compute clock: what another policy would have done on the same step (the
    simulator's engine, prefetch.sim_trace, in miniature: time is the executor's compute
    time plus this tier's own waits)."""

    def __init__(self, policy: Policy, budget_bytes: int, link: LinkModel, compute_ns: Callable[[], int],
                 busy: Callable[[], Collection[int]] | None = None):
        super().__init__(policy, budget_bytes)
        self.link = link
        self.compute_ns = compute_ns
        if busy is not None:
            self._busy = busy  # type: ignore[method-assign]  # the executor's: the same modules are running
        self.lag = 0
        self.in_free = 0  # each direction's FIFO, as the executor's link (full duplex)
        self.out_free = 0
        self.host_at: dict[int, int] = {}  # activations written back: when they are on the host

    def _copy_in(self, tid: int) -> tuple[int, int]:
        """(now, when a copy of `tid` to the device started now completes)."""
        now = self.compute_ns() + self.lag
        start = max(self.in_free, now, self.host_at.get(tid, 0))
        self.in_free = start + self.link.copy_ns(self.nb[tid])
        return now, self.in_free

    def _copy_out(self, nbytes: int) -> int:
        now = self.compute_ns() + self.lag
        self.out_free = max(self.out_free, now) + self.link.copy_ns(nbytes)
        return self.out_free

    def _start_copy(self, tid: int) -> int:
        return self._copy_in(tid)[1]

    def _land(self, tid: int, ready: int) -> int | None:
        waited = ready - self.compute_ns() - self.lag
        if waited <= 0:
            return None
        self.lag += waited
        return waited

    def _fetch(self, tid: int) -> int:
        now, end = self._copy_in(tid)
        self.lag += end - now
        return end - now

    def _finish(self, tid: int, ready: int) -> int:
        return self._land(tid, ready) or 0

    def _write_back(self, tid: int) -> None:
        self.host_at[tid] = self._copy_out(self.nb[tid])

    def _grad_out(self, key: int, nbytes: int) -> int:
        return self._copy_out(nbytes)

    def _grad_done(self, key: int, ready: int) -> bool:
        return ready <= self.compute_ns() + self.lag

    def _grad_wait(self, key: int, ready: int) -> int:
        return self._land(key, ready) or 0


class GuardedPolicy(BasePolicy):
    """The learned policy under a guard (module docstring); candidate 0 is the learned one."""

    name = "learned"

    def __init__(self, primary: Policy, alternates: Sequence[Policy], config: GuardConfig | None = None,
                 link: Callable[[], LinkModel | None] | None = None, compute_ns: Callable[[], int] | None = None,
                 prior: GuardPrior | None = None, names: Sequence[str] | None = None,
                 budget_share: float | None = None):
        """`link`: the executor's link model, when known (None: no shadows, the learned
        policy runs alone). `compute_ns`: the executor's compute time; default, the clock
        given to `bind_clock` less the waits its tier counted (the simulator's). `prior`:
        the artifact's (predictor.guard_prior): which candidate serves from the warm-up's backward.
        `budget_share`: the budget as a share of the managed bytes when the executor fixes it
        only after the warm-up (a live run's fraction), so the prior can pick before then.
        `names`: the alternates' specs (the note's and the prior's names; default, each policy's name)."""
        # Without a link there can be no shadows: the rivals would observe for nothing.
        self.candidates: list[Policy] = [primary, *alternates] if link is not None else [primary]
        self.config = config or GuardConfig()
        self.variant = primary.variant
        self._link = link
        self._tier: Any = None
        self._clock: Callable[[], int] | None = None
        self._compute = compute_ns
        self._names = [primary.name, *(names or [c.name for c in alternates])][: len(self.candidates)]
        self.prior = prior
        self.budget_share = budget_share

    @property
    def primary(self) -> Policy:
        """The learned policy the guard watches (candidate 0)."""
        return self.candidates[0]

    # -- the executor's hooks --------------------------------------------------------------
    def bind_tier(self, tier: TierView) -> None:
        self._tier = tier
        for c in self.candidates:
            if overrides(c, "bind_tier"):
                c.bind_tier(tier)

    def bind_clock(self, now_ns: Callable[[], int]) -> None:
        self._clock = now_ns
        if self._compute is None:  # the simulator's: its clock less the waits its tier counted
            self._compute = self._compute_ns
        for c in self.candidates:
            c.bind_clock(now_ns)

    def start(self, tensors: TensorInfo) -> None:
        for c in self.candidates:
            c.start(tensors)
        self.active = 0
        self.stall: dict[int, int] = {}  # candidate -> stall ns summed over the scored steps
        self.hits: dict[int, int] = {}  # candidate -> hits over the scored steps
        self.scored = 0
        self.compute_scored = 0  # compute ns of the scored steps
        self.history: list[tuple[int, int]] = []  # (first step, candidate) of each stretch (the prior's: from that step's backward)
        self.shadows: list[ShadowTier] = []  # one per candidate not active, once budget, link and clock are known
        self._slot: dict[int, int] = {}  # candidate -> its shadow
        self._started = False  # shadows started: from then on a candidate observes only through its shadow
        self.decided = False  # the shadows have stopped (GuardConfig.decide_steps)
        self.decided_step: int | None = None
        """The first step served without shadows (decided as it began), for a run's steady-state figures."""
        self.dropped: list[int] = []  # rivals no longer shadowed (hopeless)
        self._step: int | None = None
        self._steps_seen = 0
        self._scored_from: int | None = None  # steps seen when the first scored step has ended
        self._prior_applied = False
        self._prior_tried = False  # tried in the first backward
        self._prior_hopeless: list[int] = []  # rivals the prior found hopeless before the shadows began
        self._mark: list[tuple[int, int]] = []  # (waited, hits) at the step's start: the executor's, then each shadow's
        self._mark_compute = 0
        self._resume = False  # the active candidate just changed: re-request its window once
        self._written = -1  # an activation written at the last event: shadows place it at the next
        self._observers = [c.observe for c in self.candidates]
        self._skip: set[int] = set()  # experts a router said will not run, until they are read
        self.prior_note: str | None = None  # what the prior chose, from which cell

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        if step != self._step:
            self._new_step(step)
        if phase == _BACKWARD and not self._prior_tried and self.prior is not None:
            # The warm-up's backward: the prior's pick serves from here, not from the next step.
            # The backward's end and the optimizer step already ask for the next step's first
            # reads, and copies asked for then are queued ahead of any the pick would ask for later.
            # Tried once (it sums the managed bytes); too early, it is tried again as step 1 begins.
            self._prior_tried = True
            self._prior_applied = self._apply_prior()
            if self.history and self.history[-1][1] != self.active:
                self.history.append((step, self.active))
        if self._skip:
            self._skip.discard(tensor_id)
        active = self.active
        out = self._observers[active](step, micro_step, phase, access, tensor_id)
        if self._started:
            if self.shadows:
                self._shadow(step, micro_step, phase, access, tensor_id)
            # decided for a rival: the learned one is no longer asked, nor paid for (a daemon
            # stops hearing from this run; its reply schedule ends there, the simulation's too)
        else:
            for i, obs in enumerate(self._observers):
                if i != active:
                    obs(step, micro_step, phase, access, tensor_id)
        if self._resume:
            self._resume = False
            c = self.candidates[active]
            window = c.upcoming(getattr(c, "lookahead", 64)) or []
            if window:  # what it asked for while it was not listened to
                return [*window, *out]
        return out

    def _shadow(self, step: int, micro_step: int, phase: int, access: int, t: int) -> None:
        """The event through every shadow tier, as the executor serves it: an activation's
        write is placed once its size is known (the executor writes after this call), a
        read one is freed."""
        tier = self._tier
        w = self._written
        if w >= 0:
            self._written = -1
            for sh in self.shadows:
                sh.write(w, tier.nb[w])
        is_act = tier.kind[t] == _ACT
        for sh in self.shadows:
            if t >= len(sh.nb) or sh.kind[t] != tier.kind[t]:
                sh.declare(t, tier.kind[t], tier.nb[t], tier.managed[t])
            if is_act and access == _READ and not sh.exists[t]:
                continue  # produced before the shadow began
            sh.event(step, micro_step, phase, access, t)
            if is_act and access == _READ:
                sh.free(t)
        if is_act and access != _READ:
            self._written = t

    def predicted_next_use(self, tensor_id: int) -> float:
        if tensor_id in self._skip:
            return NO_PREDICTION  # its router chose other experts: the first to give way
        return self.candidates[self.active].predicted_next_use(tensor_id)

    def hint(self, want: Sequence[int], skip: Sequence[int]) -> Sequence[int]:
        """Router hints (runtime.routers) serve whichever candidate serves: the learned model
        cannot see a router's choice coming, the hook can. The shadows take them too, so each
        rival is scored as it would serve. Experts to skip give way first until read."""
        self._skip.difference_update(want)
        self._skip.update(skip)
        for sh in self.shadows:
            sh.take_hint(want, skip)
        return want

    def upcoming(self, k: int) -> list[int] | None:
        return self.candidates[self.active].upcoming(k)

    def extend(self, tensors: TensorInfo, first_id: int) -> None:
        for c in self.candidates:
            c.extend(tensors, first_id)

    def close(self) -> None:
        for c in self.candidates:
            c.close()

    @property
    def served_by(self) -> str | None:  # type: ignore[override]
        return self.candidates[0].served_by

    @served_by.setter
    def served_by(self, value: str | None) -> None:
        pass  # BasePolicy's class attribute; the learned candidate's is reported

    @property
    def note(self) -> str | None:  # type: ignore[override]
        inner = self.candidates[0].note
        return f"{inner}; {self.describe()}" if inner else self.describe()

    @note.setter
    def note(self, value: str | None) -> None:
        pass  # BasePolicy's class attribute; the note is built from the run

    # -- the guard -------------------------------------------------------------------------------
    def _compute_ns(self) -> int:
        """The executor's compute time: its clock less every wait it counted."""
        t = self._tier
        return self._clock() - t.stall_ns - t.optimizer_wait_ns - t.grad_wait_ns  # type: ignore[misc]

    def _counters(self) -> list[tuple[int, int]]:
        """(waited, hits) of each tier so far, the executor's first: waits are stalls and gradient waits."""
        return [(t.stall_ns + t.grad_wait_ns, t.hits) for t in (self._tier, *self.shadows)]

    def _new_step(self, step: int) -> None:
        """The step that ran has ended: score it for every candidate (the active one from
        the executor, the others from their shadows), pick the best, start the next."""
        if self._tier is not None and not self.decided:
            now = self._counters()
            if self._mark and self._scored_from is not None and self._steps_seen >= self._scored_from:
                self.compute_scored += self._compute_now() - self._mark_compute
                self._score([(w - w0, h - h0) for (w, h), (w0, h0) in zip(now, self._mark)])
                if self.decided:
                    self.decided_step = step
            if not self._started:
                # At step 0 when the budget is known up front (a tensor table with sizes); else as
                # the step after the warm-up begins, which is then the shadows' own warm-up:
                # mirror, scan and markov know nothing yet, so it is not scored either.
                self._start_shadows()
                if self._started:
                    self._scored_from = self._steps_seen + 2
            if self._started and self._steps_seen >= 1 and not self._prior_applied and self.prior is not None:
                self._prior_applied = True  # the first step after the warm-up: the prior picks who serves it
                self._apply_prior()
            self._mark = self._counters()
            self._mark_compute = self._compute_now()
        self._step = step
        self._steps_seen += 1
        if not self.history or self.history[-1][1] != self.active:
            self.history.append((step, self.active))

    def _compute_now(self) -> int:
        """The executor's compute time (0 where the guard has no clock: no shadows either)."""
        return self._compute() if self._compute is not None else 0

    def _slack(self, least: int, compute: int | None = None) -> float:
        """How far above the least stall a candidate still counts as near (`compute`: the
        compute time the stalls were summed over; default, the scored steps')."""
        return self.config.margin * least + self.config.noise * (self.compute_scored if compute is None else compute)

    def _hopeless(self, stall: int, least: int, compute: int) -> bool:
        """Over `drop_over` times the least stall (plus `noise` of `compute`): never worth shadowing."""
        return stall > self.config.drop_over * least + self.config.noise * compute

    def _start_shadows(self) -> None:
        link = self._link() if self._link is not None else None
        budget = self._tier.budget_bytes
        compute = self._compute
        if link is None or budget is None or compute is None:
            return
        hopeless = self._prior_hopeless
        others = [i for i in range(len(self.candidates)) if i != self.active and i not in hopeless]
        self.dropped.extend(i for i in hopeless if i not in self.dropped)
        tier = self._tier
        busy = getattr(tier, "_busy", None)  # parameters whose module runs: spared as the executor spares them
        self.shadows = [ShadowTier(self.candidates[i], budget, link, compute, busy) for i in others]
        for sh in self.shadows:
            sh.ahead_share = tier.ahead_share  # the executor's rules, its window too
        tier.followers.extend(self.shadows)  # they take the executor's optimizer steps and gradients
        self._slot = {i: k for k, i in enumerate(others)}
        self._started = True

    def _apply_prior(self) -> bool:
        """In the warm-up's backward (else as the first step after it begins): the candidate
        the prior's nearest cell picks (by `pick_best`, the rule of `_best`) serves from here.
        The run's budget share is the budget over the managed bytes declared so far, or, while
        the budget is not fixed yet (a live run fixes it as the warm-up ends), `budget_share`,
        the fraction it will be fixed at; its link ratio the link's own, else the warm-up step's
        (copying those bytes once over the warm-up's compute time). False: too early to tell
        (no tier, budget or link ratio yet)."""
        tier, link = self._tier, self._link() if self._link is not None else None
        if tier is None:
            return False
        managed = sum(tier.nb[t] for t in range(len(tier.nb)) if tier.managed[t])
        budget = tier.budget_bytes
        share = budget / managed if budget and managed > 0 else self.budget_share
        step0 = self._compute_now() - self._mark_compute
        ratio = (link.ratio or (link.copy_ns(managed) / step0 if step0 > 0 else 0)) if link is not None else 0
        if managed <= 0 or not share or not ratio or ratio <= 0:
            return False
        cell = self.prior.nearest(share, ratio)  # type: ignore[union-attr]
        names = [LEARNED, *self._names[1:]]
        known = {i: n for i, n in enumerate(names) if n in cell.stall_ns}
        if 0 not in known:
            return True
        stall = {i: cell.stall_ns[n] for i, n in known.items()}
        pick = pick_best(stall, {i: cell.hits[n] for i, n in known.items()},
                         lambda least: self._slack(least, cell.compute_ns), prefer=0)
        self.prior_note = f"prior {names[pick]} (budget {cell.budget:g}, link ratio {cell.link_ratio:g})"
        if pick != self.active:
            self._switch(pick)
        least = min(stall.values())  # rivals hopeless there are not shadowed
        hopeless = [i for i in stall if i != 0 and i != self.active and self._hopeless(stall[i], least, cell.compute_ns)]
        if self._started:
            self._drop([i for i in hopeless if i in self._slot])
        else:
            self._prior_hopeless = hopeless
        return True

    def _score(self, step: list[tuple[int, int]]) -> None:
        """One scored step: (waited, hits) per tier, the executor's first."""
        scored = [(self.active, step[0])] + [(i, step[1 + k]) for i, k in self._slot.items()]
        for i, (waited, hits) in scored:
            self.stall[i] = self.stall.get(i, 0) + waited
            self.hits[i] = self.hits.get(i, 0) + hits
        self.scored += 1
        if self.scored < self.config.min_steps:
            return
        best = self._best()
        if best != self.active:
            self._switch(best)
        if self.config.decide_steps and self.scored >= self.config.decide_steps:
            if self.active == 0 and self.config.cheaper_within:
                self._prefer_cheaper()
            self._stop_shadows()
        else:
            self._drop_hopeless()

    def _stop_shadows(self) -> None:
        """Decided: the rivals stop observing; the serving candidate serves on (and the
        learned one, if it is not the one serving, observes directly, without a tier)."""
        for sh in self.shadows:
            self._tier.followers.remove(sh)
        self.shadows, self._slot, self.decided = [], {}, True

    def _drop_hopeless(self) -> None:
        """Rivals whose stall is over `drop_over` times the least leave their shadows: they
        are no longer observed, scored or served (GuardConfig.drop_over)."""
        least = min(self.stall[i] for i in (self.active, *self._slot))
        gone = [i for i in self._slot if i != 0  # the learned one always: it may come back
                and self._hopeless(self.stall[i], least, self.compute_scored)]
        self._drop(gone)

    def _drop(self, gone: list[int]) -> None:
        """These rivals leave their shadows: no longer observed, scored or served."""
        if not gone:
            return
        keep = [(i, self.shadows[k]) for i, k in self._slot.items() if i not in gone]
        for i in gone:
            self._tier.followers.remove(self.shadows[self._slot[i]])
            self.dropped.append(i)
        self.shadows = [sh for _, sh in keep]
        self._slot = {i: k for k, (i, _) in enumerate(keep)}

    def _best(self) -> int:
        """The serving candidate while its stall so far is near the least (within `margin`,
        or under `noise` of the compute): switching costs, near-equal stalls decide nothing.
        Otherwise, of the near ones, the one with the most hits (the learned one, then the
        first, on a tie): the stall is what the user waits for, and among near-equal stalls
        the hits are what the next step can build on."""
        live = sorted([self.active, *self._slot])  # a dropped rival's sum stopped growing: it is out
        return pick_best({i: self.stall[i] for i in live}, self.hits, self._slack, keep=self.active, prefer=0)

    def _prefer_cheaper(self) -> None:
        """The learned candidate serves at the decision: a rival as good serves on instead."""
        i = self._cheaper()
        if i is not None:
            self._switch(i)

    def _cheaper(self) -> int | None:
        """The shadowed rival with the most hits among those whose stall is near the least and
        whose hits are within `cheaper_within` of the learned one's; None if there is none."""
        least = min(self.stall[i] for i in (self.active, *self._slot))
        floor = (1 - self.config.cheaper_within) * self.hits.get(0, 0)
        good = [i for i in self._slot if self.stall[i] <= least + self._slack(least) and self.hits.get(i, 0) >= floor]
        return max(good, key=lambda i: (self.hits.get(i, 0), -self.stall[i], -i)) if good else None

    def _switch(self, i: int) -> None:
        """Candidate `i` serves the executor from the next event; the one it replaces takes
        its shadow (that shadow's residents are `i`'s choices: the step boundary evens it out)."""
        old = self.active
        k = self._slot.pop(i, None)
        if k is not None:
            self.shadows[k].set_policy(self.candidates[old])
            self._slot[old] = k
        self.active = i
        self._resume = True

    def describe(self) -> str:
        """Which candidate ran from which step: the guard's account of the run."""
        if not hasattr(self, "history"):
            return "guard: not started"
        runs = ", ".join(f"{self._names[i]} from step {s}" + ("'s backward" if k and self.history[k - 1][0] == s else "")
                         for k, (s, i) in enumerate(self.history))
        scored = ", ".join(f"{self._names[i]} {ns / 1e6:.0f} ms" for i, ns in sorted(self.stall.items()))
        dropped = ", ".join(self._names[i] for i in self.dropped)
        return (f"guard: {runs}" + (f" ({self.prior_note})" if self.prior_note else "")
                + (f" (stall over {self.scored} scored steps: {scored})" if scored else "")
                + (f"; no longer shadowed: {dropped}" if dropped else "")
                + ("; decided, shadows stopped" if self.decided else ""))


def guarded(primary: Policy, *, lookahead: int, alternates: Sequence[str] = DEFAULT_ALTERNATES,
            config: GuardConfig | None = None, link: Callable[[], LinkModel | None] | None = None,
            compute_ns: Callable[[], int] | None = None, prior: GuardPrior | None = None,
            budget_share: float | None = None) -> GuardedPolicy:
    """`primary` (the learned policy, in process, through the daemon or its simulation)
    under a guard with the simple policies named in `alternates` beside it, and the
    artifact's prior (predictor.guard_prior.load_prior) when it has one."""
    from predictor.policies import make_policy

    return GuardedPolicy(primary, [make_policy(a, lookahead=lookahead) for a in alternates], config, link, compute_ns,
                         prior, names=list(alternates), budget_share=budget_share)

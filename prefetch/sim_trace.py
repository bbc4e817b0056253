"""The simulation of one trace: the event loop over the device-tier model (see prefetch.simulate)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from heapq import heapify, heappop, heappush
from itertools import islice

import numpy as np

from predictor.interface import NO_PREDICTION, Policy, TensorInfo, overrides
from prefetch.oracle import INF_POS as _INF_POS
from prefetch.oracle import managed_stream
from prefetch.sim_report import SimReport
from runtime.budget import Budget
from runtime.link import LinkModel
from runtime.stats import AccessStats
from runtime.trace_format import Access, Kind, Phase, Trace

HIT, LATE, MISS, WRITE = 0, 1, 2, 3
"""Codes of SimReport.outcomes, one per managed event."""
_READ = int(Access.READ)
_INF = NO_PREDICTION


def _warmup_split(trace: Trace, warmup_steps: int) -> tuple[int, int]:
    """(index of the first measured event, number of measured steps): steps in order of appearance."""
    steps = np.asarray(trace.column("step"))
    if not len(steps):
        raise ValueError(f"{trace.stem}: the trace has no events")
    starts = np.flatnonzero(np.concatenate(([True], steps[1:] != steps[:-1])))
    if len(starts) <= warmup_steps:
        raise ValueError(
            f"{trace.stem}: {len(starts)} step(s) recorded and {warmup_steps} of warm-up leave none "
            "to measure; record more steps or lower --warmup"
        )
    return int(starts[warmup_steps]), len(starts) - warmup_steps



# -- the simulation of one trace --------------------------------------------------------------
def _simulate_trace(
    trace: Trace,
    policy: Policy,
    *,
    policy_name: str,
    budget: Budget,
    budget_bytes: int,
    managed_bytes: int,
    link: LinkModel,
    warmup_steps: int,
) -> SimReport:
    full_start, measured_steps = _warmup_split(trace, warmup_steps)
    ms = managed_stream(trace)
    idx = ms["index"]
    n = len(idx)
    measure_start = int(np.searchsorted(idx, full_start))
    num_tensors = trace.num_tensors
    nb = trace.tensor_nbytes().tolist()
    kinds_np = trace.tensor_kinds()
    managed_t = trace.managed_tensors().tolist()
    is_act = (kinds_np == int(Kind.ACTIVATION)).tolist()
    is_param = (kinds_np == int(Kind.PARAMETER)).tolist()
    cpy = [link.copy_ns(b) for b in nb]  # copy time of each tensor, either direction (its current size)
    copy_ns = link.copy_ns
    ctime = ms["ctime"]
    delta_np = np.diff(ctime, prepend=0) if n else np.zeros(0, np.int64)
    # Plain Python lists for the hot loop (indexing numpy scalars per event is slow).
    steps_l = np.asarray(trace.column("step"))[idx].tolist()
    micro_l = np.asarray(trace.column("micro_step"))[idx].tolist()
    phase_l = np.asarray(trace.column("phase"))[idx].tolist()
    access_l = np.asarray(trace.column("access"))[idx].tolist()
    tids_l = np.asarray(trace.column("tensor_id"))[idx].tolist()
    nbytes_l = np.asarray(trace.column("nbytes"))[idx].tolist()  # an activation's size at its pack
    delta_l = delta_np.tolist()
    ctime_l = ctime.tolist()
    # Modules running at each event (the live store spares their parameters): in a forward
    # pass, the event's module and its ancestors; none in backward and optimizer phases.
    owner, running_l = _modules_running(trace, idx, phase_l)
    running: frozenset[int] = _NOTHING
    # the optimizer step before managed event j: (compute to its pre-hook, to its post-hook, to j)
    opt_l: list[tuple[int, int, int] | None] = [None] * n
    for j, pre, post in zip(ms["opt_at"].tolist(), ms["opt_pre"].tolist(), ms["opt_post"].tolist()):
        before = int(ctime[j - 1]) if j else 0
        opt_l[j] = (pre - before, post - pre, int(ctime[j]) - post)

    policy.start(TensorInfo.from_table(trace.tensors))
    observe = policy.observe
    pnu = policy.predicted_next_use
    # Fast-path hooks, decided once here (not per event): called only when the policy overrides them.
    use_heap = overrides(policy, "next_read_key")  # the oracle: same victims as the scan, found in O(log n)
    key = policy.next_read_key
    rekeyed = policy.rekeyed if overrides(policy, "rekeyed") else None
    admit = policy.admit_prefetch if overrides(policy, "admit_prefetch") else None

    # Device state. `res` holds tensors with device bytes (resident or in flight), LRU first.
    res: OrderedDict[int, None] = OrderedDict()
    move = res.move_to_end
    ready = [0] * num_tensors  # when the tensor's last copy to the device completes
    infl = bytearray(num_tensors)  # prefetched and not read yet: not evictable (the live store's in-flight copy)
    exists = bytearray(1 if not is_act[t] else 0 for t in range(num_tensors))  # has a value (device or host)
    pref = bytearray(num_tensors)  # brought by a prefetch and not yet read: the `mark` it was issued under
    mark = 1  # 1 in warm-up, 2 in the measured steps: a use is credited to the window that issued it
    pending: list[tuple[float, int]] = []  # heap of (due read count, tensor id) not yet issued
    queued: dict[int, float] = {}  # tensor id -> its live entry's due
    deferred: dict[int, float] = {}  # parameter requests held until the optimizer step is done
    step_start = step_prev = 0  # reads when this optimizer step began; reads in the previous one
    in_opt = False  # between the optimizer's pre- and post-hook
    engine_free = 0  # when the FIFO copy engine finishes its last queued copy
    now = 0
    cnow = 0  # the compute clock: `now` without stalls and waits (for admit_prefetch)
    reads = 0  # managed reads so far: the clock predictions are relative to
    current = -1  # the tensor read last: handed to compute, not evictable
    used = peak = 0
    evictions = bytes_copied = bytes_written_back = prefetch_issued = 0
    overcommits = write_stall = requested = refused = opt_wait = stall = 0
    # Heap mode only: residents keyed by (-next_read_key, LRU stamp); stale entries are skipped.
    heap: list[tuple[int, int, int]] = []
    stamp = [0] * num_tensors  # LRU order: the tick of the tensor's insertion or last read
    tick = 0

    def want(t: int, due: float) -> None:
        nonlocal requested
        if is_param[t] and step_prev and due > step_start + step_prev and not in_opt:
            # expected in the next step: the optimizer will rewrite the host master first
            if deferred.get(t, _INF) > due:
                deferred[t] = due
            return
        old = queued.get(t)
        if old is None or due < old:
            if old is None:
                requested += 1
            queued[t] = due
            heappush(pending, (due, t))

    def evict(v: int, far: float) -> None:
        """Evict a resident `v` (predicted `far` reads away): an activation is written back;
        one still expected is queued again."""
        nonlocal used, evictions, bytes_written_back, engine_free
        del res[v]
        used -= nb[v]
        evictions += 1
        pref[v] = 0
        if is_act[v]:
            start = engine_free if engine_free > now else now
            engine_free = start + cpy[v]
            bytes_written_back += nb[v]
        if far != _INF:
            want(v, reads + far)

    def make_room(need: int, protect: int, refuse: bool, due: float) -> bool:
        """Evict until `need` more bytes fit (runtime.store.TensorStore._make_room). With `refuse`,
        never evict a tensor predicted at or before `due`; otherwise wait for copies in flight."""
        nonlocal now, stall, overcommits
        if used + need <= budget_bytes:
            return True
        if use_heap:
            aside = []
            ok = None
            while heap:
                e = heappop(heap)
                v = e[2]
                if v not in res or stamp[v] != e[1] or key(v) != -e[0]:
                    continue  # stale: evicted, freed, read again or re-keyed since pushed
                aside.append(e)
                if v == protect or v == current or infl[v] or owner[v] in running:
                    continue
                k = -e[0]
                if k >= _INF_POS:
                    evict(v, _INF)
                else:
                    if refuse and k <= due:
                        ok = False
                        break
                    evict(v, float(k - reads))
                if used + need <= budget_bytes:
                    ok = True
                    break
            for e in aside:  # stale ones (the evicted) are skipped later
                heappush(heap, e)
            if ok is not None:
                return ok
        else:
            finite: list[tuple[float, int]] = []
            for v in list(res):  # pass 1, LRU order: tensors outside the policy's horizon
                if v == protect or v == current or infl[v] or owner[v] in running:
                    continue
                d = pnu(v)
                if d == _INF:
                    evict(v, _INF)
                    if used + need <= budget_bytes:
                        return True
                else:
                    finite.append((d, v))
            finite.sort(reverse=True)  # pass 2: furthest predicted use first
            limit = due - reads
            for d, v in finite:
                if refuse and d <= limit:
                    return False
                evict(v, d)
                if used + need <= budget_bytes:
                    return True
        if refuse:
            return False
        # A demand fetch or a write must fit: wait for unread prefetches to land (a stall),
        # then evict them, the one needed last first. Only what is in use can overflow.
        for d, v in sorted([(pnu(v), v) for v in res if infl[v] and v != protect], reverse=True):
            r = ready[v]
            if r > now:
                stall += r - now
                now = r
            infl[v] = 0
            evict(v, d)
            if used + need <= budget_bytes:
                return True
        overcommits += 1
        return True

    def place(t: int) -> None:
        """`t` now has device bytes (a prefetch, a demand fetch, a write)."""
        nonlocal used, peak, tick
        res[t] = None
        used += nb[t]
        if used > peak:
            peak = used
        if use_heap:
            tick += 1
            stamp[t] = tick
            if not infl[t]:  # an unread prefetch is not evictable: it enters the heap once read
                heappush(heap, (-key(t), tick, t))

    def drain() -> None:
        """Issue queued requests, soonest due first, while room can be made (see the module docstring)."""
        nonlocal engine_free, bytes_copied, prefetch_issued, refused
        while pending:
            due, p = heappop(pending)
            if queued.get(p) != due:
                continue  # superseded by an earlier due, or already served
            if p in res or not exists[p]:
                del queued[p]
                continue
            if admit is not None:
                end = (engine_free if engine_free > now else now) + cpy[p]
                if not admit(p, end, now, cnow):
                    del queued[p]
                    continue
            if used + nb[p] > budget_bytes and not make_room(nb[p], p, True, due):
                heappush(pending, (due, p))
                refused += 1
                return  # later requests are due later still: wait for the next event
            del queued[p]
            start = engine_free if engine_free > now else now
            engine_free = start + cpy[p]
            ready[p] = engine_free
            infl[p] = 1
            pref[p] = mark
            place(p)
            bytes_copied += nb[p]
            prefetch_issued += 1

    def free(t: int) -> None:
        """An activation's value is gone (read by autograd, or replaced): no cost."""
        nonlocal used
        if t in res:
            del res[t]
            used -= nb[t]
        exists[t] = 0
        infl[t] = 0
        pref[t] = 0

    # -- the event loop: warm-up, snapshot, measured ------------------------------------
    outcome = bytearray(n)  # per managed event: HIT (0), LATE, MISS, WRITE
    accesses = hits = late = misses = prefetch_used = carried = 0
    warm: AccessStats | None = None
    warm_extra = (0, 0, 0, 0, 0)
    t_measure = 0
    for lo, hi in ((0, measure_start), (measure_start, n)):
        if lo == measure_start:  # end of warm-up: snapshot (ChampSim's way of dropping it)
            warm = AccessStats(
                accesses=accesses, hits=hits, late=late, misses=misses, stall_ns=stall,
                bytes_copied=bytes_copied, bytes_written_back=bytes_written_back,
                prefetch_issued=prefetch_issued, prefetch_used=prefetch_used, evictions=evictions,
                steps=warmup_steps,
            )
            warm_extra = (overcommits, write_stall, requested, refused, opt_wait)
            t_measure = now
            mark = 2
            peak = used  # the peak reported is over measured steps
        for i, (s, m, ph, a, t, dt, opt, run) in enumerate(zip(
            islice(steps_l, lo, hi), islice(micro_l, lo, hi), islice(phase_l, lo, hi), islice(access_l, lo, hi),
            islice(tids_l, lo, hi), islice(delta_l, lo, hi), islice(opt_l, lo, hi), islice(running_l, lo, hi),
        ), lo):
            if opt is None:
                now += dt
            else:  # the optimizer step: drop the (now stale) device copies of parameters
                now += opt[0]
                cnow += opt[0]
                in_opt = True
                running = _NOTHING
                for p in [p for p in res if not is_act[p]]:
                    if infl[p]:
                        if ready[p] > now:
                            opt_wait += ready[p] - now
                            now = ready[p]  # the copy still reads the host master
                        infl[p] = 0
                    del res[p]
                    used -= nb[p]
                    pref[p] = 0
                    d = pnu(p)
                    if d != _INF:
                        want(p, reads + d)  # wanted again once updated
                now += opt[1]
                cnow += opt[1]
                # the optimizer's post-hook: requests from here on belong to the next step
                in_opt = False
                step_prev, step_start = reads - step_start, reads
                held, deferred = deferred, {}
                for p, due in held.items():
                    want(p, due)
                if pending:
                    drain()  # fetch them, updated
                now += opt[2]
            cnow = ctime_l[i]
            running = run
            if a == _READ:
                accesses += 1
                if t in res:
                    if infl[t]:
                        r = ready[t]
                        if r <= now:
                            hits += 1
                        else:
                            late += 1
                            outcome[i] = LATE
                            stall += r - now
                            now = r
                        infl[t] = 0
                    else:
                        hits += 1
                    move(t)
                    if use_heap:
                        tick += 1
                        stamp[t] = tick
                else:
                    misses += 1
                    outcome[i] = MISS
                    if not exists[t]:
                        raise ValueError(
                            f"{trace.stem.name}: managed event {i} reads activation {trace.keys[t]} "
                            "before any write of it"
                        )
                    if used + nb[t] > budget_bytes:
                        make_room(nb[t], t, False, 0)
                    start = engine_free if engine_free > now else now
                    engine_free = start + cpy[t]
                    stall += engine_free - now
                    now = engine_free
                    bytes_copied += nb[t]
                    ready[t] = now
                    place(t)
                pv = pref[t]
                if pv:
                    if pv == mark:
                        prefetch_used += 1
                    else:
                        carried += 1  # issued in warm-up, used after it: credited to warm-up
                    pref[t] = 0
                current = t
                queued.pop(t, None)  # read: a pending request for it is moot
                reads += 1
            else:
                outcome[i] = WRITE
            reqs = observe(s, m, ph, a, t)
            if use_heap:
                if t in res and not infl[t]:  # re-keyed by observe (or read: evictable now)
                    heappush(heap, (-key(t), stamp[t], t))
                if rekeyed is not None:
                    for v in rekeyed():
                        if v in res and not infl[v]:
                            heappush(heap, (-key(v), stamp[v], v))
                if len(heap) > 4 * len(res) + 1024:  # compact: drop the stale entries
                    heap = [(-key(v), stamp[v], v) for v in res if not infl[v]]
                    heapify(heap)
            if reqs:
                for j, p in enumerate(reqs):
                    if p in res or not exists[p] or not managed_t[p]:
                        continue  # resident, in flight, not produced yet, or not managed
                    d = pnu(p)
                    want(p, reads + (d if d != _INF else j + 1))
            if pending:
                drain()
            if is_act[t]:
                if a == _READ:
                    free(t)  # autograd releases a saved activation once unpacked
                else:  # packed: replaces the value, makes room first, then resident and dirty
                    if exists[t]:
                        free(t)
                    b = nbytes_l[i]
                    if b != nb[t]:  # this step's value has another size
                        nb[t] = b
                        cpy[t] = copy_ns(b)
                    if used + b > budget_bytes:
                        st = stall
                        make_room(nb[t], t, False, 0)
                        write_stall += stall - st
                    exists[t] = 1
                    pref[t] = 0
                    ready[t] = now
                    place(t)

    final = AccessStats(
        accesses=accesses, hits=hits, late=late, misses=misses, stall_ns=stall,
        bytes_copied=bytes_copied, bytes_written_back=bytes_written_back,
        prefetch_issued=prefetch_issued, prefetch_used=prefetch_used, evictions=evictions,
        steps=warmup_steps + measured_steps,
    )
    assert warm is not None
    return SimReport(
        policy=policy_name, link=link.describe(), managed_bytes=managed_bytes, budget_bytes=budget_bytes,
        budget=str(budget), peak_device_bytes=peak, steps=measured_steps, warmup_steps=warmup_steps,
        events=n, stats=final - warm, warmup=dataclasses.replace(warm, prefetch_used=warm.prefetch_used + carried),
        measured_ns=now - t_measure,
        baseline_ns=int(delta_np[measure_start:].sum()),
        overcommits=overcommits - warm_extra[0], write_stall_ns=write_stall - warm_extra[1],
        prefetch_requested=requested - warm_extra[2], prefetch_refused=refused - warm_extra[3],
        optimizer_wait_ns=opt_wait - warm_extra[4], trace=trace.stem.name,
        outcomes=np.frombuffer(bytes(outcome), dtype=np.int8),
    )


_NOTHING: frozenset[int] = frozenset()
_FORWARD_PHASES = (int(Phase.FORWARD), int(Phase.EVAL), int(Phase.RECOMPUTE))


def _modules_running(trace: Trace, idx: np.ndarray, phase_l: list[int]) -> tuple[list[int], list[frozenset[int]]]:
    """(owner, running): the module index owning each parameter (-1 for other tensors), and per
    managed event the modules whose forward is under way: in a forward phase (forward, eval,
    recompute) the event's module (the one whose pre-hook reads a parameter, or the innermost
    one packing an activation) and its ancestors by path, as the tracker's module stack holds
    them; nothing in backward and optimizer phases. The live store does not evict a parameter
    whose module is running (runtime.tracker.AccessTracker.params_in_use)."""
    paths = list(trace.manifest.get("modules") or [])
    index = {p: i for i, p in enumerate(paths)}
    kinds = trace.tensor_kinds()
    modules = trace.tensors.column("module").to_pylist()
    tids = trace.tensors.column("tensor_id").to_pylist()
    owner = [-1] * trace.num_tensors
    for t, mod in zip(tids, modules):
        if kinds[t] == int(Kind.PARAMETER):
            owner[t] = index.get(mod or "", -1)
    chains: dict[int, frozenset[int]] = {}
    root = {index["<root>"]} if "<root>" in index else set()  # the model itself (runtime.tracker's name)

    def chain(m: int) -> frozenset[int]:
        c = chains.get(m)
        if c is None:
            if 0 <= m < len(paths):
                parts = paths[m].split(".")
                up = {index[q] for q in (".".join(parts[:k]) for k in range(1, len(parts))) if q in index}
                c = frozenset(up | root | {m})
            else:
                c = _NOTHING
            chains[m] = c
        return c

    mods = np.asarray(trace.column("module_id"))[idx].tolist()
    running = [chain(m) if ph in _FORWARD_PHASES else _NOTHING for m, ph in zip(mods, phase_l)]
    return owner, running


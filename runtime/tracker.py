"""Observes every access to the managed tensors of a model and names each one stably.

One mechanism serves both the recorder (which logs accesses) and the prefetching store
(which must also *act* on them), through a small `AccessSink`:

    parameters         forward pre-hook of the module that owns them (READ); in backward
                       when autograd unpacks a saved parameter (READ); optimizer step (WRITE)
    activations        saved_tensors_hooks pack (WRITE, forward) / unpack (READ, backward)
    gradients          post-accumulate-grad hook (WRITE); optimizer step (READ)
    optimizer state    optimizer step post-hook (READ, or WRITE when first created)

Keys (stable across steps and runs of one architecture):
    param:<qualified name>   act:<module path>:<call index>:<pack index>
    grad:<param name>        opt:<param name>:<state name>
The call index counts a module's grad-enabled calls within the step, so a variable
number of no-grad forwards (generate(), evaluation) does not shift activation keys.

Steps: the optimizer's step ends one. Each root forward starts a micro-step; a root
forward without grad (or in eval mode) is an EVAL pass, not a training micro-step. A loop
that calls the model's submodules and never the model itself (a LightningModule's
`self.layers(x)`) gets the same passes: a forward from outside the model after a backward
or a step, or one switching between training and evaluation, begins one.
Everything here runs on the training thread; hooks only append to lists (no syncs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from runtime.architecture import architecture_signature, layer_of
from runtime.trace_format import Access, Kind, Phase

monotonic_ns = time.monotonic_ns
_graph_task_id = torch._C._current_graph_task_id  # -1 outside autograd's backward
_FORWARD, _BACKWARD, _RECOMPUTE, _OPTIMIZER, _EVAL = (int(p) for p in Phase)
_PARAMETER, _ACTIVATION, _GRADIENT, _OPTIMIZER_STATE = (int(k) for k in Kind)
_READ, _WRITE = int(Access.READ), int(Access.WRITE)

ROOT_PATH = "<root>"


class AccessSink(Protocol):
    """Receives accesses from the tracker. The recorder logs; the prefetch store acts."""

    def new_tensor(self, row: dict[str, Any]) -> None:
        """A tensor seen for the first time (a TENSOR_SCHEMA row)."""

    def access(self, step: int, micro_step: int, seq: int, phase: int, kind: int, access: int,
               tensor_id: int, nbytes: int, time_ns: int, module_id: int, layer: int) -> None:
        """One access, in program order."""

    def pack(self, kind: int, tensor_id: int, tensor: torch.Tensor) -> Any:
        """What autograd keeps for a saved managed tensor (the tensor, or a handle)."""

    def unpack(self, kind: int, tensor_id: int, packed: Any) -> torch.Tensor:
        """The tensor back from what `pack` returned."""

    def step_end(self, step: int) -> None:
        """Optimizer step `step` finished."""


@dataclass(kw_only=True, slots=True)
class TrackerConfig:
    """What counts as a managed tensor."""

    min_activation_bytes: int = 1024
    """Saved tensors smaller than this (masks, scalars, indices) are not managed."""
    track_optimizer_state: bool = True
    """Log optimizer state and gradient reads at the optimizer step."""

    def __post_init__(self) -> None:
        if self.min_activation_bytes < 0:
            raise ValueError(f"min_activation_bytes must be >= 0, got {self.min_activation_bytes}")


def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1


class AccessTracker:
    """Installs the hooks on one model (and optionally its optimizer) and feeds a sink."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, sink: AccessSink,
                 config: TrackerConfig | None = None):
        self.model = model
        self.optimizer = optimizer
        self.sink = sink
        self.config = config or TrackerConfig()
        self.architecture = architecture_signature(model)
        self.module_paths: list[str] = []
        self._module_index: dict[int, int] = {}
        for path, mod in model.named_modules(remove_duplicate=True):
            self._module_index[id(mod)] = len(self.module_paths)
            self.module_paths.append(path or ROOT_PATH)
        self._module_layer = [layer_of(p) for p in self.module_paths] + [-1]  # [-1] -> -1
        self._keys: dict[str, int] = {}
        self._tensor_nbytes: list[int] = []
        self._tensor_module: list[int] = []
        # parameters: identity -> (tensor id, grad id); storage pointer -> tensor id
        self._param_tid: dict[int, int] = {}
        self._param_name: dict[int, str] = {}
        self._param_module: dict[int, int] = {}
        self._storage_param: dict[int, int] = {}
        self._param_storage: dict[int, int] = {}
        self.params_by_tid: dict[int, torch.nn.Parameter] = {}
        for mod_path, mod in model.named_modules(remove_duplicate=True):
            for pname, p in mod.named_parameters(recurse=False, remove_duplicate=False):
                if id(p) in self._param_name:
                    continue
                qual = f"{mod_path}.{pname}" if mod_path else pname
                self._param_name[id(p)] = qual
                self._param_module[id(p)] = self._module_index[id(mod)]
        self._owned_params: dict[int, list[int]] = {}  # module index -> parameters it owns (_param_module)
        for name, p in model.named_parameters():
            self._register_param(p)
        # step state (plain attributes: read on every event)
        self._step = 0
        self._micro = -1  # root forwards so far in this step, minus one
        self._need_root = True
        """No root call since the last backward or step: a forward of a submodule called from
        outside the model (`model.layers(x)` instead of `model(x)`) begins a micro-step (_pre),
        as does one that trains after an evaluation pass, or evaluates after training."""
        self._seq = 0
        self._train_pass = True
        self._calls: dict[int, int] = {}  # module index -> grad-enabled calls this step
        self._act_tid: dict[tuple[int, int, int], int] = {}
        self._min_act_bytes = self.config.min_activation_bytes
        self._managed: list[bool | None] | None = getattr(sink, "managed_flags", None)
        """A sink that acts only on managed tensors (the store) shares its per-id flags:
        events of ids flagged False never reach it, and it gets no gradient or optimizer
        state events (never managed). None (the recorder): every event."""
        self._buffer: list | None = getattr(sink, "event_buffer", None)
        self._flush_every = getattr(sink, "flush_every", 1 << 30)
        self._direct_params: dict[int, tuple[int, ...]] = {-1: ()}
        for mod in model.modules():
            idx = self._module_index[id(mod)]
            self._direct_params[idx] = tuple(
                self._param_tid[id(p)] for p in mod._parameters.values() if p is not None and id(p) in self._param_tid
            )
        self._stack: list[int] = []
        self._handles: list[Any] = []
        self._module_handles: list[Any] = []  # the per-module hooks (go_quiet() removes them)
        self._quiet = False
        self._saved_hooks: torch.autograd.graph.saved_tensors_hooks | None = None
        self._pack_counts: dict[tuple[int, int], int] = {}
        self._attached = False
        self.clock: Callable[[], int] = monotonic_ns
        """The time source of each event's time_ns: wall time (time.monotonic_ns), unless the
        prefetcher on the simulated device sets the compute its copy engine saw
        (runtime.link.ComputeClock.compute_ns), so a trace it writes times what the
        simulator replays as compute (docs/traces.md)."""
        self.wrap: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda fn: fn
        """Applied to every hook before it is installed (the prefetcher times them: runtime.overhead)."""
        self._pack_fn: Callable[[torch.Tensor], Any] = self._pack
        self._unpack_fn: Callable[[Any], torch.Tensor] = self._unpack

    # -- tensor table ------------------------------------------------------------------
    def _tensor_id(self, key: str, kind: int, t: torch.Tensor | None, module_idx: int,
                   shape: tuple[int, ...] | None = None, dtype: str | None = None, nbytes: int | None = None) -> int:
        tid = self._keys.get(key)
        if tid is not None:
            return tid
        tid = len(self._tensor_nbytes)
        if t is not None:
            shape, dtype, nbytes = tuple(t.shape), str(t.dtype).removeprefix("torch."), t.numel() * t.element_size()
        self._keys[key] = tid
        self._tensor_nbytes.append(int(nbytes or 0))
        self._tensor_module.append(module_idx)
        path = self.module_paths[module_idx] if module_idx >= 0 else ""
        self.sink.new_tensor(dict(tensor_id=tid, key=key, kind=int(kind), shape=list(shape or ()),
                                  dtype=dtype or "", nbytes=int(nbytes or 0), module=path,
                                  layer=self._module_layer[module_idx] if module_idx >= 0 else -1))
        return tid

    def _register_param(self, p: torch.nn.Parameter) -> int:
        key = id(p)
        if key in self._param_tid:
            return self._param_tid[key]
        name = self._param_name[key]
        tid = self._tensor_id(f"param:{name}", Kind.PARAMETER, p, self._param_module[key])
        self._param_tid[key] = tid
        self.params_by_tid[tid] = p
        self._owned_params.setdefault(self._param_module[key], []).append(tid)
        self._storage_param[_storage_key(p)] = tid
        self._param_storage[tid] = _storage_key(p)
        return tid

    def rebind_param(self, tid: int, data: torch.Tensor) -> None:
        """Point parameter `tid` at `data` (a device or host copy), keeping the
        storage map that recognises saved parameters in `pack` up to date."""
        p = self.params_by_tid[tid]
        p.data = data
        old = self._param_storage.get(tid)
        if old is not None and self._storage_param.get(old) == tid:
            del self._storage_param[old]
        new = _storage_key(data)
        self._storage_param[new] = tid
        self._param_storage[tid] = new

    def param_ids(self, module: torch.nn.Module) -> list[int]:
        """The tensor ids of `module`'s parameters (its children's included)."""
        tids = self._param_tid
        return [tids[id(p)] for p in module.parameters() if id(p) in tids]

    @property
    def tensor_keys(self) -> list[str]:
        return list(self._keys)

    def params_in_use(self) -> frozenset[int] | set[int]:
        """Ids of the parameters whose owning module is in its forward (the store does not evict them)."""
        if not self._stack:
            return frozenset()
        owned = self._owned_params
        return {t for m in self._stack for t in owned.get(m, ())}

    def preload_tensors(self, rows: list[dict[str, Any]]) -> None:
        """Assign ids from a known tensor table (a trace's, an artifact's) before the
        first step, so live ids equal the ids the policy was trained or recorded with.
        Must be called before any tensor other than parameters is seen."""
        for row in sorted(rows, key=lambda r: r["tensor_id"]):
            key = row["key"]
            if key in self._keys:
                if self._keys[key] != row["tensor_id"]:
                    raise ValueError(f"tensor table mismatch: {key} is id {self._keys[key]} here, "
                                     f"{row['tensor_id']} in the reference table")
                continue
            if row["tensor_id"] != len(self._tensor_nbytes):
                raise ValueError(f"reference tensor table is not dense at id {row['tensor_id']} ({key})")
            module = row.get("module") or ""
            idx = self.module_paths.index(module) if module in self.module_paths else -1
            self._tensor_id(key, row["kind"], None, idx, tuple(row.get("shape") or ()), row.get("dtype"), row["nbytes"])

    # -- events ------------------------------------------------------------------------
    # The hot path: every hook ends here. Plain ints, local lookups, one tuple per event;
    # a logging sink (the recorder) takes the tuple straight into its buffer.
    def _emit(self, phase: int, kind: int, access: int, tid: int, module_idx: int, nbytes: int = -1) -> None:
        ev = (self._step, self._micro if self._micro > 0 else 0, self._seq, phase, kind, access, tid,
              self._tensor_nbytes[tid] if nbytes < 0 else nbytes, self.clock(), module_idx,
              self._module_layer[module_idx])  # index -1 hits the trailing -1 sentinel
        self._seq += 1
        buf = self._buffer
        if buf is not None:
            buf.append(ev)
            if len(buf) >= self._flush_every:
                self.sink.flush()
        else:
            self.sink.access(*ev)

    def _forward_phase(self) -> int:
        if _graph_task_id() != -1:  # inside autograd: checkpoint recompute
            return _RECOMPUTE
        return _FORWARD if self._train_pass else _EVAL

    # -- hooks -------------------------------------------------------------------------
    def enter_root(self, module: torch.nn.Module, args: Any) -> None:
        """Run the pre-hooks for a root call already under way (adopted mid-call)."""
        self._root_pre(module, args)
        self._pre(module, args)

    def _root_pre(self, module: torch.nn.Module, args: Any) -> None:
        if _graph_task_id() != -1:
            return  # recompute of the root inside backward: same micro-step
        self._need_root = False
        self._micro += 1
        self._train_pass = torch.is_grad_enabled() and module.training

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        if not self._stack and module is not self.model and (
                self._need_root or self._train_pass != (torch.is_grad_enabled() and module.training)):
            self._root_pre(module, args)  # called from outside the model (model.layers(x)): a new pass
        idx = self._module_index.get(id(module), -1)
        self._stack.append(idx)
        phase = self._forward_phase()
        if phase != _EVAL and torch.is_grad_enabled():
            calls = self._calls
            calls[idx] = calls.get(idx, -1) + 1
        for tid in self._direct_params[idx]:  # direct parameters only; children do theirs
            self._emit(phase, _PARAMETER, _READ, tid, idx)

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()

    def _pack(self, t: torch.Tensor) -> Any:
        if not self._attached or self._quiet:
            return t
        ptid = self._storage_param.get(t.untyped_storage().data_ptr())
        if ptid is not None:
            return ("p", ptid, self.sink.pack(_PARAMETER, ptid, t))
        nbytes = t.nbytes
        if nbytes < self._min_act_bytes or not t.is_floating_point():
            return t
        if not self._stack:
            # Saved-tensor hooks are global to the thread: this is another model's (or a
            # loss outside the forward's) tensor. Not ours to name or move.
            return t
        mod = self._stack[-1]
        call = self._calls.get(mod, 0)
        ck = (mod, call)
        pack_idx = self._pack_counts.get(ck, 0)
        self._pack_counts[ck] = pack_idx + 1
        tid = self._act_tid.get((mod, call, pack_idx))
        if tid is None:
            tid = self._tensor_id(f"act:{self.module_paths[mod]}:{call}:{pack_idx}", Kind.ACTIVATION, t, mod)
            self._act_tid[(mod, call, pack_idx)] = tid
        managed = self._managed
        if managed is not None and managed[tid] is False:
            return t  # the sink keeps it where it is: no event, nothing to unpack
        self._emit(self._forward_phase(), _ACTIVATION, _WRITE, tid, mod, nbytes)
        return ("a", tid, self.sink.pack(_ACTIVATION, tid, t))

    def _unpack(self, packed: Any) -> torch.Tensor:
        if packed.__class__ is not tuple:
            return packed
        tag, tid, inner = packed
        kind = _PARAMETER if tag == "p" else _ACTIVATION
        phase = _BACKWARD if _graph_task_id() != -1 else _RECOMPUTE
        self._need_root = True  # the next forward from outside the model is a new micro-step
        self._emit(phase, kind, _READ, tid, self._tensor_module[tid])
        return self.sink.unpack(kind, tid, inner)

    def _grad_hook(self, p: torch.Tensor) -> None:
        tid = self._grad_id(p)
        self._emit(Phase.BACKWARD, Kind.GRADIENT, Access.WRITE, tid, self._param_module[id(p)])

    def _grad_id(self, p: torch.Tensor) -> int:
        return self._tensor_id(f"grad:{self._param_name[id(p)]}", Kind.GRADIENT, p, self._param_module[id(p)])

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._quiet:
            pass  # no accesses observed any more (go_quiet): the step ends, nothing else
        elif self._managed is not None:  # the managed parameters' writes only, in the same order
            managed, ptid = self._managed, self._param_tid
            for group in optimizer.param_groups:
                for p in group["params"]:
                    tid = ptid.get(id(p))
                    if tid is not None and p.grad is not None and managed[tid] is not False:
                        self._emit(_OPTIMIZER, _PARAMETER, _WRITE, tid, self._param_module[id(p)])
        elif self.config.track_optimizer_state:
            seen_state = self._opt_state_seen
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) not in self._param_tid or p.grad is None:
                        continue
                    mod = self._param_module[id(p)]
                    self._emit(Phase.OPTIMIZER, Kind.GRADIENT, Access.READ, self._grad_id(p), mod)
                    for sname, s in optimizer.state.get(p, {}).items():
                        if not isinstance(s, torch.Tensor) or s.numel() <= 1:
                            continue  # step counters
                        key = f"opt:{self._param_name[id(p)]}:{sname}"
                        tid = self._tensor_id(key, Kind.OPTIMIZER_STATE, s, mod)
                        first = tid not in seen_state
                        seen_state.add(tid)
                        self._emit(Phase.OPTIMIZER, Kind.OPTIMIZER_STATE, Access.WRITE if first else Access.READ, tid, mod)
                    self._emit(Phase.OPTIMIZER, Kind.PARAMETER, Access.WRITE, self._param_tid[id(p)], mod)
        self._end_step()

    def _end_step(self) -> None:
        self.sink.step_end(self._step)
        self._step += 1
        self._micro = -1
        self._need_root = True
        self._seq = 0
        self._calls.clear()
        self._pack_counts.clear()

    # -- lifecycle ---------------------------------------------------------------------
    def attach(self, *, saved_tensor_hooks: bool = True) -> "AccessTracker":
        """Install every hook. `saved_tensor_hooks=False` when the caller installs
        `pack_hook`/`unpack_hook` itself (the global launcher does)."""
        if self._attached:
            return self
        self._opt_state_seen: set[int] = set()
        w = self.wrap
        self._handles.append(self.model.register_forward_pre_hook(w(self._root_pre)))
        pre, post = w(self._pre), w(self._post)
        for mod in self.model.modules():
            # Leaves without parameters (activation functions, dropout, rotary tables) get
            # no hooks: a hooked module call costs ~5 µs, and what they save is attributed
            # to their parent, which keeps keys stable and layer-specific.
            if mod is not self.model and not mod._parameters and not mod._modules:
                continue
            self._module_handles.append(mod.register_forward_pre_hook(pre))
            self._module_handles.append(mod.register_forward_hook(post, always_call=True))
        managed = self._managed
        if managed is not None:  # the sink's parameter flags are set by now (TensorStore.attach)
            self._direct_params = {idx: tuple(t for t in tids if managed[t] is not False)
                                   for idx, tids in self._direct_params.items()}
        else:  # gradients are never managed: only a logging sink wants them
            grad_hook = w(self._grad_hook)
            for p in self.model.parameters():
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(grad_hook))
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_post_hook(w(self._optimizer_post)))
        self._pack_fn, self._unpack_fn = w(self._pack), w(self._unpack)
        if saved_tensor_hooks:
            self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack_fn, self._unpack_fn)
            self._saved_hooks.__enter__()
        self._attached = True
        return self

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Adopt an optimizer found later (the launcher sees it at its first step)."""
        if self.optimizer is optimizer:
            return
        self.optimizer = optimizer
        post = self.wrap(self._optimizer_post)
        self._handles.append(optimizer.register_step_post_hook(post))
        post(optimizer, (), {})  # this step's post-hook already passed

    def optimizer_owns_params(self, optimizer: torch.optim.Optimizer) -> bool:
        return any(id(p) in self._param_tid for g in optimizer.param_groups for p in g["params"])

    @property
    def pack_hook(self) -> Callable[[torch.Tensor], Any]:
        return self._pack_fn

    @property
    def unpack_hook(self) -> Callable[[Any], torch.Tensor]:
        return self._unpack_fn

    @property
    def step(self) -> int:
        return self._step

    @property
    def quiet(self) -> bool:
        return self._quiet

    def go_quiet(self) -> None:
        """Stop observing tensor accesses; keep counting steps and micro-steps. For a sink
        that no longer acts on accesses (the store once everything is resident): the
        per-module hooks go, and saved tensors are no longer packed (our saved-tensor hooks
        are popped when they are the innermost pair; else `_pack` passes tensors through).
        The model's root pre-hook and the optimizer's post-hook stay. Idempotent."""
        if self._quiet:
            return
        self._quiet = True
        for h in self._module_handles:
            h.remove()
        self._module_handles.clear()
        self._stack.clear()
        hooks = self._saved_hooks
        top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)  # private: may go
        if hooks is not None and top is not None and top(False) == (hooks.pack_hook, hooks.unpack_hook):
            hooks.__exit__(None, None, None)
            self._saved_hooks = None

    def detach(self) -> None:
        """Remove every hook. Idempotent; safe on a half-attached tracker."""
        for h in (*self._handles, *self._module_handles):
            h.remove()
        self._handles.clear()
        self._module_handles.clear()
        if self._saved_hooks is not None:
            self._saved_hooks.__exit__(None, None, None)
            self._saved_hooks = None
        self._attached = False


"""Mirror: the backward reads what the forward saved, in reverse; the forward follows the last forward.

    policy = make_policy("mirror", lookahead=64)

Two facts of autograd that need no learning:
- The backward of a micro-step unpacks what its forward saved, last saved first: the
  saved activations and the parameters the forward read, in about the reverse order. So
  once the forward has run, the backward's reads are known, whichever experts a router
  picked, whichever layers stochastic depth skipped, however many tokens went where. This
  is what ZeRO-3's and FSDP's backward prefetch use (the forward's module order, reversed).
- The next forward repeats the last one where the model is static and diverges where it
  is not; at a divergence the position is found again (the tensor's place in the last
  forward) rather than given up for the rest of the step, as replay does.

Reads never seen in a backward (a parameter the backward does not need, like an
embedding's weight) are left out of the mirrored list once a backward has shown it.
"""

from __future__ import annotations

from typing import Sequence

from predictor.horizon import Outstanding
from predictor.interface import NO_PREDICTION, BasePolicy, TensorInfo
from runtime.defaults import EVAL_LOOKAHEAD
from runtime.trace_format import Access, Kind, Phase

_READ = int(Access.READ)
_BACKWARD, _OPTIMIZER = int(Phase.BACKWARD), int(Phase.OPTIMIZER)
_ACT = int(Kind.ACTIVATION)
_FIND_AHEAD = 256
"""How far ahead of its position a read is looked for in the expected sequence."""


class _Follow:
    """A position in an expected sequence of reads, found again where the run diverges."""

    __slots__ = ("seq", "pos")

    def __init__(self, seq: list[int]):
        self.seq = seq
        self.pos = 0

    def read(self, t: int) -> bool:
        """`t` was read: step past its next place in the sequence (False: not expected soon)."""
        seq, pos = self.seq, self.pos
        end = min(len(seq), pos + _FIND_AHEAD)
        for i in range(pos, end):
            if seq[i] == t:
                self.pos = i + 1
                return True
        return False

    def ahead(self, k: int) -> list[int]:
        return self.seq[self.pos:self.pos + k]


class Mirror(BasePolicy):
    """The backward mirrors this micro-step's forward; the forward follows the last one (module docstring)."""

    name = "mirror"

    def __init__(self, lookahead: int = EVAL_LOOKAHEAD) -> None:
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {lookahead}")
        self.lookahead = lookahead

    def start(self, tensors: TensorInfo) -> None:
        self.kinds = [int(k) for k in tensors.kinds]
        self.last_forward: dict[bool, list[int]] = {}  # by grad mode (train / eval): the last pass's reads
        self.forward: list[int] = []  # this pass's reads and saved activations, in order
        self.in_backward = False
        self.eval = False
        self.fwd_only: set[int] = set()  # read in the last forward and not in its backward
        self._bwd_reads: set[int] = set()  # read in the backward under way
        self.follow: _Follow | None = None
        self.now = 0
        self.pending = Outstanding(self.lookahead)
        self.window: list[int] = []
        self._key: tuple[int, int, bool] | None = None  # (step, micro-step, eval) of the pass under way

    def _kind(self, t: int) -> int:
        return self.kinds[t] if t < len(self.kinds) else -1

    def extend(self, tensors: TensorInfo, first_id: int) -> None:
        grow = first_id + len(tensors.kinds) - len(self.kinds)
        if grow > 0:
            self.kinds.extend([-1] * grow)
        for i, k in enumerate(tensors.kinds):
            self.kinds[first_id + i] = int(k)

    def _end_forward(self) -> None:
        """The forward just run becomes what the next one of its kind is expected to read."""
        if self.forward:
            self.last_forward[self.eval] = [t for t in self.forward if self._kind(t) != _ACT]
        self.forward = []

    def _begin_backward(self) -> None:
        saved = self.forward
        self._end_forward()
        skip = self.fwd_only
        # activations are read once each; a parameter where its last use in the forward was
        mirrored, seen = [], set()
        for t in reversed(saved):
            if t in seen or t in skip:
                continue
            seen.add(t)
            mirrored.append(t)
        nxt = self.last_forward.get(False, [])  # after the backward: the next forward
        self.follow = _Follow(mirrored + nxt)
        self.in_backward = True

    def observe(self, step: int, micro_step: int, phase: int, access: int, tensor_id: int) -> Sequence[int]:
        t = tensor_id
        if phase == _OPTIMIZER:
            return ()
        backward = phase == _BACKWARD
        if backward and not self.in_backward:
            self._begin_backward()
        elif not backward:
            key = (step, micro_step, phase == int(Phase.EVAL))
            if self.in_backward or key != self._key:  # a new forward pass
                if not self.in_backward:
                    self._end_forward()
                self._note_backward_reads()
                self.in_backward = False
                self._key = key
                self.eval = key[2]
                self.follow = _Follow(self.last_forward.get(self.eval, []))
        if access != _READ:
            if not backward and self._kind(t) == _ACT:
                self.forward.append(t)  # saved for the backward
            return ()
        self.now += 1
        self.pending.consume(t)
        if backward:
            self._bwd_reads.add(t)
        else:
            self.forward.append(t)
        f = self.follow
        if f is None or not f.read(t):
            self.window = []
            return ()
        self.window = window = f.ahead(self.lookahead)
        return self.pending.admit(window, range(self.now + 1, self.now + 1 + len(window)), self.now)

    def _note_backward_reads(self) -> None:
        """A backward has ended: parameters its forward read and it did not are forward-only."""
        if not self.in_backward:
            return
        last = self.last_forward.get(False, [])
        read = self._bwd_reads
        self.fwd_only = {t for t in last if t not in read and self._kind(t) != _ACT}
        self._bwd_reads = set()

    def upcoming(self, k: int) -> list[int]:
        return self.window[:k]

    def predicted_next_use(self, tensor_id: int) -> float:
        return self.pending.next_use(tensor_id, self.now)

"""Hypothesis strategies for wire messages: valid ones, damaged ones and noise.

Shared by tests/faults/test_fault_wire.py and benchmarks/fault_suite.py (which puts this
folder on sys.path), so the benchmark's 10k messages are the kind the tests try.
Only runtime.wire's public names are used: the decoder is tested as clients meet it.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from predictor.interface import TensorInfo
from runtime import wire

# Text a client may send: any code point UTF-8 can carry, NUL excluded (it joins strings).
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
_U32 = st.integers(0, 2**32 - 1)
_NON_NEGATIVE_F32 = st.one_of(st.floats(0, 1e6, width=32), st.just(float("inf")))


@st.composite
def tensor_tables(draw, max_rows: int = 12) -> TensorInfo:
    """A valid tensor table: kinds in Kind, nbytes >= 0, layers >= -1."""
    n = draw(st.integers(0, max_rows))
    return TensorInfo(
        keys=tuple(draw(st.lists(_TEXT, min_size=n, max_size=n))),
        kinds=np.asarray(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int8),
        nbytes=np.asarray(draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)), dtype=np.int64),
        layers=np.asarray(draw(st.lists(st.integers(-1, 100), min_size=n, max_size=n)), dtype=np.int16),
        modules=tuple(draw(st.lists(_TEXT, min_size=n, max_size=n))),
    )


# One event near the edges of every range (ids of a table of up to ~40 tensors): the
# decoder's range checks decide, so some rows pass and some are one off.
_EVENT_ROW = st.tuples(st.integers(-2, 100), st.integers(-2, 10), st.integers(-2, 6), st.integers(-1, 3),
                       st.integers(-2, 45))


@st.composite
def event_arrays(draw, max_rows: int = 64) -> np.ndarray:
    """EVENT_DTYPE rows: near-valid values, or raw bytes (range checks are the decoder's job)."""
    n = draw(st.integers(0, max_rows))
    if draw(st.booleans()):
        return np.array(draw(st.lists(_EVENT_ROW, min_size=n, max_size=n)), dtype=wire.EVENT_DTYPE).reshape(n)
    raw = draw(st.binary(min_size=n * wire.EVENT_DTYPE.itemsize, max_size=n * wire.EVENT_DTYPE.itemsize))
    return np.frombuffer(raw, dtype=wire.EVENT_DTYPE).copy()


@st.composite
def valid_messages(draw) -> list[bytes]:
    """The frames of one well-formed message of any type, as bytes."""
    kind = draw(st.sampled_from(list(wire.MsgType)))
    session, seq = draw(_U32), draw(_U32)
    if kind is wire.MsgType.HELLO:
        msg = wire.Hello(architecture=draw(_TEXT.filter(bool)), policy=draw(_TEXT), tensors=draw(tensor_tables()),
                         lookahead=draw(st.integers(0, wire.MAX_LOOKAHEAD)), next_use=draw(st.booleans()))
    elif kind is wire.MsgType.TENSORS:
        table = draw(tensor_tables())
        first = draw(st.integers(0, wire.MAX_TENSORS - table.num_tensors))
        msg = wire.Tensors(session=session, first_id=first, tensors=table)
    elif kind is wire.MsgType.EVENTS:
        msg = wire.Events(session=session, seq=seq, events=draw(event_arrays()))
    elif kind is wire.MsgType.COMMANDS:
        n = draw(st.integers(0, 32))
        ids = np.asarray(draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n)), dtype=np.int32)
        nu = draw(st.none() | st.lists(_NON_NEGATIVE_F32, min_size=n, max_size=n))
        msg = wire.Commands(session=session, seq=seq, tensor_ids=ids,
                            next_use=None if nu is None else np.asarray(nu, dtype=np.float32))
    elif kind is wire.MsgType.HELLO_OK:
        msg = wire.HelloOk(session=session, policy=draw(_TEXT), requested=draw(_TEXT),
                           fallback_reason=draw(st.none() | _TEXT), num_tensors=draw(st.integers(0, 2**31)))
    elif kind is wire.MsgType.ERROR:
        msg = wire.Error(code=draw(st.sampled_from([c.value for c in wire.ErrorCode])), message=draw(_TEXT),
                         refused=draw(_TEXT), session=session, seq=seq)
    elif kind is wire.MsgType.BYE:
        msg = wire.Bye(session=session, reason=draw(_TEXT), exiting=draw(st.booleans()))
    elif kind is wire.MsgType.PING:
        msg = wire.Ping(seq=seq)
    else:
        msg = wire.Pong(seq=seq, info=draw(st.dictionaries(_TEXT, st.integers() | _TEXT | st.booleans(), max_size=4)))
    return [bytes(f) for f in msg.encode()]


def _mutate(draw, frames: list[bytes]) -> list[bytes]:
    """One to three damages of the sort a buggy or hostile client makes."""
    frames = list(frames)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "drop", "duplicate", "insert", "header"]))
        i = draw(st.integers(0, max(len(frames) - 1, 0)))
        if not frames:
            frames = [b""]
        if op == "flip" and frames[i]:
            j = draw(st.integers(0, len(frames[i]) - 1))
            b = bytearray(frames[i])
            b[j] ^= draw(st.integers(1, 255))
            frames[i] = bytes(b)
        elif op == "truncate":
            frames[i] = frames[i][: draw(st.integers(0, len(frames[i])))]
        elif op == "extend":
            frames[i] = frames[i] + draw(st.binary(min_size=1, max_size=16))
        elif op == "drop" and len(frames) > 1:
            del frames[i]
        elif op == "duplicate":
            frames.insert(i, frames[i])
        elif op == "insert":
            frames.insert(i, draw(st.binary(max_size=32)))
        elif op == "header":  # a well-formed header with hostile fields over the same body
            frames[0] = wire.HEADER.pack(
                wire.MAGIC, draw(st.sampled_from([wire.WIRE_VERSION, 0, 2, 255])), draw(st.integers(0, 255)),
                draw(st.integers(0, 2**16 - 1)), draw(_U32), draw(_U32),
                draw(st.sampled_from([0, 1, 7, 2**16, 2**20, 2**24, 2**31, 2**32 - 1])) if draw(st.booleans())
                else draw(_U32))
    return frames


@st.composite
def damaged_messages(draw) -> list[bytes]:
    """A valid message after one to three random damages."""
    return _mutate(draw, draw(valid_messages()))


@st.composite
def noise_messages(draw) -> list[bytes]:
    """Random frames, the first often a header that passes the magic and version checks."""
    body = draw(st.lists(st.binary(max_size=64), max_size=7))
    if draw(st.booleans()):
        hdr = wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, draw(st.integers(0, 255)), draw(st.integers(0, 3)),
                               draw(_U32), draw(_U32), draw(st.integers(0, 64)))
        return [hdr, *body]
    return body


def any_messages() -> st.SearchStrategy[list[bytes]]:
    """What the fuzz tests and the benchmark send: valid, damaged and noise, mixed."""
    return st.one_of(valid_messages(), damaged_messages(), noise_messages())

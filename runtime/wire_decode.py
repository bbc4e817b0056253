"""Decoding the daemon wire format (runtime.wire): frames in, a validated message out.

Both sides decode what the other sent, and the other side may be anything: every length,
dtype size, enum and id range is checked, and each failure is a `WireError` whose code the
daemon sends back in ERROR. Nothing is unpickled or eval'd.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from predictor.interface import TensorInfo
from runtime.trace_format import Access, Kind, Phase
from runtime.wire import (
    EVENT_DTYPE,
    FLAG_NEXT_USE,
    HEADER,
    HEADER_BYTES,
    ID_DTYPE,
    KIND_DTYPE,
    LAYER_DTYPE,
    MAGIC,
    MAX_ARCHITECTURE_CHARS,
    MAX_COMMAND_IDS,
    MAX_EVENTS_PER_BATCH,
    MAX_JSON_BYTES,
    MAX_LOOKAHEAD,
    MAX_TENSORS,
    NBYTES_DTYPE,
    NEXT_USE_DTYPE,
    WIRE_VERSION,
    Bye,
    Commands,
    Error,
    ErrorCode,
    Events,
    Hello,
    HelloOk,
    Message,
    MsgType,
    Ping,
    Pong,
    Tensors,
    WireError,
)

# Below these many rows, validate in Python: cheaper than numpy reductions (~1 us each).
_SMALL = 64  # command ids: 3 reductions
_SMALL_EVENTS = 48  # events: 8 reductions
_PHASE_MAX = max(Phase)
_ACCESS_MAX = max(Access)
_KIND_MAX = max(Kind)


# -- decoding ------------------------------------------------------------------------------


def decode_header(frame: bytes) -> tuple[MsgType, int, int, int, int]:
    """(type, flags, session, seq, count) of a header frame, validated."""
    if len(frame) != HEADER_BYTES:
        if len(frame) >= 4 and bytes(frame[:4]) != MAGIC:
            raise WireError(ErrorCode.BAD_MAGIC, f"not a prefetch wire message (magic {bytes(frame[:4])!r})")
        raise WireError(ErrorCode.BAD_FRAMES, f"header frame is {len(frame)} bytes, expected {HEADER_BYTES}")
    magic, version, kind, flags, session, seq, count = HEADER.unpack(frame)
    if magic != MAGIC:
        raise WireError(ErrorCode.BAD_MAGIC, f"not a prefetch wire message (magic {magic!r}, expected {MAGIC!r})")
    if version != WIRE_VERSION:
        raise WireError(ErrorCode.BAD_VERSION, f"wire version {version}, this build speaks {WIRE_VERSION}")
    try:
        kind = MsgType(kind)
    except ValueError:
        raise WireError(ErrorCode.BAD_TYPE, f"unknown message type {kind}") from None
    return kind, flags, session, seq, count


def decode(frames: Sequence[bytes], *, num_tensors: int | None = None) -> Message:
    """A validated message from its frames. `num_tensors` bounds EVENTS/COMMANDS ids when known."""
    if not frames:
        raise WireError(ErrorCode.BAD_FRAMES, "empty message")
    kind, flags, session, seq, count = decode_header(frames[0])
    body = frames[1:]
    if kind is MsgType.EVENTS:  # the hot path first
        _expect_frames(kind, body, 1)
        events = _array(body[0], EVENT_DTYPE, count, "events", MAX_EVENTS_PER_BATCH)
        if num_tensors is not None:
            check_events(events, num_tensors)
        return Events(session=session, seq=seq, events=events)
    if kind is MsgType.COMMANDS:
        has_next_use = bool(flags & FLAG_NEXT_USE)
        _expect_frames(kind, body, 2 if has_next_use else 1)
        ids = _array(body[0], ID_DTYPE, count, "command ids", MAX_COMMAND_IDS)
        if count and num_tensors is not None:
            # Python min/max beat numpy reductions on the few ids a batch usually brings
            lo, hi = (min(v := ids.tolist()), max(v)) if count <= _SMALL else (int(ids.min()), int(ids.max()))
            if lo < 0 or hi >= num_tensors:
                raise WireError(ErrorCode.BAD_RANGE, f"command ids span [{lo}, {hi}], table has {num_tensors}")
        next_use = None
        if has_next_use:
            next_use = _array(body[1], NEXT_USE_DTYPE, count, "next_use", MAX_COMMAND_IDS)
            ok = all(x >= 0 for x in next_use.tolist()) if count <= _SMALL else bool(np.all(next_use >= 0))
            if not ok:  # x >= 0 is False for NaN too
                raise WireError(ErrorCode.BAD_RANGE, "next_use values must be >= 0 (inf for none), not NaN")
        return Commands(session=session, seq=seq, tensor_ids=ids, next_use=next_use)
    if kind is MsgType.HELLO:
        return _decode_hello(body, count)
    if kind is MsgType.TENSORS:
        _expect_frames(kind, body, 5)
        if seq + count > MAX_TENSORS:
            raise WireError(ErrorCode.BAD_RANGE, f"table would grow to {seq + count} tensors, at most {MAX_TENSORS}")
        return Tensors(session=session, first_id=seq, tensors=_decode_table(body, count))
    if kind is MsgType.HELLO_OK:
        _expect_frames(kind, body, 1)
        schema = {"policy": str, "requested": str, "fallback_reason": (str, type(None)), "num_tensors": int}
        meta = _json_obj(body[0], "HELLO_OK meta", schema)
        return HelloOk(session=session, **meta)
    if kind is MsgType.ERROR:
        _expect_frames(kind, body, 1)
        meta = _json_obj(body[0], "ERROR body", {"code": str, "message": str, "refused": str})
        return Error(code=meta["code"], message=meta["message"], refused=meta["refused"], session=session, seq=seq)
    if kind is MsgType.BYE:
        _expect_frames(kind, body, 1)
        meta = _json_obj(body[0], "BYE body", {"reason": str, "exiting": bool})
        return Bye(session=session, reason=meta["reason"], exiting=meta["exiting"])
    if kind is MsgType.PING:
        _expect_frames(kind, body, 0)
        return Ping(seq=seq)
    _expect_frames(kind, body, 1)  # PONG
    return Pong(seq=seq, info=_json_obj(body[0], "PONG info", None))


def check_events(events: np.ndarray, num_tensors: int) -> None:
    """Raise WireError unless every event's fields are in range for a table of `num_tensors`."""
    n = len(events)
    if not n:
        return
    if n <= _SMALL_EVENTS:
        for step, micro, phase, access, tid in events.tolist():
            if not (0 <= tid < num_tensors and 0 <= phase <= _PHASE_MAX and 0 <= access <= _ACCESS_MAX
                    and step >= 0 and micro >= 0):
                _range_error(events, num_tensors)
        return
    if (
        int(events["tensor_id"].min()) < 0
        or int(events["tensor_id"].max()) >= num_tensors
        or int(events["phase"].min()) < 0
        or int(events["phase"].max()) > _PHASE_MAX
        or int(events["access"].min()) < 0
        or int(events["access"].max()) > _ACCESS_MAX
        or int(events["step"].min()) < 0
        or int(events["micro_step"].min()) < 0
    ):
        _range_error(events, num_tensors)


def _range_error(events: np.ndarray, num_tensors: int) -> None:
    checks = (
        ("tensor_id", 0, num_tensors - 1),
        ("phase", 0, int(_PHASE_MAX)),
        ("access", 0, int(_ACCESS_MAX)),
        ("step", 0, None),
        ("micro_step", 0, None),
    )
    for name, lo, hi in checks:
        col = events[name]
        bad = (col < lo) if hi is None else ((col < lo) | (col > hi))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise WireError(ErrorCode.BAD_RANGE, f"event {i}: {name}={int(col[i])}, must be {span}")
    raise WireError(ErrorCode.BAD_RANGE, "event out of range")  # pragma: no cover


def _decode_hello(body: Sequence[bytes], n: int) -> Hello:
    _expect_frames(MsgType.HELLO, body, 6)
    meta = _json_obj(body[0], "HELLO meta", {"architecture": str, "policy": str, "lookahead": int, "next_use": bool})
    if not meta["architecture"] or len(meta["architecture"]) > MAX_ARCHITECTURE_CHARS:
        raise WireError(ErrorCode.BAD_RANGE, f"architecture must be 1..{MAX_ARCHITECTURE_CHARS} characters")
    if not 0 <= meta["lookahead"] <= MAX_LOOKAHEAD:
        raise WireError(ErrorCode.BAD_RANGE, f"lookahead {meta['lookahead']} not in [0, {MAX_LOOKAHEAD}]")
    return Hello(
        architecture=meta["architecture"],
        policy=meta["policy"],
        tensors=_decode_table(body[1:], n),
        lookahead=meta["lookahead"],
        next_use=meta["next_use"],
    )


def _decode_table(body: Sequence[bytes], n: int) -> TensorInfo:
    """keys, modules, kinds, nbytes, layers frames -> a validated TensorInfo of n rows."""
    if n > MAX_TENSORS:
        raise WireError(ErrorCode.BAD_RANGE, f"{n} tensors, at most {MAX_TENSORS}")
    keys = _split_strings(body[0], n, "keys")
    modules = _split_strings(body[1], n, "modules")
    kinds = _array(body[2], KIND_DTYPE, n, "kinds", MAX_TENSORS)
    nbytes = _array(body[3], NBYTES_DTYPE, n, "nbytes", MAX_TENSORS)
    layers = _array(body[4], LAYER_DTYPE, n, "layers", MAX_TENSORS)
    if n:
        if int(kinds.min()) < 0 or int(kinds.max()) > _KIND_MAX:
            raise WireError(ErrorCode.BAD_RANGE, f"kinds must be in [0, {int(_KIND_MAX)}] (trace_format.Kind)")
        if int(nbytes.min()) < 0:
            raise WireError(ErrorCode.BAD_RANGE, "nbytes must be >= 0")
        if int(layers.min()) < -1:
            raise WireError(ErrorCode.BAD_RANGE, "layers must be >= -1 (-1: none)")
    return TensorInfo(keys=keys, kinds=kinds, nbytes=nbytes, layers=layers, modules=modules)


def _expect_frames(kind: MsgType, body: Sequence[bytes], n: int) -> None:
    if len(body) != n:
        raise WireError(ErrorCode.BAD_FRAMES, f"{kind.name} has {len(body)} payload frames, expected {n}")


def _array(frame: bytes, dtype: np.dtype, count: int, what: str, limit: int) -> np.ndarray:
    """A read-only numpy view of `frame`, after checking its size against dtype x count."""
    if count > limit:
        raise WireError(ErrorCode.BAD_RANGE, f"{what}: count {count} exceeds the limit {limit}")
    size = len(frame)
    if size != count * dtype.itemsize:
        hint = f"; a {size // count}-byte row suggests the wrong dtype" if count and size % count == 0 else ""
        raise WireError(
            ErrorCode.BAD_PAYLOAD,
            f"{what}: {size} bytes for {count} rows of {dtype.itemsize} bytes ({_dtype_name(dtype)}){hint}",
        )
    return np.frombuffer(frame, dtype=dtype, count=count)


def _dtype_name(dtype: np.dtype) -> str:
    return "EVENT_DTYPE" if dtype == EVENT_DTYPE else dtype.str


def _split_strings(frame: bytes, n: int, what: str) -> tuple[str, ...]:
    try:
        text = bytes(frame).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(ErrorCode.BAD_PAYLOAD, f"{what}: not UTF-8 ({exc.reason})") from None
    if n == 0:
        if text:
            raise WireError(ErrorCode.BAD_PAYLOAD, f"{what}: payload for 0 tensors must be empty")
        return ()
    parts = tuple(text.split("\x00"))
    if len(parts) != n:
        raise WireError(ErrorCode.BAD_PAYLOAD, f"{what}: {len(parts)} NUL-separated strings for {n} tensors")
    return parts


def _json_obj(frame: bytes, what: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON object; with `schema`, exactly those keys with those types (bool is not int)."""
    if len(frame) > MAX_JSON_BYTES:
        raise WireError(ErrorCode.BAD_JSON, f"{what}: {len(frame)} bytes, at most {MAX_JSON_BYTES}")
    try:
        obj = json.loads(bytes(frame).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise WireError(ErrorCode.BAD_JSON, f"{what}: invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError(ErrorCode.BAD_JSON, f"{what}: expected a JSON object, got {type(obj).__name__}")
    if schema is None:
        return obj
    unknown = sorted(set(obj) - set(schema))
    missing = sorted(set(schema) - set(obj))
    if unknown or missing:
        raise WireError(ErrorCode.BAD_JSON, f"{what}: missing keys {missing}, unknown keys {unknown}")
    for key, types in schema.items():
        value = obj[key]
        ok = isinstance(value, types) and not (types is int and isinstance(value, bool))
        if not ok:
            raise WireError(ErrorCode.BAD_JSON, f"{what}: {key!r} has type {type(value).__name__}")
    return obj


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")

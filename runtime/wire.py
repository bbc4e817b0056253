"""The daemon wire format: ZeroMQ multipart messages, a versioned header and raw payloads.

    python -c "import runtime.wire as w; print(w.__doc__)"    # docs/wire.md has the same on one screen

Every message is a list of frames. Frame 0 is a fixed 20-byte header (little-endian):

    magic  b"PFWR"   4s   rejects anything that is not ours
    version          u8   WIRE_VERSION (1); a mismatch is an error, never a guess
    type             u8   MsgType
    flags            u16  COMMANDS: bit 0 = a next-use frame follows
    session          u32  set by the daemon in HELLO_OK, echoed by the client after
    seq              u32  EVENTS batch number; COMMANDS/ERROR echo the seq they answer
    count            u32  rows in the payload (tensors, events, command ids)

The remaining frames depend on the type; arrays travel as raw little-endian buffers
(numpy in, numpy out, sent with copy=False), text as UTF-8 JSON. Nothing is unpickled
or eval'd, and `decode` validates every length, dtype size, enum and id range it can
see, raising `WireError(code, message)` whose code the daemon sends back in ERROR.

    HELLO     [hdr(count=n), meta JSON, keys, modules, kinds |i1[n], nbytes <i8[n], layers <i2[n]]
    HELLO_OK  [hdr(session), meta JSON]
    TENSORS   [hdr(session, seq=first new id, count=k), keys, modules, kinds, nbytes, layers]  (table grew)
    EVENTS    [hdr(session, seq, count=n), events EVENT_DTYPE[n]  (12 bytes per event)]
    COMMANDS  [hdr(session, seq, count=k, flags), ids <i4[k], (next_use <f4[k] if flags & 1)]
    ERROR     [hdr(session, seq), JSON {"code", "message", "refused": type name}]
    BYE       [hdr(session), JSON {"reason", "exiting"}]
    PING/PONG [hdr], [hdr, JSON info]      (liveness probe; start_local_daemon uses it)

keys and modules are UTF-8 strings joined by NUL (so a key may contain anything else).
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from predictor.interface import TensorInfo
from runtime.trace_format import Access, Kind, Phase

MAGIC = b"PFWR"
WIRE_VERSION = 1
HEADER = struct.Struct("<4sBBHIII")  # magic, version, type, flags, session, seq, count
HEADER_BYTES = HEADER.size  # 20
U32_MAX = 0xFFFFFFFF

FLAG_NEXT_USE = 1  # COMMANDS: a float32 next-use frame follows the ids

# One access event on the wire: 12 bytes, packed, little-endian (the trace's types).
EVENT_DTYPE = np.dtype(
    [("step", "<i4"), ("micro_step", "<i2"), ("phase", "i1"), ("access", "i1"), ("tensor_id", "<i4")]
)
EVENT_FIELDS: tuple[str, ...] = EVENT_DTYPE.names  # type: ignore[assignment]
KIND_DTYPE, NBYTES_DTYPE, LAYER_DTYPE = np.dtype("i1"), np.dtype("<i8"), np.dtype("<i2")
ID_DTYPE, NEXT_USE_DTYPE = np.dtype("<i4"), np.dtype("<f4")

# Bounds that keep one message from claiming unbounded memory or work. A training job
# sends a few to a few hundred events per batch and has thousands of managed tensors.
MAX_TENSORS = 1 << 16  # rows of one session's table (HELLO, grown by TENSORS); a HELLO this big costs ~0.1 s
MAX_EVENTS_PER_BATCH = 1 << 16  # 768 KiB; the daemon works off big batches in chunks
MAX_COMMAND_IDS = 1 << 22  # ids in one COMMANDS reply (the daemon caps what it sends)
MAX_JSON_BYTES = 1 << 20
MAX_ARCHITECTURE_CHARS = 4096
MAX_LOOKAHEAD = 1 << 16

# Below these many rows, validate in Python: cheaper than numpy reductions (~1 us each).
_SMALL = 64  # command ids: 3 reductions
_SMALL_EVENTS = 48  # events: 8 reductions
_PHASE_MAX = max(Phase)
_ACCESS_MAX = max(Access)
_KIND_MAX = max(Kind)


class MsgType(enum.IntEnum):
    HELLO = 1
    HELLO_OK = 2
    EVENTS = 3
    COMMANDS = 4
    ERROR = 5
    BYE = 6
    PING = 7
    PONG = 8
    TENSORS = 9


class ErrorCode(str, enum.Enum):
    """What went wrong, as sent in ERROR replies (stable strings; clients switch on them)."""

    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    BAD_TYPE = "bad_type"
    BAD_FRAMES = "bad_frames"  # wrong number of frames or a frame of the wrong size
    BAD_PAYLOAD = "bad_payload"  # a payload whose size does not match its dtype and count
    BAD_JSON = "bad_json"
    BAD_RANGE = "bad_range"  # an enum value, id or count out of range
    UNKNOWN_SESSION = "unknown_session"  # EVENTS before HELLO, or after the session expired
    UNEXPECTED = "unexpected"  # a valid message the receiver does not accept (e.g. COMMANDS to the daemon)
    POLICY = "policy_error"  # the policy could not be made, or raised
    BUSY = "busy"  # the session has too many events queued: this batch was dropped, go on
    INTERNAL = "internal"


class WireError(ValueError):
    """A message that does not follow this format; `code` is an ErrorCode."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.detail = message


# -- messages ------------------------------------------------------------------------------


@dataclass(slots=True)
class Hello:
    """Client -> daemon: who I am and what I manage. Starts (or restarts) a session."""

    architecture: str
    policy: str
    tensors: TensorInfo
    lookahead: int = 64
    next_use: bool = True  # ask for per-id predicted next use in COMMANDS

    def encode(self) -> list:
        meta = {
            "architecture": self.architecture,
            "policy": self.policy,
            "lookahead": int(self.lookahead),
            "next_use": bool(self.next_use),
        }
        return [header(MsgType.HELLO, count=self.tensors.num_tensors), _json_bytes(meta), *_table_frames(self.tensors)]


@dataclass(slots=True)
class Tensors:
    """Client -> daemon: rows appended to the session's tensor table (ids first_id..).

    The runtime discovers activations during the first step; events may use the new ids
    only after this message (one socket keeps order, so sending it first is enough)."""

    session: int
    first_id: int
    tensors: TensorInfo

    def encode(self) -> list:
        hdr = header(MsgType.TENSORS, session=self.session, seq=self.first_id, count=self.tensors.num_tensors)
        return [hdr, *_table_frames(self.tensors)]


@dataclass(slots=True)
class HelloOk:
    """Daemon -> client: the session is open; which policy actually serves, and why."""

    session: int
    policy: str  # the spec that serves, e.g. "learned:/models" or "replay"
    requested: str
    fallback_reason: str | None = None  # set when `policy` is not what was requested
    num_tensors: int = 0

    def encode(self) -> list:
        meta = {
            "policy": self.policy,
            "requested": self.requested,
            "fallback_reason": self.fallback_reason,
            "num_tensors": int(self.num_tensors),
        }
        return [header(MsgType.HELLO_OK, session=self.session), _json_bytes(meta)]


@dataclass(slots=True)
class Events:
    """Client -> daemon: a batch of accesses, in order, as one EVENT_DTYPE array."""

    session: int
    seq: int
    events: np.ndarray

    def encode(self) -> list:
        ev = self.events
        if ev.dtype != EVENT_DTYPE:
            raise WireError(ErrorCode.BAD_PAYLOAD, f"events must have dtype EVENT_DTYPE, got {ev.dtype}")
        return [header(MsgType.EVENTS, session=self.session, seq=self.seq, count=len(ev)), np.ascontiguousarray(ev)]


@dataclass(slots=True)
class Commands:
    """Daemon -> client: the prefetch requests caused by one EVENTS batch, soonest first.

    `next_use[i]` is the policy's predicted number of accesses, counted from the end of
    the batch, until `tensor_ids[i]` is read again (inf: no prediction); None when the
    client did not ask for it.
    """

    session: int
    seq: int
    tensor_ids: np.ndarray  # int32 (k,)
    next_use: np.ndarray | None = None  # float32 (k,)

    def encode(self) -> list:
        ids = np.ascontiguousarray(self.tensor_ids, dtype=ID_DTYPE)
        frames = [None, ids]
        flags = 0
        if self.next_use is not None:
            nu = np.ascontiguousarray(self.next_use, dtype=NEXT_USE_DTYPE)
            if len(nu) != len(ids):
                raise WireError(ErrorCode.BAD_PAYLOAD, f"{len(nu)} next-use values for {len(ids)} ids")
            frames.append(nu)
            flags = FLAG_NEXT_USE
        frames[0] = header(MsgType.COMMANDS, flags=flags, session=self.session, seq=self.seq, count=len(ids))
        return frames


@dataclass(slots=True)
class Error:
    """Daemon -> client: the message with `seq` was refused; the daemon goes on serving."""

    code: str
    message: str
    refused: str = ""  # MsgType name of the refused message ("" when its header was unreadable)
    session: int = 0
    seq: int = 0

    def encode(self) -> list:
        code = str(getattr(self.code, "value", self.code))
        body = {"code": code, "message": self.message[:4096], "refused": self.refused}
        return [header(MsgType.ERROR, session=self.session, seq=self.seq), _json_bytes(body)]


@dataclass(slots=True)
class Bye:
    """Either way: this session ends (client closing, daemon shutting down)."""

    session: int = 0
    reason: str = ""
    exiting: bool = False  # daemon -> client: the daemon itself is going away (else: say HELLO again)

    def encode(self) -> list:
        body = {"reason": self.reason[:4096], "exiting": self.exiting}
        return [header(MsgType.BYE, session=self.session), _json_bytes(body)]


@dataclass(slots=True)
class Ping:
    """Client -> daemon: are you there? Answered by PONG, no session needed."""

    seq: int = 0

    def encode(self) -> list:
        return [header(MsgType.PING, seq=self.seq)]


@dataclass(slots=True)
class Pong:
    """Daemon -> client: alive, with a little JSON about itself."""

    seq: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> list:
        return [header(MsgType.PONG, seq=self.seq), _json_bytes(self.info)]


Message = Hello | HelloOk | Tensors | Events | Commands | Error | Bye | Ping | Pong


# -- encoding helpers --------------------------------------------------------------------

LOG_FIELD_MAX = 200  # characters of a string from the wire kept in one log line


def log_field(value: object, limit: int = LOG_FIELD_MAX) -> str:
    """A string from the other side made safe for one log line: control characters
    (newline, ANSI escapes) and non-ASCII escaped (\\n, \\x1b, \\u...), cut to `limit`.
    A client chooses its architecture string and policy spec (a daemon its reasons):
    logged raw, they could forge log lines or repaint a terminal."""
    text = str(value).encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "...[cut]"



def header(kind: MsgType, *, flags: int = 0, session: int = 0, seq: int = 0, count: int = 0) -> bytes:
    return HEADER.pack(MAGIC, WIRE_VERSION, kind, flags, session & U32_MAX, seq & U32_MAX, count)


def pack_events(rows: Sequence[tuple[int, int, int, int, int]]) -> np.ndarray:
    """(step, micro_step, phase, access, tensor_id) tuples -> an EVENT_DTYPE array."""
    try:
        return np.array(rows, dtype=EVENT_DTYPE)
    except (OverflowError, ValueError, TypeError) as exc:
        raise WireError(ErrorCode.BAD_RANGE, f"events do not fit EVENT_DTYPE: {exc}") from None


def _table_frames(t: TensorInfo) -> list:
    n = t.num_tensors
    if len(t.modules) != n or len(t.kinds) != n or len(t.nbytes) != n or len(t.layers) != n:
        raise WireError(ErrorCode.BAD_FRAMES, "TensorInfo arrays differ in length")
    return [
        _join_strings(t.keys, "keys"),
        _join_strings(t.modules, "modules"),
        np.ascontiguousarray(t.kinds, dtype=KIND_DTYPE),
        np.ascontiguousarray(t.nbytes, dtype=NBYTES_DTYPE),
        np.ascontiguousarray(t.layers, dtype=LAYER_DTYPE),
    ]


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _join_strings(items: Sequence[str], what: str) -> bytes:
    if any("\x00" in s for s in items):
        raise WireError(ErrorCode.BAD_PAYLOAD, f"{what} may not contain NUL characters")
    return "\x00".join(items).encode()


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

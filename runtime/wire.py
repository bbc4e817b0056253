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
or eval'd, and `runtime.wire_decode.decode` validates every length, dtype size, enum
and id range it can see, raising `WireError(code, message)` whose code the daemon sends
back in ERROR.

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
from runtime.defaults import LIVE_LOOKAHEAD

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
    lookahead: int = LIVE_LOOKAHEAD
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

"""The daemon wire format: every message round-trips, every malformed one raises WireError.

    python -m pytest tests/runtime/test_wire.py -q
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from predictor.interface import TensorInfo
from runtime import wire, wire_decode
from runtime.wire import EVENT_DTYPE, ErrorCode, MsgType, WireError


def table(n: int, prefix: str = "param:w") -> TensorInfo:
    return TensorInfo(
        keys=tuple(f"{prefix}{i}" for i in range(n)),
        kinds=np.arange(n, dtype=np.int8) % 4,
        nbytes=np.arange(n, dtype=np.int64) * 1024 + 4,
        layers=(np.arange(n, dtype=np.int16) % 3) - 1,
        modules=tuple(f"blocks.{i % 3}.mlp" for i in range(n)),
    )


def on_wire(msg) -> list[bytes]:
    """What a receiver gets: every frame as bytes."""
    return [bytes(memoryview(f)) for f in msg.encode()]


def events(rows) -> np.ndarray:
    return wire.pack_events(rows)


def assert_code(exc_info, code: ErrorCode) -> None:
    assert exc_info.value.code is code, str(exc_info.value)


def test_header_is_20_bytes_little_endian():
    """The header is the documented 20-byte little-endian struct, magic first."""
    frame = wire.header(MsgType.EVENTS, flags=1, session=7, seq=9, count=3)
    assert len(frame) == wire.HEADER_BYTES == 20
    assert struct.unpack("<4sBBHIII", frame) == (b"PFWR", wire.WIRE_VERSION, 3, 1, 7, 9, 3)


def test_event_dtype_is_packed_12_bytes():
    """An event is 12 packed bytes: step i4, micro_step i2, phase i1, access i1, tensor_id i4."""
    assert EVENT_DTYPE.itemsize == 12
    assert EVENT_DTYPE.names == ("step", "micro_step", "phase", "access", "tensor_id")


def test_hello_round_trip():
    """HELLO carries architecture, policy, lookahead, next_use and the whole tensor table."""
    t = table(5)
    got = wire_decode.decode(on_wire(wire.Hello(architecture="GPT2-abc", policy="learned", tensors=t, lookahead=32)))
    assert isinstance(got, wire.Hello)
    assert (got.architecture, got.policy, got.lookahead, got.next_use) == ("GPT2-abc", "learned", 32, True)
    assert got.tensors.keys == t.keys and got.tensors.modules == t.modules
    np.testing.assert_array_equal(got.tensors.kinds, t.kinds)
    np.testing.assert_array_equal(got.tensors.nbytes, t.nbytes)
    np.testing.assert_array_equal(got.tensors.layers, t.layers)


def test_hello_round_trip_empty_and_odd_keys():
    """An empty table, and keys with unicode, spaces and newlines, survive the trip."""
    assert wire_decode.decode(on_wire(wire.Hello(architecture="A", policy="none", tensors=table(0)))).tensors.num_tensors == 0
    keys = ("act:blocks.0#0.1", "param:é ω", "line\nbreak")
    t = TensorInfo(keys=keys, kinds=np.zeros(3, np.int8), nbytes=np.ones(3, np.int64),
                   layers=np.full(3, -1, np.int16), modules=("", "a", "b"))
    assert wire_decode.decode(on_wire(wire.Hello(architecture="A", policy="none", tensors=t))).tensors.keys == keys


def test_hello_ok_round_trip():
    """HELLO_OK says which policy serves, what was asked, and why it differs."""
    msg = wire.HelloOk(session=42, policy="replay", requested="learned", fallback_reason="no predictor", num_tensors=9)
    assert wire_decode.decode(on_wire(msg)) == msg
    plain = wire.HelloOk(session=1, policy="markov", requested="markov")
    assert wire_decode.decode(on_wire(plain)) == plain


def test_tensors_round_trip():
    """TENSORS appends rows starting at first_id."""
    got = wire_decode.decode(on_wire(wire.Tensors(session=3, first_id=10, tensors=table(2, "act:x"))))
    assert isinstance(got, wire.Tensors)
    assert (got.session, got.first_id, got.tensors.keys) == (3, 10, ("act:x0", "act:x1"))


def test_events_round_trip():
    """EVENTS is one packed array; values and order come back exactly."""
    rows = [(0, 0, 0, 0, 1), (3, 2, 1, 1, 4), (7, 0, 4, 0, 0)]
    got = wire_decode.decode(on_wire(wire.Events(session=5, seq=11, events=events(rows))), num_tensors=5)
    assert isinstance(got, wire.Events)
    assert (got.session, got.seq) == (5, 11)
    assert got.events.dtype == EVENT_DTYPE
    assert got.events.tolist() == rows


def test_events_round_trip_large_batch():
    """A large batch (the vectorised validation path) round-trips too."""
    rng = np.random.default_rng(0)
    ev = np.zeros(5000, dtype=EVENT_DTYPE)
    ev["step"] = np.arange(5000) // 1000
    ev["phase"] = rng.integers(0, 5, 5000)
    ev["access"] = rng.integers(0, 2, 5000)
    ev["tensor_id"] = rng.integers(0, 100, 5000)
    got = wire_decode.decode(on_wire(wire.Events(session=1, seq=1, events=ev)), num_tensors=100)
    np.testing.assert_array_equal(got.events, ev)


def test_events_seq_wraps_at_32_bits():
    """seq travels modulo 2**32."""
    got = wire_decode.decode(on_wire(wire.Events(session=1, seq=(1 << 32) + 5, events=events([(0, 0, 0, 0, 0)]))))
    assert got.seq == 5


def test_commands_round_trip_with_and_without_next_use():
    """COMMANDS carries ids in order, plus float32 next use only when flagged."""
    ids = np.array([4, 1, 3], dtype=np.int32)
    nu = np.array([1.0, 5.0, np.inf], dtype=np.float32)
    got = wire_decode.decode(on_wire(wire.Commands(session=2, seq=8, tensor_ids=ids, next_use=nu)), num_tensors=5)
    assert (got.session, got.seq) == (2, 8)
    np.testing.assert_array_equal(got.tensor_ids, ids)
    np.testing.assert_array_equal(got.next_use, nu)
    bare = wire_decode.decode(on_wire(wire.Commands(session=2, seq=9, tensor_ids=ids)))
    assert bare.next_use is None and bare.tensor_ids.tolist() == [4, 1, 3]
    empty = wire_decode.decode(on_wire(wire.Commands(session=2, seq=10, tensor_ids=np.zeros(0, np.int32))))
    assert len(empty.tensor_ids) == 0


def test_error_bye_ping_pong_round_trip():
    """ERROR, BYE, PING and PONG round-trip."""
    err = wire.Error(code="bad_range", message="event 3: tensor_id=99", refused="EVENTS", session=4, seq=6)
    assert wire_decode.decode(on_wire(err)) == err
    for bye in (wire.Bye(session=4, reason="idle timeout"), wire.Bye(session=4, reason="stopping", exiting=True)):
        assert wire_decode.decode(on_wire(bye)) == bye
    assert wire_decode.decode(on_wire(wire.Ping(seq=3))) == wire.Ping(seq=3)
    pong = wire.Pong(seq=3, info={"pid": 1, "sessions": 0})
    assert wire_decode.decode(on_wire(pong)) == pong


def test_bad_magic_raises():
    """A header with another magic is refused as bad_magic."""
    frames = on_wire(wire.Ping())
    frames[0] = b"XXXX" + frames[0][4:]
    with pytest.raises(WireError) as e:
        wire_decode.decode(frames)
    assert_code(e, ErrorCode.BAD_MAGIC)
    with pytest.raises(WireError) as e:
        wire_decode.decode([b"GET / HTTP/1.1\r\n"])
    assert_code(e, ErrorCode.BAD_MAGIC)


def test_bad_version_raises():
    """Another wire version is refused, naming both versions."""
    frames = on_wire(wire.Ping())
    frames[0] = frames[0][:4] + bytes([wire.WIRE_VERSION + 1]) + frames[0][5:]
    with pytest.raises(WireError, match="version 2") as e:
        wire_decode.decode(frames)
    assert_code(e, ErrorCode.BAD_VERSION)


def test_unknown_type_and_short_header_raise():
    """An unknown message type and a short header are refused."""
    with pytest.raises(WireError) as e:
        wire_decode.decode([struct.pack("<4sBBHIII", b"PFWR", 1, 99, 0, 0, 0, 0)])
    assert_code(e, ErrorCode.BAD_TYPE)
    with pytest.raises(WireError) as e:
        wire_decode.decode([b"PFWR\x01"])
    assert_code(e, ErrorCode.BAD_FRAMES)
    with pytest.raises(WireError) as e:
        wire_decode.decode([])
    assert_code(e, ErrorCode.BAD_FRAMES)


def test_truncated_events_payload_raises():
    """An events payload shorter than count x 12 bytes is refused."""
    frames = on_wire(wire.Events(session=1, seq=1, events=events([(0, 0, 0, 0, 1)] * 4)))
    frames[1] = frames[1][:-5]
    with pytest.raises(WireError, match="43 bytes for 4 rows") as e:
        wire_decode.decode(frames)
    assert_code(e, ErrorCode.BAD_PAYLOAD)


def test_wrong_dtype_events_raises():
    """Events packed with another dtype (int64 fields) are refused, hinting at the dtype."""
    wide = np.array([[0, 0, 0, 0, 1], [0, 0, 0, 0, 2]], dtype=np.int64)
    frames = [wire.header(MsgType.EVENTS, session=1, seq=1, count=2), wide.tobytes()]
    with pytest.raises(WireError, match="wrong dtype") as e:
        wire_decode.decode(frames)
    assert_code(e, ErrorCode.BAD_PAYLOAD)
    with pytest.raises(WireError):
        wire.Events(session=1, seq=1, events=wide).encode()


def test_wrong_dtype_hello_arrays_raise():
    """HELLO arrays of the wrong width (float64 kinds) are refused."""
    frames = on_wire(wire.Hello(architecture="A", policy="none", tensors=table(3)))
    frames[4] = np.zeros(3, np.float64).tobytes()
    with pytest.raises(WireError, match="kinds") as e:
        wire_decode.decode(frames)
    assert_code(e, ErrorCode.BAD_PAYLOAD)


@pytest.mark.parametrize("n", [3, 100])  # the per-row and the vectorised checks
@pytest.mark.parametrize(
    "field,value,match",
    [("tensor_id", 5, "tensor_id=5"), ("tensor_id", -1, "tensor_id=-1"), ("phase", 9, "phase=9"),
     ("access", 2, "access=2"), ("step", -3, "step=-3"), ("micro_step", -1, "micro_step=-1")],
)
def test_out_of_range_events_raise(n, field, value, match):
    """Ids beyond the table and enum values beyond Phase/Access are refused, naming the event."""
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    ev[field][n - 1] = value
    frames = on_wire(wire.Events(session=1, seq=1, events=ev))
    with pytest.raises(WireError, match=match) as e:
        wire_decode.decode(frames, num_tensors=5)
    assert_code(e, ErrorCode.BAD_RANGE)


def test_out_of_range_commands_and_nan_next_use_raise():
    """Command ids beyond the client's table, and NaN next use, are refused."""
    frames = on_wire(wire.Commands(session=1, seq=1, tensor_ids=np.array([0, 7], np.int32)))
    with pytest.raises(WireError, match=r"\[0, 7\]"):
        wire_decode.decode(frames, num_tensors=5)
    nan = on_wire(wire.Commands(session=1, seq=1, tensor_ids=np.array([0], np.int32),
                                next_use=np.array([np.nan], np.float32)))
    with pytest.raises(WireError, match="NaN"):
        wire_decode.decode(nan)


def test_hello_table_checks():
    """HELLO refuses key-count mismatches, kinds outside Kind, negative nbytes, bad layers."""
    base = on_wire(wire.Hello(architecture="A", policy="none", tensors=table(3)))
    cases = {
        2: (b"a\x00b", ErrorCode.BAD_PAYLOAD),  # 2 keys for 3 tensors
        4: (np.array([0, 1, 7], np.int8).tobytes(), ErrorCode.BAD_RANGE),
        5: (np.array([1, -1, 1], np.int64).tobytes(), ErrorCode.BAD_RANGE),
        6: (np.array([0, -2, 1], np.int16).tobytes(), ErrorCode.BAD_RANGE),
    }
    for i, (payload, code) in cases.items():
        frames = list(base)
        frames[i] = payload
        with pytest.raises(WireError) as e:
            wire_decode.decode(frames)
        assert_code(e, code)


def test_hello_meta_is_strict_json_never_pickle():
    """HELLO meta must be exactly the known JSON keys; a pickle is just invalid JSON."""
    base = on_wire(wire.Hello(architecture="A", policy="none", tensors=table(1)))
    for meta in (
        pickle.dumps({"architecture": "A"}),
        b'{"architecture": "A", "policy": "none", "lookahead": 1, "next_use": true, "extra": 1}',
        b'{"architecture": "A", "policy": "none", "lookahead": true, "next_use": true}',
        b'{"architecture": "", "policy": "none", "lookahead": 1, "next_use": true}',
        b'{"architecture": "A", "policy": "none", "lookahead": NaN, "next_use": true}',
        b"[1, 2]",
    ):
        frames = list(base)
        frames[1] = meta
        with pytest.raises(WireError):
            wire_decode.decode(frames)


def test_wrong_frame_count_raises():
    """A message with missing or extra frames is refused as bad_frames."""
    frames = on_wire(wire.Events(session=1, seq=1, events=events([(0, 0, 0, 0, 0)])))
    for bad in (frames[:1], frames + [b""]):
        with pytest.raises(WireError) as e:
            wire_decode.decode(bad)
        assert_code(e, ErrorCode.BAD_FRAMES)


def test_count_limit_refused_before_allocation():
    """A header claiming more rows than the limit is refused whatever the payload."""
    frames = [wire.header(MsgType.EVENTS, session=1, seq=1, count=wire.MAX_EVENTS_PER_BATCH + 1), b""]
    with pytest.raises(WireError) as e:
        wire_decode.decode(frames)
    assert_code(e, ErrorCode.BAD_RANGE)


def test_pack_events_refuses_overflow():
    """pack_events refuses values that do not fit the wire types."""
    with pytest.raises(WireError):
        wire.pack_events([(0, 0, 300, 0, 0)])

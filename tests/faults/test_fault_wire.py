"""Fuzzing the wire decoder: any frames decode to a message or a WireError, nothing else.

A few hundred Hypothesis examples per property keep this to seconds in CI;
benchmarks/fault_suite.py sends 10k+ of the same messages to a live daemon.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import wire, wire_decode
from runtime.trace_format import Access, Phase
from wire_strategies import any_messages, damaged_messages, noise_messages, valid_messages

FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _decode_or_wire_error(frames: list[bytes], num_tensors: int | None) -> object | None:
    """The decoded message, or None after a WireError; any other exception fails the test."""
    try:
        msg = wire_decode.decode(frames, num_tensors=num_tensors)
    except wire.WireError as exc:
        assert isinstance(exc.code, wire.ErrorCode)
        assert "\n" not in str(exc)  # one line: it goes into an ERROR reply and a log
        return None
    assert isinstance(msg, (wire.Hello, wire.HelloOk, wire.Tensors, wire.Events, wire.Commands,
                            wire.Error, wire.Bye, wire.Ping, wire.Pong))
    return msg


@FUZZ
@given(valid_messages())
def test_valid_messages_round_trip(frames):
    """Every well-formed message decodes, and encodes back to the same bytes."""
    msg = wire_decode.decode(frames)
    assert [bytes(f) for f in msg.encode()] == frames


@FUZZ
@given(damaged_messages(), st.none() | st.integers(0, 40))
def test_damaged_messages_decode_or_raise_wire_error(frames, num_tensors):
    """Flipped, cut, dropped or duplicated frames: a message or a WireError, never another exception."""
    _decode_or_wire_error(frames, num_tensors)


@FUZZ
@given(noise_messages(), st.none() | st.integers(0, 40))
def test_noise_decodes_or_raises_wire_error(frames, num_tensors):
    """Random frames behind a plausible header: a message or a WireError."""
    _decode_or_wire_error(frames, num_tensors)


@FUZZ
@given(any_messages(), st.integers(0, 40))
def test_decoded_events_and_commands_are_in_range(frames, num_tensors):
    """What decodes with a table size has every id, phase and access in range (the daemon relies on it)."""
    msg = _decode_or_wire_error(frames, num_tensors)
    if isinstance(msg, wire.Events) and len(msg.events):
        ev = msg.events
        assert ev["tensor_id"].min() >= 0 and ev["tensor_id"].max() < num_tensors
        assert ev["phase"].min() >= 0 and ev["access"].min() >= 0
        assert ev["phase"].max() <= max(Phase) and ev["access"].max() <= max(Access)
        assert ev["step"].min() >= 0 and ev["micro_step"].min() >= 0
    if isinstance(msg, wire.Commands) and len(msg.tensor_ids):
        assert msg.tensor_ids.min() >= 0 and msg.tensor_ids.max() < num_tensors
        if msg.next_use is not None:
            assert not np.isnan(msg.next_use).any() and (msg.next_use >= 0).all()
    if isinstance(msg, (wire.Hello, wire.Tensors)) and msg.tensors.num_tensors:
        t = msg.tensors
        assert len(t.keys) == len(t.modules) == len(t.kinds) == len(t.nbytes) == len(t.layers)
        assert t.kinds.min() >= 0 and t.nbytes.min() >= 0 and t.layers.min() >= -1


@FUZZ
@given(st.binary(max_size=40))
def test_any_header_frame_decodes_or_raises_wire_error(frame):
    """decode_header on any bytes: a validated tuple or a WireError."""
    try:
        kind, *_ = wire_decode.decode_header(frame)
    except wire.WireError:
        return
    assert isinstance(kind, wire.MsgType)


@st.composite
def events_with_one_edit(draw):
    """(events, num_tensors): valid rows for the table, then one field of one row set to a value near its range."""
    n = draw(st.integers(1, 40))
    row = st.tuples(st.integers(0, 50), st.integers(0, 5), st.integers(0, int(max(Phase))),
                    st.integers(0, int(max(Access))), st.integers(0, n - 1))
    events = np.array(draw(st.lists(row, min_size=1, max_size=6)), dtype=wire.EVENT_DTYPE)
    i = draw(st.integers(0, len(events) - 1))
    name = draw(st.sampled_from(wire.EVENT_FIELDS))
    events[name][i] = draw(st.integers(-3, n + 3) if name == "tensor_id" else st.integers(-3, 8))
    return events, n


@FUZZ
@given(events_with_one_edit())
def test_events_decode_only_when_every_field_is_in_range(case):
    """An EVENTS batch decodes against a table of n tensors iff every id, phase, access, step is in range."""
    events, num_tensors = case
    frames = [bytes(f) for f in wire.Events(session=1, seq=0, events=events).encode()]
    in_range = bool(
        (events["tensor_id"] >= 0).all() and (events["tensor_id"] < num_tensors).all()
        and (events["phase"] >= 0).all() and (events["phase"] <= max(Phase)).all()
        and (events["access"] >= 0).all() and (events["access"] <= max(Access)).all()
        and (events["step"] >= 0).all() and (events["micro_step"] >= 0).all())
    try:
        wire_decode.decode(frames, num_tensors=num_tensors)
        decoded = True
    except wire.WireError as exc:
        assert exc.code is wire.ErrorCode.BAD_RANGE
        decoded = False
    assert decoded == in_range

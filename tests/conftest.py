"""Shared fixtures: one torch thread (two cores: more threads thrash), fixed seeds."""

from __future__ import annotations

import pytest
import torch
import zmq


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def ctx():
    """A ZeroMQ context whose sockets are dropped with linger=0 at the end (no test can hang on them)."""
    c = zmq.Context()
    yield c
    c.destroy(linger=0)

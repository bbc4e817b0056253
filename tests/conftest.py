"""Shared fixtures: one torch thread (two cores: more threads thrash), fixed seeds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)
    yield

"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quorum.simulator import ProviderSimulator


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    """A provider simulator on a loopback port, stopped after the test."""
    with ProviderSimulator() as s:
        yield s

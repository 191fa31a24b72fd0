"""Fixtures shared by the integration tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP listener that accepts and never answers: an upgrade that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()

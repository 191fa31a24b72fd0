"""Fixtures for every test: a thread-leak check, a fake clock and a real test server."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import Phase, settings

from tests.helpers import FakeClock

if TYPE_CHECKING:
    from wsync.testing import ProtocolServer

if sys.version_info < (3, 12):
    # Once a test fails, Hypothesis shrinks it under sys.settrace to explain the failure; before
    # 3.12 that tracing is slow enough to push a stateful test past pytest-timeout, so a real
    # counterexample showed up as a timeout and a FlakyStrategyDefinition (seen on 3.10).
    # Without the explain phase it reports the shrunk example, just without the explanation.
    settings.register_profile("no-explain", phases=[p for p in Phase if p is not Phase.explain])
    settings.load_profile("no-explain")

THREAD_PREFIX = "wsync-"
THREAD_GRACE = 2.0
"""Seconds, in all, that the threads a test leaves behind get to finish."""


def _wsync_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a ``wsync-`` thread running.

    Threads that were already alive when the test started (a session-scoped server, or a
    leak already blamed on an earlier test) are not counted again.
    """
    before = _wsync_threads()
    yield
    deadline = time.monotonic() + THREAD_GRACE
    leaked = _wsync_threads() - before
    for thread in sorted(leaked, key=lambda t: t.name):
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sorted(t.name for t in leaked if t.is_alive())
    if alive:
        pytest.fail(
            f"{len(alive)} wsync thread(s) still alive {THREAD_GRACE} s after the test: "
            + ", ".join(alive),
            pytrace=False,
        )


@pytest.fixture
def clock() -> FakeClock:
    """A `FakeClock` starting at 1000.0 s."""
    return FakeClock()


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    """A started `wsync.testing.ProtocolServer` on 127.0.0.1 with a free port; stopped after."""
    # Imported here so that unit tests run without the [server] extra (websockets).
    from wsync.testing import ProtocolServer

    srv = ProtocolServer(host="127.0.0.1", port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()

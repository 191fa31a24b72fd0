"""Proposed tests for Client.add_listener (for tests/integration/test_client.py)."""

from __future__ import annotations

import threading

import pytest

import wsync
from tests.helpers import TIMEOUT
from wsync.testing import ProtocolServer


class TestAddListener:
    def test_listeners_run_after_the_clients_own_callbacks(self, server: ProtocolServer) -> None:
        """State and response listeners are called, in order, after the constructor's callbacks."""
        calls: list[str] = []
        client = wsync.Client(
            server.url,
            on_state_change=lambda s: calls.append(f"own {s.status.value}"),
            on_response=lambda r: calls.append(f"own {r.content}"),
        )
        try:
            client.add_listener(
                on_state_change=lambda s: calls.append(f"extra {s.status.value}"),
                on_response=lambda r: calls.append(f"extra {r.content}"),
            )
            client.connect(timeout=TIMEOUT)
            client.send_and_wait("hi", timeout=TIMEOUT)
            assert client.flush(timeout=TIMEOUT)
        finally:
            client.close()
        assert calls == [
            "own connecting", "extra connecting", "own pending", "extra pending",
            "own confirmed", "extra confirmed", "own hi", "extra hi",
            "own closed", "extra closed",
        ]

    def test_works_without_constructor_callbacks(self, server: ProtocolServer) -> None:
        """A client made with no callbacks still calls a listener added later."""
        seen: list[wsync.Status] = []
        client = wsync.Client(server.url)
        try:
            client.connect(timeout=TIMEOUT)
            client.add_listener(on_state_change=lambda s: seen.append(s.status))
            client.reconnect()
            client.connect(timeout=TIMEOUT)
            assert client.flush(timeout=TIMEOUT)
            assert seen[-1] is wsync.Status.CONFIRMED
        finally:
            client.close()

    def test_remove_stops_the_calls(self, server: ProtocolServer) -> None:
        """The returned function removes the listener; calling it twice is harmless."""
        seen: list[str] = []
        client = wsync.Client(server.url)
        try:
            remove = client.add_listener(on_response=lambda r: seen.append(r.content))
            client.connect(timeout=TIMEOUT)
            client.send_and_wait("one", timeout=TIMEOUT)
            assert client.flush(timeout=TIMEOUT)
            remove()
            remove()
            client.send_and_wait("two", timeout=TIMEOUT)
            assert client.flush(timeout=TIMEOUT)
        finally:
            client.close()
        assert seen == ["one"]

    def test_a_raising_listener_does_not_stop_the_others(self, server: ProtocolServer) -> None:
        """An exception in one listener is logged; the next one still runs."""
        done = threading.Event()

        def bad(state: wsync.ConnectionState) -> None:
            raise RuntimeError("listener bug")

        client = wsync.Client(server.url)
        try:
            client.add_listener(on_state_change=bad)
            client.add_listener(
                on_state_change=lambda s: s.status is wsync.Status.CONFIRMED and done.set()
            )
            client.connect(timeout=TIMEOUT)
            assert done.wait(TIMEOUT)
        finally:
            client.close()

    def test_rejects_non_callables(self, server: ProtocolServer) -> None:
        """A listener that is not callable is a TypeError."""
        client = wsync.Client(server.url)
        try:
            with pytest.raises(TypeError):
                client.add_listener(on_state_change=42)  # type: ignore[arg-type]
        finally:
            client.close()

"""Callback recorders that tests wait on (with a deadline), instead of sleeping."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.helpers import TIMEOUT
from wsync import ConnectionState, Response, ServerError, Status


class Recorder:
    """Records states, responses and server errors from a client's callbacks."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self.states: list[ConnectionState] = []
        self.responses: list[Response] = []
        self.errors: list[ServerError] = []
        self.threads: set[str] = set()

    def on_state_change(self, state: ConnectionState) -> None:
        with self._cv:
            self.states.append(state)
            self.threads.add(threading.current_thread().name)
            self._cv.notify_all()

    def on_response(self, response: Response) -> None:
        with self._cv:
            self.responses.append(response)
            self.threads.add(threading.current_thread().name)
            self._cv.notify_all()

    def on_error(self, error: ServerError) -> None:
        with self._cv:
            self.errors.append(error)
            self.threads.add(threading.current_thread().name)
            self._cv.notify_all()

    def callbacks(self) -> dict[str, Callable[..., object]]:
        return {
            "on_state_change": self.on_state_change,
            "on_response": self.on_response,
            "on_error": self.on_error,
        }

    def wait(self, predicate: Callable[[Recorder], bool], timeout: float = TIMEOUT) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: predicate(self), timeout)

    def wait_status(self, status: Status, count: int = 1, timeout: float = TIMEOUT) -> bool:
        """Wait until ``status`` was reported at least ``count`` times."""
        return self.wait(lambda r: r.count(status) >= count, timeout)

    def count(self, status: Status) -> int:
        return sum(1 for s in self.states if s.status is status)

    def statuses(self) -> list[Status]:
        with self._cv:
            return [s.status for s in self.states]

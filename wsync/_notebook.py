"""A live status widget for Jupyter: a client's state and counters, updated as they change.

Optional: needs ``ipywidgets`` (the ``wsync-client[notebook]`` extra), imported only when a
widget is made; without it, ``status_widget`` raises an ``ImportError`` naming the extra, and
``display(client)`` (``Client._repr_html_()``) shows the same view, drawn once. The widget is
an ``ipywidgets.HTML`` showing ``Client._repr_html_()``. It polls nothing: the client calls it
on its ``wsync-callbacks`` thread at every state change and on responses (at most ten redraws
a second while messages flow, and always once nothing is left pending, so the counters it
ends on are the final ones).

It holds the client weakly: a widget left in a cell's output does not keep a forgotten
client, or its threads, alive.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from wsync._client import Client
    from wsync._values import ConnectionState
    from wsync.protocol import Response

__all__ = ["status_widget"]

_REDRAW_INTERVAL: Final = 0.1  # seconds between redraws caused by responses alone


class _StatusView:
    """Redraws one ``ipywidgets.HTML`` from a weakly held client; runs on wsync-callbacks."""

    def __init__(self, client: Client, view: Any) -> None:
        self._client = weakref.ref(client)
        self.view = view
        self._last = 0.0
        self._lock = threading.Lock()  # guards _last; redraws may also come from the caller

    def redraw(self) -> None:
        client = self._client()
        if client is None:
            return
        with self._lock:
            self._last = time.monotonic()
        self.view.value = client._repr_html_()

    def on_state_change(self, state: ConnectionState) -> None:
        self.redraw()

    def on_response(self, response: Response) -> None:
        client = self._client()
        if client is None:
            return
        stats = client.stats()
        with self._lock:
            due = time.monotonic() - self._last >= _REDRAW_INTERVAL
        if due or (stats.queued == 0 and stats.in_flight == 0):
            self.redraw()


def status_widget(client: Client) -> Any:
    """Return an ``ipywidgets.HTML`` that shows ``client``'s state and counters, live.

    Display it (make it a cell's last expression, or ``display(widget)``); it redraws
    itself from the client's callbacks thread on every state change and as responses
    arrive, and shows CLOSED at the end. The client's own callbacks still run, first.
    Thread-safe; holds the client weakly.

    Args:
        client: the client to watch.

    Returns:
        The widget (an ``ipywidgets.HTML``; put it in a ``VBox`` like any other).

    Raises:
        ImportError: ipywidgets is not installed (``pip install 'wsync-client[notebook]'``).
    """
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(
            "the status widget needs ipywidgets: pip install 'wsync-client[notebook]'"
        ) from exc
    view = _StatusView(client, ipywidgets.HTML(value=client._repr_html_()))
    client.add_listener(on_state_change=view.on_state_change, on_response=view.on_response)
    view.redraw()  # a transition between the first draw and add_listener() is not missed
    return view.view

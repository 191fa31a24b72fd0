"""Callbacks: watch the connection change state and responses arrive, as they happen.

    python examples/callbacks.py [URL]

Callbacks run one at a time, in order, on the client's own ``wsync-callbacks`` thread,
never while the client holds a lock: calling the client from one (even
``send_and_wait``) is fine. An exception in a callback is logged and changes nothing.
Without URL it starts wsync's test server (needs ``pip install 'wsync[server]'``).
"""

from __future__ import annotations

import sys
import threading

import wsync


def main(url: str) -> None:
    answered = threading.Event()
    responses: list[wsync.Response] = []

    def on_state_change(state: wsync.ConnectionState) -> None:
        line = f"state: {state.status.value}"
        if state.attempt:
            line += f" (attempt {state.attempt})"
        if state.error:
            line += f" - {state.error}"
        print(line)

    def on_response(response: wsync.Response) -> None:
        print(f"response: {response.content!r} (message {response.message_id[:8]})")
        responses.append(response)
        if len(responses) == 6:
            answered.set()

    def on_error(error: wsync.ServerError) -> None:
        print(f"server error: {error}")

    client = wsync.Client(
        url,
        on_state_change=on_state_change,
        on_response=on_response,
        on_error=on_error,
        backoff=wsync.Backoff(initial=0.1),  # reconnect quickly: 0.1, 0.2, 0.4 ... s
    )
    try:
        client.connect(timeout=10)  # connecting, pending, confirmed
        for n in range(3):
            client.send(f"before {n}")
        # Drop the connection: a new one is made at once, and any message still
        # unanswered is written again, with the same messageId, after the confirm.
        client.reconnect()
        for n in range(3):
            client.send(f"after {n}")  # queued until confirmed again
        if not answered.wait(timeout=10):
            raise SystemExit("not every response arrived")
        print(f"{len(responses)} responses; stats: {client.stats()}")
    finally:
        client.close()  # closed: the last state change


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from wsync.testing import ProtocolServer

        with ProtocolServer() as server:
            main(server.url)

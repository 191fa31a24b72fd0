"""Durable outbox: messages sent while offline survive the process, and are delivered later.

    python examples/durable_outbox.py [URL]

With ``wsync.SQLiteOutbox(path)`` every message is on disk before ``send()`` returns,
and stays there until its response arrives. A later client with the same ``client_id``
and path sends what is left, first, after its first confirm; the responses come
through ``on_response`` (the futures belonged to the process that is gone).
Without URL it starts wsync's test server (needs ``pip install 'wsync[server]'``),
and keeps it down during the first part.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading

import wsync

CLIENT_ID = "durable-example"  # a durable outbox needs a fixed client id


def first_run(url: str, path: str) -> None:
    """Send three messages with no server to answer them, then close (or crash: kill -9 too)."""
    client = wsync.Client(url, client_id=CLIENT_ID, outbox=wsync.SQLiteOutbox(path))
    try:
        # No connect(): this process is offline. send() still works and returns at once.
        for n in range(3):
            future = client.send(f"order {n}")
            print("saved to disk before send() returned:", future.message_id)
    finally:
        client.close()  # pending futures fail with ClientClosed; the messages stay on disk
    print("first run closed with 3 messages unanswered")


def second_run(url: str, path: str) -> None:
    """A new client (a new process, after a restart) delivers what the first one left."""
    delivered: list[str] = []
    all_three = threading.Event()

    def on_response(response: wsync.Response) -> None:
        delivered.append(response.content)
        print("delivered:", response.content)
        if len(delivered) == 3:
            all_three.set()

    outbox = wsync.SQLiteOutbox(path)
    with wsync.Client(url, client_id=CLIENT_ID, outbox=outbox, on_response=on_response):
        if not all_three.wait(timeout=10):
            raise SystemExit(f"only {len(delivered)} of 3 messages delivered")
    assert delivered == ["order 0", "order 1", "order 2"], delivered  # in send order
    print("second run delivered all 3, in order")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        outbox_path = os.path.join(directory, "outbox.sqlite3")
        if len(sys.argv) > 1:
            first_run(sys.argv[1], outbox_path)
            second_run(sys.argv[1], outbox_path)
        else:
            from wsync.testing import ProtocolServer

            server = ProtocolServer().start()
            server.stop()  # down: its port refuses connections
            try:
                first_run(server.url, outbox_path)
                server.start()  # back up, on the same port
                second_run(server.url, outbox_path)
            finally:
                server.stop()

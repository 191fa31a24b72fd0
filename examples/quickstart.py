"""Quickstart: connect, send messages, get their responses, close.

    python examples/quickstart.py [URL]

Without URL it starts wsync's test server (needs ``pip install 'wsync[server]'``).
"""

from __future__ import annotations

import sys

import wsync


def main(url: str) -> None:
    # `with` connects (retrying under the backoff policy) and always closes: every thread
    # the client started is stopped when the block ends.
    with wsync.Client(url) as client:
        print("connected:", client.state.status.value, "to", client.url)

        # One message, one response: blocks until it arrives (or raises ResponseTimeout).
        response = client.send_and_wait("hello", timeout=10)
        print(f"response to {response.message_id}: {response.content!r}")

        # Many at once: send() never blocks; each future resolves with its own response.
        futures = [client.send(f"message {n}") for n in range(3)]
        for future in futures:
            print("response:", future.result(timeout=10).content)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from wsync.testing import ProtocolServer

        with ProtocolServer() as server:  # an echo server on 127.0.0.1, a free port
            main(server.url)

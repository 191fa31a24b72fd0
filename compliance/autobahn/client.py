"""Autobahn|Testsuite echo client on wsync's own connection layer (Connector + Transport).

Run by run.sh against ``wstest -m fuzzingserver``: asks the server how many cases it has, runs
each one (echoing every message back, text as text and binary as binary, until the connection
ends), then asks the server to write its reports. This drives ``wsync._handshake.Connector`` and
``wsync._connection.Transport`` directly, not ``wsync.Client``: the cases test RFC 6455, not the
wsync protocol.

Usage: python client.py [ws://127.0.0.1:9001]
"""

from __future__ import annotations

import sys
import time

from wsync._connection import MalformedFrame, Transport, TransportClosed
from wsync._errors import ConnectError
from wsync._handshake import Connector

AGENT = "wsync"
#: Autobahn's largest messages are 16 MiB (cases 9.*); wsync's own default is 1 MiB.
MAX_FRAME_SIZE = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0


def open_path(base: str, path: str) -> Transport:
    return Connector(base + path, max_frame_size=MAX_FRAME_SIZE).open(CONNECT_TIMEOUT)


def wait_for_server(base: str, limit: float) -> int:
    """The number of cases, once the fuzzing server answers (it may still be starting)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            transport = open_path(base, "/getCaseCount")
        except ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # polling a server process that is starting up
            continue
        try:
            return int(transport.recv())
        finally:
            transport.abort()


def run_case(base: str, case: int) -> None:
    try:
        transport = open_path(base, f"/runCase?case={case}&agent={AGENT}")
    except ConnectError as exc:
        print(f"case {case}: could not connect: {exc}", flush=True)
        return
    try:
        while True:
            try:
                message = transport.recv()
            except MalformedFrame:
                continue
            if isinstance(message, str):
                transport.send_text(message)
            else:
                transport.send_binary(message)
    except TransportClosed:
        pass
    finally:
        transport.abort()


def main(argv: list[str]) -> int:
    base = argv[1] if len(argv) > 1 else "ws://127.0.0.1:9001"
    count = wait_for_server(base, 60.0)
    print(f"{count} cases", flush=True)
    started = time.monotonic()
    for case in range(1, count + 1):
        run_case(base, case)
        if case % 50 == 0:
            print(f"{case}/{count} cases in {time.monotonic() - started:.0f} s", flush=True)
    transport = open_path(base, f"/updateReports?agent={AGENT}")
    try:
        transport.recv()
    except TransportClosed:
        pass
    finally:
        transport.abort()
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""``wsync send``: connect, send each message, print each response on its own line, close.

Line N of stdout is always about message N: each response is one line (its content made
:func:`printable`, so a newline in it shows as ``\\n``), and a message that failed (the
server answered it with an error frame, or it was given up as a poison message) leaves an
empty line there, with ``message N of M failed: ...`` on stderr and exit code 1. With
``--json`` each line is a JSON object: ``{messageId, content, timestamp}``, or
``{messageId, error}`` for a failed message. Failures of the connection itself (refused,
TLS, timed out) end the command with their own exit code and one line on stderr.

Wiring only, on the public ``wsync.Client``; imports no other command. ``--timeout`` bounds
the whole command.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time
from typing import Final

from wsync import Backoff, DeliveryError, MessageFuture, Response, ServerError, WsyncError
from wsync._cli._console import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    CommandFailed,
    Console,
    classify,
    make_client,
    printable,
    printable_json,
)
from wsync.protocol import format_timestamp

__all__ = ["FAILED_LINE", "run"]

FAILED_LINE: Final = ""  # what stdout shows, in text mode, for a message that failed
_MESSAGE_FAILURES: Final = (ServerError, DeliveryError)  # about one message: the rest go on


def _print_response(out: Console, response: Response, *, as_json: bool) -> None:
    if as_json:
        out.line(printable_json({
            "messageId": response.message_id,
            "content": response.content,
            "timestamp": format_timestamp(response.timestamp),
        }))
    else:
        out.line(printable(response.content))


def _print_failure(
    out: Console, future: MessageFuture, error: WsyncError, *, as_json: bool
) -> None:
    if as_json:
        out.line(printable_json({"messageId": future.message_id, "error": str(error)}))
    else:
        out.line(FAILED_LINE)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Send ``args.messages``; 0 when every one was answered, 1 when any failed.

    Raises:
        CommandFailed: bad URL or ``--cafile``, the connection failed (refused, TLS,
            handshake), or ``--timeout`` ran out.
    """
    timeout: float = args.timeout
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        return max(0.0, deadline - time.monotonic())

    client = make_client(
        args.url,
        cafile=args.cafile,
        client_id=args.client_id,
        backoff=Backoff(initial=0.5, max_attempts=args.retries),
        # Longer than the whole budget, so that connect(timeout=...) is what times out.
        connect_timeout=timeout + 1.0,
    )
    try:
        try:
            client.connect(timeout=remaining())
        except WsyncError as exc:
            raise CommandFailed(*classify(exc, timeout=timeout, url=client.url)) from exc
        futures = [client.send(message) for message in args.messages]
        total = len(futures)
        failed = 0
        for position, future in enumerate(futures, start=1):
            try:
                response = future.result(remaining())
            except _MESSAGE_FAILURES as exc:
                failed += 1
                err.line(f"wsync send: message {position} of {total} failed: "
                         f"{printable(str(exc))}")
                _print_failure(out, future, exc, as_json=args.json)
                continue
            except WsyncError as exc:
                raise CommandFailed(*classify(exc, url=client.url)) from exc
            except concurrent.futures.TimeoutError as exc:  # our wait ran out
                left = total - position + 1
                raise CommandFailed(
                    EXIT_TIMEOUT,
                    f"timed out: no response to {left} of {total} messages "
                    f"within {timeout:g} s: {client.url}",
                ) from exc
            _print_response(out, response, as_json=args.json)
        return EXIT_FAILED if failed else EXIT_OK
    finally:
        client.close()

"""The test server's shared state, and the protocol each of its connections speaks.

One job: decide what the server answers, when, and keep count. ``ProtocolServer``
(``_server.py``) owns the sockets, websockets' server and the threads' lifecycle; nothing
here opens a socket or starts a thread. These methods run on the server's threads:
``read()`` on ``wsync-server-conn-N`` and ``work()`` on ``wsync-server-worker-N``.

One ``threading.Lock`` (``ServerState.lock``, with the condition ``cond``) guards every
field of ``ServerState`` and of each ``Peer`` except ``Peer.conn``, and the lifecycle fields
of ``ProtocolServer``. It is never held around socket I/O or user code. Every change of
state bumps ``generation`` and notifies ``cond``: the ``wait*`` helpers and the workers
wait on it.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.http11 import Response as HTTPResponse
from websockets.sync.server import ServerConnection

from wsync._errors import ProtocolError
from wsync.protocol import (
    Connect,
    ConnectConfirm,
    Error,
    Frame,
    Message,
    Ping,
    Pong,
    Response,
    decode,
    encode,
    now,
)
from wsync.testing._support import Handler, Received, UpgradeRequest

__all__ = ["GOING_AWAY", "POLICY_VIOLATION", "Peer", "ServerState"]

logger = logging.getLogger(__name__)

GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008


class Peer:
    """One upgraded connection. Fields other than ``conn`` are guarded by ``ServerState.lock``."""

    def __init__(self, number: int, index: int, conn: ServerConnection) -> None:
        self.number = number  # in thread names: every accepted socket counts
        self.index = index  # in Received.connection: upgraded connections count
        self.conn = conn
        self.conversation_id = str(uuid.uuid4())
        self.confirmed = False
        self.jobs: deque[tuple[Message, float]] = deque()  # (message, due) for the handler
        self.outgoing: list[tuple[float, int, str]] = []  # heap of (due, seq, frame text)
        self.closing = False  # dropped or being closed: read only to drain, answer nothing
        self.close_code: int | None = None  # a clean close the worker must perform
        self.finished = False  # the reader saw the connection end


def send(peer: Peer, data: str | bytes) -> bool:
    """Write one frame (str: text, bytes: binary); False if the connection is gone."""
    try:
        peer.conn.send(data)
    except (ConnectionClosed, OSError):
        return False  # its reader sees the end and cleans up
    return True


class ServerState:
    """Counters, fault switches, logs and live connections, under one lock.

    Args:
        handler: makes each response's content; see ``ProtocolServer``.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler  # replaced whole, read without the lock
        self.lock = threading.Lock()  # guards every field below; never held around I/O
        self.cond = threading.Condition(self.lock)  # any change of state; see changed()
        self.generation = 0
        self.running = False  # listening and serving
        self.peers: dict[int, Peer] = {}
        self.seq = itertools.count()  # tie-breaker in Peer.outgoing
        self.connections_total = 0
        self.handshakes_total = 0
        self.pings_received = 0
        self.pongs_received = 0
        self.malformed_total = 0
        self.received: list[Received] = []
        self.upgrades: list[UpgradeRequest] = []
        self.response_delay = 0.0
        self.pongs_paused = False
        self.stalled = False
        self.holding = False
        self.held: list[tuple[Peer, str]] = []
        self.reject = 0
        self.reject_error = "rejected"
        self.mismatch = 0
        self.mismatch_client_id = "someone-else"
        self.mismatch_status: str | None = None
        self.refuse = 0
        self.refuse_status = 503

    # -- synchronisation ----------------------------------------------------------------------

    def changed(self) -> None:
        """Wake every waiter. Caller holds self.lock."""
        assert self.lock.locked()
        self.generation += 1
        self.cond.notify_all()

    def set(self, **fields: Any) -> None:
        """Set fields by name under the lock and wake every waiter."""
        with self.lock:
            for name, value in fields.items():
                setattr(self, name, value)
            self.changed()

    def wait(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (run under the lock) is true; False on timeout."""
        with self.lock:
            return self.cond.wait_for(predicate, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (run without the lock) is true, re-checked on each change."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                generation = self.generation
            if predicate():
                return True
            with self.lock:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cond.wait_for(functools.partial(self._moved_on, generation), remaining)

    def _moved_on(self, generation: int) -> bool:
        return self.generation != generation

    # -- connections as a whole ---------------------------------------------------------------

    def open_peers(self) -> list[Peer]:
        """The connections that are open and not being closed."""
        with self.lock:
            return [peer for peer in self.peers.values() if not peer.closing]

    def close_peers(self, code: int | None, *, everyone: bool = False) -> list[Peer]:
        """Mark connections as closing; returns them. The caller resets them if ``code`` is None.

        Args:
            code: the close code the workers send for a clean close, or None.
            everyone: include connections already closing, so that nothing escapes a stop.
                A clean close already requested keeps its code; closing twice is harmless.
        """
        with self.lock:
            peers = [peer for peer in self.peers.values() if everyone or not peer.closing]
            for peer in peers:
                peer.closing = True
                if code is not None and peer.close_code is None:
                    peer.close_code = code
            self.changed()
        return peers

    def take_held(self) -> list[tuple[Peer, str]]:
        """Stop holding responses; return those held, in the order they fell due."""
        with self.lock:
            held, self.held, self.holding = self.held, [], False
            self.changed()
        return held

    def on_upgrade(self, conn: ServerConnection, request: Request) -> HTTPResponse | None:
        """websockets' ``process_request``: record the request, refuse it if asked to."""
        with self.lock:
            headers = tuple(request.headers.raw_items())
            self.upgrades.append(UpgradeRequest(path=request.path, headers=headers))
            refuse, status = self.refuse > 0, self.refuse_status
            if refuse:
                self.refuse -= 1
            self.changed()
        return conn.respond(status, "upgrade refused by the test server\n") if refuse else None

    # -- the reader: wsync-server-conn-N ------------------------------------------------------

    def read(self, peer: Peer) -> None:
        """Read and answer frames until the connection ends; while closing, only drain.

        While stalled, no frame is consumed: websockets' flow control then stops reading
        the socket, which is what makes ``stall()`` a TCP-level stall.
        """

        def awake() -> bool:
            return not self.stalled or peer.closing or not self.running

        while True:
            with self.lock:
                self.cond.wait_for(awake)
            try:
                data = peer.conn.recv()
            except ConnectionClosed:
                return
            with self.lock:
                self.cond.wait_for(awake)  # the frame may have come in as stall() began
                if peer.closing or not self.running:
                    continue
            self._on_frame(peer, data)

    def _on_frame(self, peer: Peer, data: str | bytes) -> None:
        if isinstance(data, bytes):
            self._malformed(peer, "binary frames are not part of the protocol")
            return
        try:
            frame = decode(data)
        except ProtocolError as exc:
            self._malformed(peer, str(exc))  # value-free by contract
            return
        logger.debug("connection %d: %s frame", peer.index, type(frame).__name__)
        if isinstance(frame, Ping):
            with self.lock:
                self.pings_received += 1
                paused = self.pongs_paused
                self.changed()
            if not paused:
                send(peer, encode(Pong(timestamp=now())))
        elif isinstance(frame, Pong):
            with self.lock:
                self.pongs_received += 1
                self.changed()
        elif isinstance(frame, Connect):
            self._on_connect(peer, frame)
        elif isinstance(frame, Message):
            self._on_message(peer, frame)
        else:
            self._malformed(peer, f"unexpected {type(frame).__name__} frame from a client")

    def _on_connect(self, peer: Peer, frame: Connect) -> None:
        unsupported = frame.version.split(".")[0] != "1"
        close = False
        reply: Frame
        with self.lock:
            if peer.confirmed:
                reply = Error(error="already connected", timestamp=now())
            elif unsupported or self.reject > 0:
                close = True
                if not unsupported:
                    self.reject -= 1
                text = "unsupported protocol version" if unsupported else self.reject_error
                reply = Error(error=text, timestamp=now())
            elif self.mismatch > 0:
                self.mismatch -= 1
                status = self.mismatch_status
                reply = ConnectConfirm(
                    client_id=frame.client_id if status is not None else self.mismatch_client_id,
                    conversation_id=peer.conversation_id,
                    status=status if status is not None else "confirmed",
                    timestamp=now(),
                )
            else:
                peer.confirmed = True
                # Counted before the confirm is written, like every counter here: whatever
                # a client has seen, the server's counters already show.
                self.handshakes_total += 1
                self.changed()
                reply = ConnectConfirm(
                    client_id=frame.client_id,
                    conversation_id=peer.conversation_id,
                    status="confirmed",
                    timestamp=now(),
                )
        send(peer, encode(reply))
        if close:
            with self.lock:
                if not peer.closing:
                    peer.closing, peer.close_code = True, POLICY_VIOLATION
                    self.changed()

    def _on_message(self, peer: Peer, frame: Message) -> None:
        with self.lock:
            if peer.confirmed:
                self.received.append(
                    Received(
                        client_id=frame.client_id,
                        message_id=frame.message_id,
                        content=frame.content,
                        conversation_id=peer.conversation_id,
                        timestamp=frame.timestamp,
                        connection=peer.index,
                    )
                )
                peer.jobs.append((frame, time.monotonic() + self.response_delay))
                self.changed()
                return
        error = Error(
            error="message before connect_confirm", timestamp=now(), message_id=frame.message_id
        )
        send(peer, encode(error))

    def _malformed(self, peer: Peer, reason: str) -> None:
        logger.debug("connection %d: malformed frame: %s", peer.index, reason)
        with self.lock:
            self.malformed_total += 1
            self.changed()
        send(peer, encode(Error(error=reason, timestamp=now())))

    # -- the worker: wsync-server-worker-N ----------------------------------------------------

    def work(self, peer: Peer) -> None:
        """Run the handler, write responses when due, perform a requested clean close."""
        try:
            while (action := self._next_action(peer)) is not None:
                action()
        except Exception:
            logger.exception("test server: internal error in worker %d", peer.index)

    def _next_action(self, peer: Peer) -> Callable[[], object] | None:
        """Wait for the worker's next step and return it; None once the connection is done."""
        with self.lock:
            while True:
                if peer.close_code is not None:
                    code, peer.close_code = peer.close_code, None
                    # Waits for the client's close frame, at most close_timeout.
                    return functools.partial(peer.conn.close, code)
                if peer.finished or peer.closing:
                    return None
                timeout = None
                if not self.stalled and peer.jobs:
                    return functools.partial(self._run_handler, peer, *peer.jobs.popleft())
                if not self.stalled and peer.outgoing:
                    due, _, text = peer.outgoing[0]
                    timeout = due - time.monotonic()
                    if timeout <= 0:
                        heapq.heappop(peer.outgoing)
                        if not self.holding:
                            return functools.partial(send, peer, text)
                        self.held.append((peer, text))
                        self.changed()
                        continue
                self.cond.wait(timeout)

    def _run_handler(self, peer: Peer, frame: Message, due: float) -> None:
        try:
            content = self.handler(frame.content, frame.client_id)
            if content is not None and not isinstance(content, str):
                raise TypeError(f"handler returned {type(content).__name__}, not str or None")
        except Exception:
            logger.warning(
                "test server: handler failed for message %s", frame.message_id, exc_info=True
            )
            reply: Frame = Error(
                error="handler failed", timestamp=now(), message_id=frame.message_id
            )
        else:
            if content is None:
                return
            reply = Response(message_id=frame.message_id, content=content, timestamp=now())
        with self.lock:
            heapq.heappush(peer.outgoing, (due, next(self.seq), encode(reply)))
            # No notify: only this worker reads peer.outgoing, and it looks next.

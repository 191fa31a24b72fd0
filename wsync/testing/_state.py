"""The test server's shared state, and the protocol each of its connections speaks.

One job: decide what the server answers, when, and keep count. ``Listener``
(``_listener.py``) owns the sockets, websockets' server and the threads' lifecycle, and
``ProtocolServer`` (``_server.py``) the public face; nothing here opens a socket, starts a
thread or touches websockets beyond its documented API (resetting a socket aside). These
methods run on the server's threads: ``on_upgrade()`` and ``read()`` on
``wsync-server-conn-N``, ``work()`` on ``wsync-server-worker-N``.

One ``threading.Lock`` (``ServerState.lock``, with the condition ``cond``) guards every
field of ``ServerState``, of its ``Faults`` and of each ``Peer`` except ``Peer.conn`` and
``Peer.sock``, and the lifecycle fields of ``ProtocolServer`` and ``Listener``. It is never
held around socket I/O or user code (handlers, ``drop_on`` predicates). Every change of
state bumps ``generation`` and notifies ``cond``: the ``wait*`` helpers and the workers
wait on it.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import hmac
import itertools
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final

import attrs
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
from wsync.testing._support import (
    Handler,
    MessageFilter,
    Received,
    UpgradeRequest,
    abort_socket,
)

__all__ = ["GOING_AWAY", "MESSAGE_TOO_BIG", "POLICY_VIOLATION", "Faults", "Peer", "ServerState"]

logger = logging.getLogger(__name__)

GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009


@attrs.define
class Faults:
    """Every fault switch of the server, typed; guarded by ``ServerState.lock``.

    Set them inside ``ServerState.changing()``, which wakes every waiter afterwards.
    A slotted class: a misspelt switch fails mypy and raises ``AttributeError``.
    """

    response_delay: float = 0.0
    pongs_paused: bool = False
    stalled: bool = False
    holding: bool = False
    reject: int = 0  # connects still to refuse
    reject_error: str = "rejected"
    mismatch: int = 0  # connects still to confirm wrongly
    mismatch_client_id: str = "someone-else"
    mismatch_status: str | None = None
    refuse: int = 0  # upgrades still to refuse
    refuse_status: int = 503
    drop_on: MessageFilter | None = None  # drop the connection on such a message
    close_after_confirm: int = 0  # confirmed connections still to close at once
    close_after_confirm_code: int = POLICY_VIOLATION
    close_after_confirm_reason: str = ""
    token: str | None = None  # the bearer token every upgrade must carry


class Peer:
    """One upgraded connection. Fields other than ``conn``/``sock`` are guarded by the lock."""

    def __init__(
        self, number: int, index: int, conn: ServerConnection, sock: socket.socket
    ) -> None:
        self.number = number  # in thread names: every accepted socket counts
        self.index = index  # in Received.connection: upgraded connections count
        self.conn = conn
        self.sock = sock  # the accepted socket under conn, for resets
        self.conversation_id = str(uuid.uuid4())
        self.confirmed = False
        # (message, due, drop) for the worker, in arrival order; drop: a drop_on message.
        self.jobs: deque[tuple[Message, float, bool]] = deque()
        # Heap of (due, seq, frame text) to write; None instead of text: reset the connection.
        self.outgoing: list[tuple[float, int, str | None]] = []
        self.closing = False  # dropped or being closed: read only to drain, answer nothing
        self.poisoned = False  # a drop_on message came: answer nothing that came after it
        self.close_with: tuple[int, str] | None = None  # a clean close the worker performs
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
        self.faults = Faults()
        self.peers: dict[int, Peer] = {}
        self.seq = itertools.count()  # tie-breaker in Peer.outgoing
        self.connections_total = 0
        self.handshakes_total = 0
        self.pings_received = 0
        self.pongs_received = 0
        self.malformed_total = 0
        self.oversized_total = 0
        self.dropped_on_message_total = 0
        self.unauthorized_total = 0
        self.received: list[Received] = []
        self.upgrades: list[UpgradeRequest] = []
        self.held: list[tuple[Peer, str]] = []

    # -- synchronisation ----------------------------------------------------------------------

    def changed(self) -> None:
        """Wake every waiter. Caller holds self.lock."""
        assert self.lock.locked()
        self.generation += 1
        self.cond.notify_all()

    @contextlib.contextmanager
    def changing(self) -> Iterator[Faults]:
        """Hold the lock to change the fault switches; wake every waiter afterwards::

        with state.changing() as faults:
            faults.stalled = True
        """
        with self.lock:
            yield self.faults
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
                if code is not None and peer.close_with is None:
                    peer.close_with = (code, "")
            self.changed()
        return peers

    def take_held(self) -> list[tuple[Peer, str]]:
        """Stop holding responses; return those held, in the order they fell due."""
        with self.lock:
            held, self.held, self.faults.holding = self.held, [], False
            self.changed()
        return held

    def on_upgrade(self, conn: ServerConnection, request: Request) -> HTTPResponse | None:
        """websockets' ``process_request``: record the request, refuse it if asked to.

        ``refuse_upgrades()`` comes first (as a proxy in front of the server would), then
        ``require_token()``.
        """
        authorization = request.headers.get_all("Authorization")
        with self.lock:
            headers = tuple(request.headers.raw_items())
            self.upgrades.append(UpgradeRequest(path=request.path, headers=headers))
            faults = self.faults
            refuse, status = faults.refuse > 0, faults.refuse_status
            unauthorized = False
            if refuse:
                faults.refuse -= 1
            elif faults.token is not None and not _bearer_matches(authorization, faults.token):
                unauthorized = True
                self.unauthorized_total += 1
            self.changed()
        if refuse:
            return conn.respond(status, "upgrade refused by the test server\n")
        if unauthorized:
            response = conn.respond(401, "missing or wrong bearer token\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="wsync test server"'
            return response
        return None

    # -- the reader: wsync-server-conn-N ------------------------------------------------------

    def read(self, peer: Peer) -> None:
        """Read and answer frames until the connection ends; while closing, only drain.

        While stalled, no frame is consumed: websockets' flow control then stops reading
        the socket, which is what makes ``stall()`` a TCP-level stall.
        """

        def awake() -> bool:
            return not self.faults.stalled or peer.closing or not self.running

        while True:
            with self.lock:
                self.cond.wait_for(awake)
            try:
                data = peer.conn.recv()
            except ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == MESSAGE_TOO_BIG:
                    with self.lock:
                        self.oversized_total += 1
                        self.changed()
                return
            with self.lock:
                self.cond.wait_for(awake)  # the frame may have come in as stall() began
                if peer.closing or peer.poisoned or not self.running:
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
                paused = self.faults.pongs_paused
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
        close_with: tuple[int, str] | None = None
        reply: Frame
        with self.lock:
            faults = self.faults
            if peer.confirmed:
                reply = Error(error="already connected", timestamp=now())
            elif unsupported or faults.reject > 0:
                close_with = (POLICY_VIOLATION, "")
                if not unsupported:
                    faults.reject -= 1
                text = "unsupported protocol version" if unsupported else faults.reject_error
                reply = Error(error=text, timestamp=now())
            elif faults.mismatch > 0:
                faults.mismatch -= 1
                status = faults.mismatch_status
                reply = ConnectConfirm(
                    client_id=frame.client_id if status is not None else faults.mismatch_client_id,
                    conversation_id=peer.conversation_id,
                    status=status if status is not None else "confirmed",
                    timestamp=now(),
                )
            else:
                peer.confirmed = True
                if faults.close_after_confirm > 0:
                    faults.close_after_confirm -= 1
                    close_with = (
                        faults.close_after_confirm_code,
                        faults.close_after_confirm_reason,
                    )
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
        if close_with is not None:
            with self.lock:
                if not peer.closing:
                    peer.closing, peer.close_with = True, close_with
                    self.changed()

    def _on_message(self, peer: Peer, frame: Message) -> None:
        with self.lock:
            confirmed, drop_on = peer.confirmed, self.faults.drop_on
        if not confirmed:
            error = Error(
                error="message before connect_confirm",
                timestamp=now(),
                message_id=frame.message_id,
            )
            send(peer, encode(error))
            return
        drop = drop_on is not None and self._matches(drop_on, frame)
        with self.lock:
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
            peer.poisoned = peer.poisoned or drop
            due = time.monotonic() + self.faults.response_delay
            peer.jobs.append((frame, due, drop))
            self.changed()

    @staticmethod
    def _matches(drop_on: MessageFilter, frame: Message) -> bool:
        """Run a ``drop_on`` filter (user code, no lock held); one that raises never matches."""
        try:
            return bool(drop_on(frame.content))
        except Exception:
            logger.warning(
                "test server: drop_on filter failed for message %s", frame.message_id, exc_info=True
            )
            return False

    def _malformed(self, peer: Peer, reason: str) -> None:
        logger.debug("connection %d: malformed frame: %s", peer.index, reason)
        with self.lock:
            self.malformed_total += 1
            self.changed()
        send(peer, encode(Error(error=reason, timestamp=now())))

    # -- the worker: wsync-server-worker-N ----------------------------------------------------

    def work(self, peer: Peer) -> None:
        """Run the handler, write responses when due, perform a requested close or reset."""
        try:
            while (action := self._next_action(peer)) is not None:
                action()
        except Exception:
            logger.exception("test server: internal error in worker %d", peer.index)

    def _next_action(self, peer: Peer) -> Callable[[], object] | None:
        """Wait for the worker's next step and return it; None once the connection is done."""
        with self.lock:
            while True:
                if peer.close_with is not None:
                    (code, reason), peer.close_with = peer.close_with, None
                    # Waits for the client's close frame, at most close_timeout.
                    return functools.partial(peer.conn.close, code, reason)
                if peer.finished or peer.closing:
                    return None
                timeout = None
                stalled = self.faults.stalled
                if not stalled and peer.jobs:
                    frame, due, drop = peer.jobs.popleft()
                    if not drop:
                        return functools.partial(self._run_handler, peer, frame, due)
                    # The reset goes out after every response to what came before it.
                    due = max([due, *(when for when, _, _ in peer.outgoing)])
                    heapq.heappush(peer.outgoing, (due, next(self.seq), None))
                    continue
                if not stalled and peer.outgoing:
                    due, _, text = peer.outgoing[0]
                    timeout = due - time.monotonic()
                    if timeout <= 0:
                        heapq.heappop(peer.outgoing)
                        if text is None:
                            return self._drop(peer)
                        if not self.faults.holding:
                            return functools.partial(send, peer, text)
                        self.held.append((peer, text))
                        self.changed()
                        continue
                self.cond.wait(timeout)

    def _drop(self, peer: Peer) -> Callable[[], object]:
        """Count and mark a ``drop_on`` reset; returns it. Caller holds self.lock."""
        assert self.lock.locked()
        self.dropped_on_message_total += 1
        peer.closing = True
        self.changed()
        return functools.partial(abort_socket, peer.sock)

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


def _bearer_matches(values: list[str], token: str) -> bool:
    """True if ``values`` is exactly one ``Authorization: Bearer <token>`` header."""
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )

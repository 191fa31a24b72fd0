"""Shared machinery of the chaos tests: seeds, the fault schedule, the ledger and the checks.

A chaos run is a seeded random schedule of ``ProtocolServer`` faults played against a
client while threads send messages through it. The seed fixes the *schedule* (which fault,
for how long, which messages are sent how, which are cancelled), not the thread
interleaving: a failing seed replays the same storm, which is usually enough to fail again.

What is checked, and how precisely (the same text is in RELIABILITY.md):

* Every future ends, in an outcome allowed for how it was sent (``Ledger`` / ``ALLOWED``).
* ``flush()`` returning True means every future was already resolved (all settled then).
* A message answered with a Response was received by the server; the content matches.
* Per sending thread, first arrivals keep send order. Exempt as the *earlier* message of a
  pair: a message whose future failed (its only copy may still sit in the TCP buffer of a
  half-open connection the client already gave up on, and arrive after later messages).
* No message is received after its future failed, was cancelled or withdrawn. What can be
  checked exactly from outside: the server numbers connections (``Received.connection``)
  when it accepts them, and the client writes a message only on a connection the server
  has already counted. So when a future ends we read ``server.connections_total`` (after
  the fact, which only makes the check more lenient, never wrong); a receipt on a
  connection with a higher number was written after the future ended: a violation. A
  receipt on the *same* connection may be a write that raced the failure, or bytes
  already on the wire, and is allowed. A successful ``cancel()`` is stricter: the message
  must never be received at all. The same rule catches a resend after a Response.
* Duplicates: every copy of a message arrives on a different connection (a duplicate on
  one connection would be a double write); a second copy means a connection ended while
  the message was unanswered, i.e. it was in flight during a fault. They are counted.
* The client sends nothing malformed (``server.malformed_total`` stays 0) and every
  ``ServerError`` names a message the schedule named in an ``error`` frame.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Final

from tests.helpers import TIMEOUT
from wsync import Backoff, ClientClosed, Response, ResponseTimeout, ServerError
from wsync.testing import ProtocolServer, Received

# --- seeds and modes ----------------------------------------------------------------------

CI_SEEDS: Final = (1, 2)
"""The seeds CI runs; ``WSYNC_CHAOS_SEED`` replaces them, ``WSYNC_CHAOS_RANDOM=1`` adds one."""

SEED_ENV: Final = "WSYNC_CHAOS_SEED"
RANDOM_ENV: Final = "WSYNC_CHAOS_RANDOM"
SOAK_ENV: Final = "WSYNC_SOAK_SECONDS"


def chaos_seeds() -> list[int]:
    """The seeds to run: ``WSYNC_CHAOS_SEED`` (one or more, comma-separated), else CI's.

    A soak (``WSYNC_SOAK_SECONDS``) without ``WSYNC_CHAOS_SEED`` runs one seed only.
    """
    text = os.environ.get(SEED_ENV, "").strip()
    if text:
        return [int(part) for part in text.replace(",", " ").split()]
    seeds = list(CI_SEEDS)
    if os.environ.get(RANDOM_ENV) == "1":
        seeds.append(random.SystemRandom().randrange(1, 2**31))
    if soak_seconds() is not None:
        return seeds[-1:]  # a soak runs one seed (the random one, if asked for)
    return seeds


def soak_seconds() -> float | None:
    """``WSYNC_SOAK_SECONDS``: run the chaos loop this long instead of a fixed count."""
    text = os.environ.get(SOAK_ENV, "").strip()
    return float(text) if text else None


def chaos_timeout(ci_seconds: float) -> float:
    """A pytest-timeout bound: ``ci_seconds``, or the soak time plus a generous margin."""
    soak = soak_seconds()
    return ci_seconds if soak is None else soak * 1.5 + 300


@dataclass(frozen=True)
class Ctx:
    """What every assertion message carries: the seed and the command that replays it."""

    seed: int
    test_file: str

    def replay(self) -> str:
        return f"{SEED_ENV}={self.seed} python -m pytest {self.test_file} -p no:cacheprovider -s"

    def msg(self, text: str) -> str:
        return f"[chaos seed={self.seed}; replay: {self.replay()}] {text}"


# --- client settings and resource sampling ----------------------------------------------

HEARTBEAT: Final = 0.05
CONNECT_TIMEOUT: Final = 0.5
BACKOFF: Final = Backoff(initial=0.005, max_delay=0.05, max_attempts=None, jitter=0.5)
CLIENT_OPTIONS: Final[dict[str, Any]] = {
    "heartbeat_interval": HEARTBEAT,
    "connect_timeout": CONNECT_TIMEOUT,
    "backoff": BACKOFF,
}


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def client_threads() -> int:
    """Live threads started by wsync clients (the test server's threads not included)."""
    return sum(
        1
        for t in threading.enumerate()
        if t.name.startswith("wsync-") and not t.name.startswith("wsync-server-")
    )


class Resources:
    """Samples RSS and the client's thread count; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.start_rss = rss_bytes()
        self.peak_rss = self.start_rss
        self.max_threads = client_threads()
        self.samples: list[tuple[float, int]] = []  # (seconds since start, rss)
        self._t0 = time.monotonic()

    def sample(self) -> None:
        rss, threads = rss_bytes(), client_threads()
        with self._lock:
            self.peak_rss = max(self.peak_rss, rss)
            self.max_threads = max(self.max_threads, threads)
            now = time.monotonic() - self._t0
            if not self.samples or now - self.samples[-1][0] >= 1.0:
                self.samples.append((now, rss))

    @property
    def growth(self) -> int:
        return self.peak_rss - self.start_rss


# --- the fault schedule ------------------------------------------------------------------

FAULT_KINDS: Final = (
    "drop",
    "drop_clean",
    "stall",
    "pause_pongs",
    "restart",
    "reject_handshakes",
    "mismatch_handshakes",
    "refuse_upgrades",
    "garbage",
    "error_frame",
    "error_for_message",
    "slow",
    "reorder",
    "server_ping",
)
_WEIGHTS: Final = {
    "drop": 3,
    "drop_clean": 2,
    "stall": 2,
    "pause_pongs": 2,
    "restart": 1,
    "reject_handshakes": 1,
    "mismatch_handshakes": 1,
    "refuse_upgrades": 1,
    "garbage": 3,
    "error_frame": 2,
    "error_for_message": 3,
    "slow": 2,
    "reorder": 3,
    "server_ping": 1,
}
_STAMP: Final = "2026-01-01T00:00:00.000Z"
GARBAGE: Final[tuple[str | bytes, ...]] = (
    "",
    "not json",
    "{",
    "[]",
    "null",
    "42",
    '{"type": "nope", "timestamp": "' + _STAMP + '"}',
    '{"type": "response"}',
    '{"type": "response", "messageId": 7, "content": "x", "timestamp": "' + _STAMP + '"}',
    '{"type": "response", "messageId": "m", "content": "x", "timestamp": "yesterday"}',
    '{"type": "connect_confirm", "clientId": "x", "conversationId": "c", '
    '"status": "confirmed", "timestamp": "' + _STAMP + '"}',
    '{"type": "message", "clientId": "x", "content": "x", "messageId": "m", '
    '"timestamp": "' + _STAMP + '"}',
    b"\x00\x01 binary",
    b"",
    "x" * 65536,
)
VALID_NOISE: Final[tuple[str, ...]] = (
    '{"type": "response", "messageId": "chaos-unknown", "content": "?", '
    '"timestamp": "' + _STAMP + '"}',
    '{"type": "pong", "timestamp": "' + _STAMP + '", "extra": [1, 2]}',
)
OVERSIZE: Final = "y" * ((1 << 20) + 16)


class FaultInjector:
    """Plays a seeded random schedule of faults on ``server``, one at a time.

    Args:
        server: the server to fault.
        rng: the schedule's randomness (seeded by the test).
        pick_pending: returns the id of a message still waiting for its response, or None;
            ``error_for_message`` names it in an ``error`` frame.
        named: ids named in error frames are added here *before* the frame is sent.
        calm: (low, high) seconds of calm between two faults.
    """

    def __init__(
        self,
        server: ProtocolServer,
        rng: random.Random,
        *,
        pick_pending: Callable[[random.Random], str | None],
        named: set[str],
        named_lock: threading.Lock,
        calm: tuple[float, float] = (0.02, 0.12),
    ) -> None:
        self.server = server
        self.rng = rng
        self.pick_pending = pick_pending
        self.named = named
        self.named_lock = named_lock
        self.calm = calm
        self.counts: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[tuple[float, str]] = collections.deque(maxlen=50)
        self.problems: list[str] = []
        self._kinds = list(_WEIGHTS)
        self._weights = [_WEIGHTS[k] for k in self._kinds]
        self._t0 = time.monotonic()

    def run(self, stop: threading.Event, sample: Callable[[], None] = lambda: None) -> None:
        """Inject faults until ``stop`` is set; each fault is undone before the next."""
        try:
            while not stop.is_set():
                self.step(stop)
                sample()
        except Exception as exc:  # a broken schedule must fail the test, not vanish
            self.problems.append(f"fault injector crashed: {exc!r}")
            raise

    def step(self, stop: threading.Event) -> str:
        """One fault, its duration, its undoing, then a moment of calm."""
        rng, server = self.rng, self.server
        kind = rng.choices(self._kinds, self._weights)[0]
        self.counts[kind] += 1
        self.recent.append((round(time.monotonic() - self._t0, 3), kind))
        if kind == "drop":
            server.drop_connections()
        elif kind == "drop_clean":
            server.drop_connections(clean=True)
        elif kind == "stall":
            server.stall()
            stop.wait(rng.uniform(0.05, 0.6))
            server.unstall()
        elif kind == "pause_pongs":
            server.pause_pongs()
            stop.wait(rng.uniform(0.05, 0.4))
            server.resume_pongs()
        elif kind == "restart":
            server.restart(down_for=rng.uniform(0.02, 0.4), wait=False)
            if not server.wait_until(lambda: server.listening, TIMEOUT):
                self.problems.append("server did not come back after restart()")
        elif kind == "reject_handshakes":
            server.reject_handshakes(rng.randint(1, 3), error="chaos says no")
            server.drop_connections()
        elif kind == "mismatch_handshakes":
            if rng.random() < 0.5:
                server.mismatch_handshakes(rng.randint(1, 2))
            else:
                server.mismatch_handshakes(rng.randint(1, 2), status="refused")
            server.drop_connections()
        elif kind == "refuse_upgrades":
            server.refuse_upgrades(rng.randint(1, 3))
            server.drop_connections()
        elif kind == "garbage":
            for _ in range(rng.randint(1, 4)):
                roll = rng.random()
                if roll < 0.02:
                    server.send_raw(OVERSIZE)
                elif roll < 0.2:
                    server.send_raw(rng.choice(VALID_NOISE))
                else:
                    server.send_raw(rng.choice(GARBAGE))
        elif kind == "error_frame":
            server.send_error("chaos: something went wrong")
        elif kind == "error_for_message":
            mid = self.pick_pending(rng)
            if mid is None:
                server.send_error("chaos: nothing to name")
            else:
                with self.named_lock:
                    self.named.add(mid)
                server.send_error("chaos: about your message", mid)
        elif kind == "slow":
            server.response_delay = rng.uniform(0.01, 0.3)
            stop.wait(rng.uniform(0.1, 0.5))
            server.response_delay = 0.0
        elif kind == "reorder":
            server.hold_responses()
            stop.wait(rng.uniform(0.02, 0.3))
            server.release_responses(
                order=rng.choice(("reverse", "shuffle", "fifo")), seed=rng.randrange(2**32)
            )
        elif kind == "server_ping":
            server.send_ping()
        stop.wait(rng.uniform(*self.calm))
        return kind

    def clear(self) -> None:
        """Undo every fault and wait until the server listens."""
        server = self.server
        server.unstall()
        server.resume_pongs()
        server.response_delay = 0.0
        server.reject_handshakes(0)
        server.mismatch_handshakes(0)
        server.refuse_upgrades(0)
        server.release_responses()
        if not server.wait_until(lambda: server.listening, TIMEOUT):
            self.problems.append("server not listening after the faults were cleared")


# --- the ledger: what was sent, and how each future ended ---------------------------------

SEND_ALLOWED: Final = frozenset({"response", "ServerError", "ClientClosed", "cancelled"})
WAIT_ALLOWED: Final = frozenset({"response", "ResponseTimeout", "ServerError", "ClientClosed"})
FAILED: Final = frozenset({"ResponseTimeout", "ServerError", "ClientClosed", "cancelled"})


@dataclass(slots=True)
class Record:
    """One message: who sent it, how, and how its future ended."""

    mid: str
    thread: int
    seq: int
    content: str
    wait: bool  # sent by send_and_wait (else send)
    outcome: str | None = None  # "response", "cancelled" or an exception's class name
    content_ok: bool = True  # the Response carried the message's id and content
    done_conn: int | None = None  # server.connections_total once the outcome was known
    cancel_ok: bool = False  # cancel() returned True
    detail: str = ""


def outcome_of(future: Future[Response]) -> tuple[str, Response | None, str]:
    """(outcome, response, detail) of a finished future."""
    if future.cancelled():
        return "cancelled", None, ""
    exc = future.exception(0)
    if exc is None:
        return "response", future.result(0), ""
    return type(exc).__name__, None, str(exc)[:200]


class Ledger:
    """Every message sent, and how its future ended; thread-safe.

    Args:
        server: read for ``connections_total`` when a future ends.
    """

    def __init__(self, server: ProtocolServer) -> None:
        self.server = server
        self._lock = threading.Lock()
        self.records: dict[str, Record] = {}
        self.outstanding: dict[str, Record] = {}  # sent, outcome not known yet
        self.problems: list[str] = []

    def new(self, thread: int, seq: int, content: str, *, wait: bool) -> Record:
        record = Record(str(uuid.uuid4()), thread, seq, content, wait)
        with self._lock:
            self.records[record.mid] = record
            self.outstanding[record.mid] = record
        return record

    def settle(
        self, record: Record, outcome: str, response: Response | None = None, detail: str = ""
    ) -> None:
        """Record how ``record``'s future ended (the first report wins)."""
        conn = self.server.connections_total  # after the fact: only ever more lenient
        ok = response is None or (
            response.message_id == record.mid and response.content == record.content
        )
        with self._lock:
            if record.outcome is not None:
                if record.outcome != outcome:
                    self.problems.append(
                        f"message {record.mid} ended twice: {record.outcome} then {outcome}"
                    )
                return
            record.outcome = outcome
            record.done_conn = conn
            record.content_ok = ok
            record.detail = detail
            self.outstanding.pop(record.mid, None)

    def on_done(self, record: Record, future: Future[Response]) -> None:
        """A done-callback: ``future.add_done_callback(functools.partial(ledger.on_done, r))``."""
        outcome, response, detail = outcome_of(future)
        self.settle(record, outcome, response, detail)

    def cancelled(self, record: Record) -> None:
        with self._lock:
            record.cancel_ok = True

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def pick_pending(self, rng: random.Random) -> str | None:
        """A random message still waiting for its outcome (for ``error_for_message``)."""
        with self._lock:
            if not self.outstanding:
                return None
            ids = list(self.outstanding)
        return ids[rng.randrange(len(ids))]

    def unsettled(self) -> list[Record]:
        with self._lock:
            return list(self.outstanding.values())


# --- the senders ---------------------------------------------------------------------------

WINDOW: Final = 64  # futures a sender keeps open before waiting for the oldest
STUCK: Final = 4 * TIMEOUT  # a future unresolved this long while faults come and go: a hang
WAIT_TIMEOUTS: Final = (0.02, 0.1, 0.3, 1.0, 2.0)


@dataclass
class SenderPlan:
    """How one sender thread behaves (probabilities per message)."""

    count: int | None  # messages to send; None: until ``deadline``
    deadline: float | None = None  # time.monotonic() at which a soak sender stops
    p_wait: float = 0.12  # send_and_wait instead of send
    p_cancel_now: float = 0.03  # cancel() right after send()
    p_cancel_old: float = 0.02  # cancel() an older open future
    pace: float = 0.004  # mean seconds between two sends (exponential)


def content_for(rng: random.Random, seed: int, thread: int, seq: int) -> str:
    """Message text: mostly short, sometimes empty-ish, unicode, or a few KiB."""
    head = f"{seed}:{thread}:{seq}"
    roll = rng.random()
    if roll < 0.05:
        return head + " " + "é✓𝄞" * rng.randint(1, 20)
    if roll < 0.08:
        return head + " " + "z" * rng.randint(1024, 4096)
    if roll < 0.1:
        return head + ' {"type": "response"} \\ " \n'
    return head


def run_sender(
    client: Any,
    ledger: Ledger,
    thread: int,
    seed: int,
    plan: SenderPlan,
    stop: threading.Event,
) -> int:
    """Send messages as ``plan`` says; returns how many. Problems go to the ledger."""
    rng = random.Random(f"{seed}:sender:{thread}")
    window: collections.deque[tuple[Record, Future[Response]]] = collections.deque()
    seq = 0
    while not stop.is_set():
        if plan.count is not None and seq >= plan.count:
            break
        if plan.deadline is not None and time.monotonic() >= plan.deadline:
            break
        content = content_for(rng, seed, thread, seq)
        if rng.random() < plan.p_wait:
            record = ledger.new(thread, seq, content, wait=True)
            timeout = rng.choice(WAIT_TIMEOUTS)
            try:
                response = client.send_and_wait(content, timeout=timeout, message_id=record.mid)
            except (ResponseTimeout, ServerError, ClientClosed) as exc:
                ledger.settle(record, type(exc).__name__, detail=str(exc)[:200])
            except Exception as exc:  # anything else is a finding, recorded and checked
                ledger.settle(record, type(exc).__name__, detail=repr(exc)[:200])
            else:
                ledger.settle(record, "response", response)
        else:
            record = ledger.new(thread, seq, content, wait=False)
            future = client.send(content, message_id=record.mid)
            future.add_done_callback(functools.partial(ledger.on_done, record))
            window.append((record, future))
            roll = rng.random()
            if roll < plan.p_cancel_now:
                if future.cancel():
                    ledger.cancelled(record)
            elif roll < plan.p_cancel_now + plan.p_cancel_old:
                old_record, old = window[rng.randrange(len(window))]
                if old.cancel():
                    ledger.cancelled(old_record)
        seq += 1
        while window and (window[0][1].done() or len(window) >= WINDOW):
            record, future = window[0]
            try:
                future.exception(STUCK)
            except CancelledError:
                pass
            except concurrent.futures.TimeoutError:
                ledger.problem(
                    f"sender {thread}: message {record.mid} (seq {record.seq}) unresolved "
                    f"after {STUCK:g} s"
                )
                return seq
            window.popleft()
        if plan.pace:
            stop.wait(rng.expovariate(1 / plan.pace))
    return seq


# --- the checks ----------------------------------------------------------------------------


@dataclass
class Figures:
    """What a run did, for the report line and RELIABILITY.md."""

    seed: int
    seconds: float = 0.0
    messages: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    receipts: int = 0
    duplicated_messages: int = 0
    duplicate_copies: int = 0
    failed_but_received: int = 0
    order_exempt: int = 0
    reconnects: int = 0
    malformed: int = 0
    server_errors_named: int = 0
    peak_rss_mb: float = 0.0
    rss_growth_mb: float = 0.0
    max_client_threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        outcomes = ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()))
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"chaos seed={self.seed}: {self.messages} messages in {self.seconds:.1f} s; "
            f"outcomes: {outcomes}; receipts={self.receipts} "
            f"duplicates={self.duplicated_messages} messages/{self.duplicate_copies} copies "
            f"failed_but_received={self.failed_but_received} "
            f"order_exempt={self.order_exempt} reconnects={self.reconnects} "
            f"malformed={self.malformed} faults({sum(self.faults.values())}): {faults}"
            + (
                f"; peak_rss={self.peak_rss_mb:.0f} MB (+{self.rss_growth_mb:.0f}) "
                f"max_client_threads={self.max_client_threads}"
                if self.peak_rss_mb
                else ""
            )
            + extra
        )


@dataclass
class Sent:
    """One message as the checks see it (from the ledger, or from a child's printout)."""

    mid: str
    stream: tuple[int, ...]  # whose send order it belongs to: (thread,) or (run, thread)
    seq: int
    outcome: str | None  # None: not known (a killed child never said)
    failed: bool  # its future failed, was cancelled or withdrawn
    must_arrive: bool  # its future got a Response, or its send() returned (durable)
    never_arrive: bool  # cancel() returned True: never written
    done_conn: int | None  # connections_total once its end was known
    content: str | None = None
    done_upto: int | None = None  # only connections up to this one count as "after its end"


def index_receipts(received: Sequence[Received]) -> dict[str, list[tuple[int, int]]]:
    """message_id -> [(arrival index, connection)] in arrival order."""
    receipts: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for index, r in enumerate(received):
        receipts[r.message_id].append((index, r.connection))
    return receipts


def check_delivery(
    sent: Iterable[Sent],
    received: Sequence[Received],
    figures: Figures,
    problems: list[str],
    *,
    client_ids: set[str] | None = None,
    unknown_ok: Callable[[Received], bool] | None = None,
) -> dict[str, list[tuple[int, int]]]:
    """The checks shared by every chaos test; appends to ``problems``, fills ``figures``."""
    receipts = index_receipts(received)
    sent = list(sent)
    by_id = {s.mid: s for s in sent}
    figures.receipts = len(received)
    for r in received:
        s = by_id.get(r.message_id)
        if s is None:
            if unknown_ok is None or not unknown_ok(r):
                problems.append(f"server received a message nobody sent: {r.message_id}")
        elif s.content is not None and r.content != s.content:
            problems.append(f"message {r.message_id} arrived with other content")
        if client_ids is not None and r.client_id not in client_ids:
            problems.append(f"message {r.message_id} arrived with clientId {r.client_id!r}")
    streams: dict[tuple[int, ...], list[Sent]] = collections.defaultdict(list)
    for s in sent:
        streams[s.stream].append(s)
        copies = receipts.get(s.mid, [])
        if s.must_arrive and not copies:
            problems.append(f"message {s.mid} ({s.outcome}) never reached the server")
        upto = s.done_upto if s.done_upto is not None else 1 << 62
        if s.never_arrive and any(c <= upto for _, c in copies):
            problems.append(
                f"message {s.mid} was cancelled yet the server received it on connection(s) "
                f"{[c for _, c in copies]}"
            )
        if s.done_conn is not None:
            late = [c for _, c in copies if s.done_conn < c <= upto]
            if late:
                what = "answered" if s.outcome == "response" else f"ended ({s.outcome})"
                problems.append(
                    f"message {s.mid} {what} when the server had counted {s.done_conn} "
                    f"connections, yet arrived on connection(s) {late}: written after its end"
                )
        if s.failed and copies:
            figures.failed_but_received += 1
        if len(copies) > 1:
            figures.duplicated_messages += 1
            figures.duplicate_copies += len(copies) - 1
            conns = [c for _, c in copies]
            if len(set(conns)) != len(conns):
                problems.append(f"message {s.mid} arrived twice on one connection: {conns}")
    # First arrivals keep send order, per stream; a failed message is exempt as the
    # earlier one of a pair (its only copy may arrive late from a connection given up on).
    for stream, items in streams.items():
        items.sort(key=lambda s: s.seq)
        firsts = [receipts[s.mid][0][0] if s.mid in receipts else None for s in items]
        bar = -1  # first arrival of the latest non-failed message so far
        bar_id = ""
        for s, first in zip(items, firsts, strict=True):
            if first is None:
                continue
            if first < bar:
                problems.append(
                    f"stream {stream}: message {s.mid} (seq {s.seq}) first arrived at "
                    f"{first}, before the earlier {bar_id} (first at {bar})"
                )
            if not s.failed:
                bar, bar_id = max(bar, first), s.mid
        # How often the exemption was needed: a failed message first seen after a later one.
        later_min = 1 << 62
        for s, first in zip(reversed(items), reversed(firsts), strict=True):
            if first is None:
                continue
            if s.failed and first > later_min:
                figures.order_exempt += 1
            if not s.failed:
                later_min = min(later_min, first)
    return receipts


def summarize(ctx: Ctx, problems: list[str], figures: Figures) -> str:
    head = problems[:25]
    more = f"\n... and {len(problems) - 25} more" if len(problems) > 25 else ""
    return ctx.msg(
        f"{len(problems)} problem(s):\n  " + "\n  ".join(head) + more + "\n" + figures.line()
    )


def join_all(threads: Sequence[threading.Thread], timeout: float) -> list[str]:
    """Join every thread within ``timeout`` in all; returns the names still alive."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


@contextlib.contextmanager
def background(name: str, target: Callable[[], object]) -> Any:
    """Run ``target`` in a named thread for the ``with`` body; re-raise nothing, join after."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        thread.join(2 * TIMEOUT)

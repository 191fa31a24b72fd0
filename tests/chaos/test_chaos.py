"""Chaos: 4 threads send through one client while a seeded schedule of faults hits the server.

Replay a seed with one command (see RELIABILITY.md)::

    WSYNC_CHAOS_SEED=123 python -m pytest tests/chaos/test_chaos.py -p no:cacheprovider -s

``WSYNC_CHAOS_RANDOM=1`` adds a random seed to CI's two; ``WSYNC_SOAK_SECONDS=600`` runs the
same loop for that long instead of a fixed number of messages. What is checked is in
``_harness``'s docstring.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime, timezone

import pytest

from tests.chaos import _harness as h
from tests.helpers import TIMEOUT
from wsync import Client, ConnectionState, Status
from wsync.testing import ProtocolServer, Received

MESSAGES = 5000
SENDERS = 4
FLUSH_TIMEOUT = 6 * TIMEOUT
MEMORY_BOUND = 96 << 20  # bytes of RSS growth a 5,000-message run may cost, at most
MEMORY_PER_MESSAGE = 2048  # plus this per message in a soak (the server keeps every one)
THREAD_BOUND = 10  # client threads alive at once: writer, timer, callbacks, readers


def _ctx(seed: int) -> h.Ctx:
    return h.Ctx(seed, "tests/chaos/test_chaos.py")


class TestChaos:
    @pytest.mark.timeout(h.chaos_timeout(120))
    @pytest.mark.parametrize("seed", h.chaos_seeds(), ids=lambda s: f"seed={s}")
    def test_every_future_ends_and_delivery_holds_under_random_faults(
        self, server: ProtocolServer, seed: int
    ) -> None:
        """Under a random fault schedule every future ends rightly and no message is lost."""
        figures = run_chaos(server, seed)
        print("\n" + figures.line(), flush=True)


def run_chaos(server: ProtocolServer, seed: int) -> h.Figures:
    """One chaos run against ``server``: send, fault, settle, check. Returns the figures."""
    ctx = _ctx(seed)
    soak = h.soak_seconds()
    figures = h.Figures(seed=seed)
    resources = h.Resources()
    ledger = h.Ledger(server)
    named: set[str] = set()
    named_lock = threading.Lock()
    injector = h.FaultInjector(
        server,
        random.Random(f"{seed}:faults"),
        pick_pending=ledger.pick_pending,
        named=named,
        named_lock=named_lock,
    )
    errors_seen: list[object] = []
    status = threading.Condition()
    latest: list[Status] = []

    def on_state_change(state: ConnectionState) -> None:
        with status:
            latest[:] = [state.status]
            status.notify_all()

    client = Client(
        server.url,
        client_id=f"chaos-{seed}",
        on_error=errors_seen.append,
        on_state_change=on_state_change,
        **h.CLIENT_OPTIONS,
    )
    stop_senders = threading.Event()
    stop_faults = threading.Event()
    started = time.monotonic()
    deadline = None if soak is None else started + soak
    per_thread = None if soak is not None else MESSAGES // SENDERS
    plan = h.SenderPlan(count=per_thread, deadline=deadline)
    counts = [0] * SENDERS
    crashed: list[str] = []

    def sender(t: int) -> None:
        try:
            counts[t] = h.run_sender(client, ledger, t, seed, plan, stop_senders)
        except BaseException as exc:
            crashed.append(f"sender {t} crashed: {exc!r}")
            raise

    try:
        client.connect(timeout=TIMEOUT)
        senders = [
            threading.Thread(target=sender, args=(t,), name=f"chaos-sender-{t}", daemon=True)
            for t in range(SENDERS)
        ]
        with h.background("chaos-faults", lambda: injector.run(stop_faults, resources.sample)):
            for t in senders:
                t.start()
            bound = (soak or 0) + 90
            stuck = h.join_all(senders, bound)
            stop_faults.set()
        if stuck:
            stop_senders.set()
            h.join_all(senders, TIMEOUT)
        injector.clear()
        flushed = client.flush(timeout=FLUSH_TIMEOUT)
        unsettled_at_flush = ledger.unsettled()
        with status:
            back = status.wait_for(lambda: latest == [Status.CONFIRMED], 2 * TIMEOUT)
        stats = client.stats()
        state = client.state
    finally:
        stop_senders.set()
        stop_faults.set()
        client.close(timeout=TIMEOUT)
    resources.sample()
    figures.seconds = time.monotonic() - started
    figures.faults = injector.counts
    figures.reconnects = stats.reconnects
    figures.malformed = stats.malformed
    figures.peak_rss_mb = resources.peak_rss / 2**20
    figures.rss_growth_mb = resources.growth / 2**20
    figures.max_client_threads = resources.max_threads
    figures.extra["errors_seen"] = len(errors_seen)
    figures.extra["rss_samples_mb"] = _rss_curve(resources)

    problems: list[str] = list(crashed) + injector.problems + ledger.problems
    if stuck:
        problems.append(f"sender threads did not finish: {stuck}")
    if not flushed:
        problems.append(
            f"flush() did not drain within {FLUSH_TIMEOUT:g} s: state={state.status.value} "
            f"error={state.error!r} stats={stats} recent faults={list(injector.recent)[-8:]}"
        )
    elif unsettled_at_flush:
        problems.append(
            f"flush() returned True with {len(unsettled_at_flush)} futures unresolved, "
            f"e.g. {unsettled_at_flush[0]}"
        )
    if not back:
        problems.append(f"client not back to CONFIRMED once the faults stopped: {state}")
    records = list(ledger.records.values())
    figures.messages = len(records)
    left = ledger.unsettled()
    if left:
        problems.append(f"{len(left)} futures still pending after close(), e.g. {left[0]}")
    sent: list[h.Sent] = []
    for r in records:
        figures.outcomes[r.outcome or "pending"] += 1
        allowed = h.WAIT_ALLOWED if r.wait else h.SEND_ALLOWED
        if r.outcome is not None and r.outcome not in allowed:
            problems.append(
                f"message {r.mid} ({'send_and_wait' if r.wait else 'send'}) ended with "
                f"{r.outcome}: {r.detail}"
            )
        if r.outcome == "response" and not r.content_ok:
            problems.append(f"message {r.mid} got a Response with another id or content")
        if r.outcome == "ServerError":
            figures.server_errors_named += 1
            if r.mid not in named:
                problems.append(
                    f"message {r.mid} failed with a ServerError nobody named: {r.detail}"
                )
        if r.outcome == "cancelled" and not r.cancel_ok:
            problems.append(f"message {r.mid} was cancelled though cancel() never said so")
        failed = r.outcome in h.FAILED
        sent.append(
            h.Sent(
                mid=r.mid,
                stream=(r.thread,),
                seq=r.seq,
                outcome=r.outcome,
                failed=failed,
                must_arrive=r.outcome == "response",
                never_arrive=r.cancel_ok,
                done_conn=r.done_conn if r.outcome != "ClientClosed" else None,
                content=r.content,
            )
        )
    received = server.received
    h.check_delivery(sent, received, figures, problems, client_ids={client.client_id})
    if server.malformed_total:
        problems.append(f"the server got {server.malformed_total} malformed frames from us")
    memory_bound = MEMORY_BOUND + (MEMORY_PER_MESSAGE * len(records) if soak else 0)
    if resources.growth > memory_bound:
        problems.append(
            f"RSS grew by {resources.growth / 2**20:.0f} MB (bound {memory_bound / 2**20:.0f} MB)"
        )
    if resources.max_threads > THREAD_BOUND:
        problems.append(f"{resources.max_threads} client threads alive at once")
    assert not problems, h.summarize(ctx, problems, figures)
    return figures


def _rss_curve(resources: h.Resources) -> str:
    """A few RSS samples across the run, in MB, to see a trend in a soak."""
    samples = resources.samples
    if not samples:
        return "-"
    step = max(1, len(samples) // 8)
    picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    return "/".join(f"{rss / 2**20:.0f}@{t:.0f}s" for t, rss in picked)


def _rx(mid: str, connection: int, content: str = "c") -> Received:
    return Received(
        client_id="chaos",
        message_id=mid,
        content=content,
        conversation_id=f"conv-{connection}",
        timestamp=datetime.now(timezone.utc),
        connection=connection,
    )


def _sent(mid: str, seq: int, outcome: str | None = "response", **kw: object) -> h.Sent:
    fields: dict[str, object] = {
        "mid": mid,
        "stream": (0,),
        "seq": seq,
        "outcome": outcome,
        "failed": outcome in h.FAILED,
        "must_arrive": outcome == "response",
        "never_arrive": outcome == "cancelled",
        "done_conn": None,
        "content": "c",
    }
    fields.update(kw)
    return h.Sent(**fields)  # type: ignore[arg-type]


def _problems(sent: list[h.Sent], received: list[Received]) -> list[str]:
    problems: list[str] = []
    h.check_delivery(sent, received, h.Figures(seed=0), problems)
    return problems


class TestChecks:
    """The checks themselves: each violation the chaos run looks for is caught."""

    def test_clean_history_passes(self) -> None:
        """In-order first arrivals, a duplicate on a later connection: no problem."""
        sent = [_sent("a", 0, done_conn=2), _sent("b", 1, done_conn=2)]
        assert _problems(sent, [_rx("a", 1), _rx("a", 2), _rx("b", 2)]) == []

    def test_answered_message_never_received_is_caught(self) -> None:
        """A Response for a message the server never got is a problem."""
        assert _problems([_sent("a", 0)], []) != []

    def test_cancelled_message_received_is_caught(self) -> None:
        """A message whose cancel() returned True must never arrive."""
        assert _problems([_sent("a", 0, "cancelled")], [_rx("a", 1)]) != []

    def test_write_after_failure_is_caught(self) -> None:
        """A failed message arriving on a connection opened after its failure is caught."""
        sent = [_sent("a", 0, "ResponseTimeout", done_conn=1)]
        assert _problems(sent, [_rx("a", 1)]) == []
        assert _problems(sent, [_rx("a", 1), _rx("a", 2)]) != []

    def test_first_arrivals_out_of_order_are_caught(self) -> None:
        """A later message first arriving before an earlier answered one is caught."""
        sent = [_sent("a", 0), _sent("b", 1)]
        assert _problems(sent, [_rx("b", 1), _rx("a", 1)]) != []

    def test_failed_earlier_message_is_exempt_from_order(self) -> None:
        """A failed message may arrive late (from a half-open connection given up on)."""
        sent = [_sent("a", 0, "ResponseTimeout"), _sent("b", 1)]
        assert _problems(sent, [_rx("b", 2), _rx("a", 1)]) == []

    def test_duplicate_on_one_connection_is_caught(self) -> None:
        """Two copies on one connection would be a double write."""
        assert _problems([_sent("a", 0)], [_rx("a", 1), _rx("a", 1)]) != []

    def test_unknown_or_altered_message_is_caught(self) -> None:
        """A message nobody sent, or with other content, is caught."""
        assert _problems([], [_rx("x", 1)]) != []
        assert _problems([_sent("a", 0)], [_rx("a", 1, content="other")]) != []

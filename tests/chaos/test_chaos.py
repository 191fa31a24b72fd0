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

import pytest

from tests.chaos import _harness as h
from tests.helpers import TIMEOUT
from wsync import Client, Status
from wsync.testing import ProtocolServer

MESSAGES = 5000
SENDERS = 4
FLUSH_TIMEOUT = 6 * TIMEOUT
MEMORY_BOUND = 96 << 20  # bytes of RSS growth a 5,000-message run may cost, at most
MEMORY_PER_MESSAGE = 2048  # plus this per message in a soak (the server keeps every one)
THREAD_BOUND = 10  # client threads alive at once: writer, timer, callbacks, readers


def _ctx(seed: int) -> h.Ctx:
    return h.Ctx(seed, "tests/chaos/test_chaos.py")


class TestChaos:
    @pytest.mark.timeout(h.test_timeout(120))
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
    client = Client(
        server.url,
        client_id=f"chaos-{seed}",
        on_error=errors_seen.append,
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
    if state.status is not Status.CONFIRMED and flushed:
        problems.append(f"client not CONFIRMED after the storm: {state}")
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
                problems.append(f"message {r.mid} failed with a ServerError nobody named: "
                                f"{r.detail}")
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

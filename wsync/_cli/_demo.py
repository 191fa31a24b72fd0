"""``wsync demo``: a server crash in the middle of a stream, and nothing lost.

Starts a ``ProtocolServer`` in-process, connects a ``Client``, streams messages, crashes the
server (``restart(down_for=..., wait=False)``: every connection reset, the port refusing),
keeps sending while it is down, lets it come back, and checks every future against the
content it must carry. Wiring and narration only, on the public API; imports no other
command.

Every line goes through a ``Console``: the client's callbacks write from ``wsync-callbacks``,
the main thread writes too, and the server watcher from ``wsync-demo-watch``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import threading
import time
from typing import TYPE_CHECKING, Final

from wsync import Backoff, Client, ConnectionState, MessageFuture, Status
from wsync._cli._console import (
    STATUS_STYLE,
    Console,
    describe_state,
    import_server,
    printable,
)

if TYPE_CHECKING:
    from wsync.testing import ProtocolServer

__all__ = ["run", "run_demo"]

RESPONSE_DELAY: Final = 0.4  # the server answers late, so some messages are in flight at the crash
SEND_INTERVAL: Final = 0.25
BACKOFF: Final = Backoff(initial=0.2, factor=1.5, max_delay=1.0, max_attempts=None)
WAIT: Final = 10.0  # bound on connecting and on the final flush: the demo ends in any case


def _answer(content: str, client_id: str) -> str:
    return f"ack: {content}"


class _Demo:
    def __init__(self, console: Console) -> None:
        self.out = console
        self.started = time.monotonic()
        self.client: Client | None = None
        self.crashed_at: float | None = None

    # --- narration --------------------------------------------------------------------------

    def say(self, who: str, text: str, style: str = "") -> None:
        elapsed = time.monotonic() - self.started
        stamp = self.out.style(f"{elapsed:5.2f}s", "dim")
        label = self.out.style(f"{who:<6}", style or "bold")
        self.out.line(f"{stamp}  {label}  {text}")

    def depth(self) -> str:
        assert self.client is not None
        stats = self.client.stats()
        return self.out.style(f"queued {stats.queued}, in flight {stats.in_flight}", "dim")

    def on_state(self, state: ConnectionState) -> None:
        """on_state_change: runs on the client's callbacks thread, in order."""
        text = describe_state(self.out, state)
        if state.status is Status.DISCONNECTED and state.error and self.client is not None:
            nxt = state.attempt + 1
            text += self.out.style(f"; attempt {nxt} in {BACKOFF.delay(nxt):.2f} s", "dim")
        if state.status is Status.CONFIRMED and self.crashed_at is not None:
            assert self.client is not None
            stats = self.client.stats()
            unanswered = stats.queued + stats.in_flight
            text += self.out.style(f"  reconnected: writing the {unanswered} unanswered", "green")
        self.say("state", text, STATUS_STYLE[state.status])

    def on_done(self, number: int, sent_at: float, future: MessageFuture) -> None:
        """A future's done-callback: the callbacks thread (or the sender, if already done)."""
        if future.cancelled() or future.exception() is not None:
            mark = self.out.style(self.out.glyph("✗", "x"), "red")
            error = printable(str(future.exception()))
            self.say("answer", f"{mark} #{number:02d} failed: {error}", "red")
            return
        ms = (time.monotonic() - sent_at) * 1000
        mark = self.out.style(self.out.glyph("✓", "ok"), "green")
        content = printable(repr(future.result().content))
        self.say("answer", f"{mark} #{number:02d} {content} after {ms:.0f} ms   {self.depth()}",
                 "green")

    # --- the run ------------------------------------------------------------------------------

    def run(self, messages: int, down_for: float) -> int:
        from wsync.testing import ProtocolServer

        server = ProtocolServer(handler=_answer)
        server.response_delay = RESPONSE_DELAY
        server.start()
        watcher: threading.Thread | None = None
        finished = threading.Event()
        try:
            self.say("server", f"listening on {server.url}; answers 'ack: <message>' after "
                               f"{RESPONSE_DELAY:g} s", "magenta")
            client = Client(server.url, client_id="wsync-demo", backoff=BACKOFF,
                            heartbeat_interval=1.0, on_state_change=self.on_state)
            self.client = client
            try:
                client.connect(timeout=WAIT)
                client.flush(timeout=WAIT)  # lets the state lines print before the first send
                sent: list[tuple[str, MessageFuture]] = []
                crash_after = max(1, messages // 3)
                for number in range(1, messages + 1):
                    content = f"message {number:02d}"
                    future = client.send(content)
                    sent.append((content, future))
                    future.add_done_callback(
                        functools.partial(self.on_done, number, time.monotonic())
                    )
                    self.say("send", f"#{number:02d} {content!r}   {self.depth()}", "blue")
                    if number == crash_after:
                        self.say("server", self.out.style(
                            f"CRASH: every connection reset, port refusing for {down_for:g} s;"
                            " the client keeps sending", "red", "bold"), "magenta")
                        self.crashed_at = time.monotonic()
                        server.restart(down_for=down_for, wait=False)
                        watcher = threading.Thread(
                            target=self._watch, args=(server, finished),
                            name="wsync-demo-watch", daemon=True,
                        )
                        watcher.start()
                    time.sleep(SEND_INTERVAL)
                drained = client.flush(timeout=WAIT)
                stats = client.stats()
            finally:
                client.close()
            return self._summary(sent, drained, stats.sent, stats.reconnects, server)
        finally:
            finished.set()
            server.stop()
            if watcher is not None:
                watcher.join(WAIT)

    def _watch(self, server: ProtocolServer, finished: threading.Event) -> None:
        back = server.wait_until(lambda: server.listening or finished.is_set(), timeout=WAIT)
        if back and not finished.is_set():
            self.say("server", "back up on the same port", "magenta")

    def _summary(
        self,
        sent: list[tuple[str, MessageFuture]],
        drained: bool,
        writes: int,
        reconnects: int,
        server: ProtocolServer,
    ) -> int:
        answered = lost = 0
        for content, future in sent:
            if future.done() and not future.cancelled() and future.exception() is None:
                response = future.result()
                if response.message_id == future.message_id and response.content == (
                    _answer(content, "")
                ):
                    answered += 1
                    continue
            lost += 1
        arrivals = server.received
        firsts: list[str] = []
        seen: collections.Counter[str] = collections.Counter()
        for received in arrivals:
            if not seen[received.message_id]:
                firsts.append(received.message_id)
            seen[received.message_id] += 1
        in_order = firsts == [future.message_id for _, future in sent]
        elapsed = time.monotonic() - self.started
        dot = self.out.glyph(" · ", ", ")
        verdict = self.out.style(f"lost {lost}", "green" if lost == 0 else "red", "bold")
        self.out.line()
        self.out.line(self.out.style("summary", "bold") + ": " + dot.join([
            f"sent {len(sent)}", f"answered {answered}", f"resent {max(0, writes - len(sent))}",
            verdict, f"reconnects {reconnects}", f"{elapsed:.1f} s",
        ]))
        repeats = len(arrivals) - len(seen)
        self.out.line(
            f"the server saw {len(arrivals)} arrivals ({repeats} repeated with the same "
            f"messageId: at-least-once); first arrivals {'in' if in_order else 'NOT in'} "
            "send order"
        )
        if lost == 0 and drained:
            self.out.line(self.out.style("every message got its own response", "green"))
            return 0
        self.out.line(self.out.style(f"{lost} message(s) without their response", "red"))
        return 1


def run_demo(console: Console, *, messages: int = 16, down_for: float = 2.0) -> int:
    """Run the demo, writing to ``console``; return 0 only if nothing was lost.

    Needs the ``wsync-client[server]`` extra. Takes about ``messages * 0.25 + 1`` seconds.

    Args:
        console: where every line goes.
        messages: how many messages to send; the server crashes after a third of them.
        down_for: seconds the server stays down.
    """
    return _Demo(console).run(messages, down_for)


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``wsync demo``: 0 only if every message got its own response.

    Raises:
        CommandFailed: the ``wsync-client[server]`` extra is not installed.
    """
    import_server()
    return run_demo(out, messages=args.messages, down_for=args.down_for)

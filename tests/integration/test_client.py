"""The real Client against a real ProtocolServer: lifecycle, messages, futures, options."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

import wsync
from tests.helpers import TIMEOUT
from tests.integration._recorder import Recorder
from wsync import Backoff, Client, Status
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(server: ProtocolServer, recorder: Recorder) -> Iterator[Client]:
    c = Client(server.url, client_id="tester", backoff=FAST, **recorder.callbacks())
    try:
        yield c
    finally:
        c.close()


class TestLifecycle:
    def test_connect_reports_connecting_pending_confirmed_in_order(
        self, client: Client, recorder: Recorder
    ) -> None:
        """connect() blocks until CONFIRMED after CONNECTING and PENDING, each reported once."""
        state = client.connect(timeout=TIMEOUT)
        assert state.status is Status.CONFIRMED
        assert recorder.wait_status(Status.CONFIRMED)
        assert recorder.statuses() == [Status.CONNECTING, Status.PENDING, Status.CONFIRMED]

    def test_confirm_gives_a_conversation_id(self, client: Client) -> None:
        """The state carries the conversationId of the confirm and attempt 0."""
        state = client.connect(timeout=TIMEOUT)
        assert state.conversation_id
        assert state.attempt == 0
        assert state.client_id == "tester"

    def test_messages_sent_before_connect_follow_the_handshake(
        self, server: ProtocolServer
    ) -> None:
        """Messages sent before connect() reach the server after the handshake, in order."""
        c = Client(server.url, backoff=FAST)
        try:
            futures = [c.send(f"m{i}") for i in range(5)]
            c.connect(timeout=TIMEOUT)
            assert [f.result(TIMEOUT).content for f in futures] == [f"m{i}" for i in range(5)]
            assert [r.content for r in server.received] == [f"m{i}" for i in range(5)]
            assert all(r.conversation_id == c.state.conversation_id for r in server.received)
        finally:
            c.close()

    def test_context_manager_connects_and_closes(self, server: ProtocolServer) -> None:
        """`with Client(url) as c` is connected inside and CLOSED after."""
        with Client(server.url, backoff=FAST) as c:
            assert c.state.status is Status.CONFIRMED
            assert c.send_and_wait("hi", timeout=TIMEOUT).content == "hi"
        assert c.state.status is Status.CLOSED

    def test_connect_when_confirmed_returns_at_once(self, client: Client) -> None:
        """A second connect() changes nothing and returns the CONFIRMED state."""
        first = client.connect(timeout=TIMEOUT)
        again = client.connect(timeout=TIMEOUT)
        assert again.status is Status.CONFIRMED
        assert again.conversation_id == first.conversation_id

    def test_connect_without_wait_returns_at_once(self, client: Client, recorder: Recorder) -> None:
        """connect(wait=False) returns before CONFIRMED; the attempt goes on in the background."""
        client.connect(wait=False)
        assert recorder.wait_status(Status.CONFIRMED)

    def test_state_is_readable_from_any_thread(self, client: Client) -> None:
        """Reading `state` from many threads at once gives consistent snapshots."""
        client.connect(timeout=TIMEOUT)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            states = list(pool.map(lambda _: client.state, range(100)))
        assert {s.status for s in states} == {Status.CONFIRMED}


class TestSend:
    def test_send_and_wait_returns_the_response(self, client: Client) -> None:
        """send_and_wait() returns the server's response to that message."""
        client.connect(timeout=TIMEOUT)
        response = client.send_and_wait("hello", timeout=TIMEOUT)
        assert response.content == "hello"
        assert response.timestamp.tzinfo is not None

    def test_send_returns_a_message_future(self, client: Client) -> None:
        """send() returns a MessageFuture (a concurrent.futures.Future) with its message_id."""
        client.connect(timeout=TIMEOUT)
        future = client.send("x", message_id="id-1")
        assert isinstance(future, wsync.MessageFuture)
        assert isinstance(future, concurrent.futures.Future)
        assert future.message_id == "id-1"
        assert future.result(TIMEOUT).message_id == "id-1"

    def test_send_before_connect_is_queued(self, client: Client) -> None:
        """A message sent before connect() is queued, then written once CONFIRMED."""
        future = client.send("early")
        assert client.stats().queued == 1
        client.connect(timeout=TIMEOUT)
        assert future.result(TIMEOUT).content == "early"

    def test_custom_handler_response(self) -> None:
        """The response content is whatever the server's handler returns."""
        upper = ProtocolServer(handler=lambda content, cid: content.upper())
        with upper as srv, Client(srv.url, backoff=FAST) as c:
            assert c.send_and_wait("abc", timeout=TIMEOUT).content == "ABC"

    def test_duplicate_pending_message_id_is_refused(self, client: Client) -> None:
        """A caller-given message_id that is already pending raises ValueError."""
        client.send("a", message_id="same")
        with pytest.raises(ValueError, match="already pending"):
            client.send("b", message_id="same")

    @pytest.mark.parametrize("content", [b"bytes", 3, None, ["x"]])
    def test_non_str_content_is_a_type_error(self, client: Client, content: object) -> None:
        """Content that is not a str raises TypeError at the call."""
        with pytest.raises(TypeError):
            client.send(content)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.send_and_wait(content)  # type: ignore[arg-type]

    def test_out_of_order_responses_are_correlated(
        self, client: Client, server: ProtocolServer
    ) -> None:
        """Responses arriving in reverse order still resolve each future with its own response."""
        client.connect(timeout=TIMEOUT)
        server.hold_responses()
        futures = [client.send(f"m{i}") for i in range(20)]
        assert server.wait_for_received(20, TIMEOUT)
        server.release_responses(order="reverse")
        for i, future in enumerate(futures):
            assert future.result(TIMEOUT).content == f"m{i}"

    def test_order_is_kept_per_thread_at_the_server(self, server: ProtocolServer) -> None:
        """4 threads x 2,500 messages: each thread's messages reach the server in send order."""
        per_thread = 2500
        with Client(server.url, backoff=FAST) as c:

            def work(t: int) -> list[concurrent.futures.Future[wsync.Response]]:
                return [c.send(f"{t}:{i}") for i in range(per_thread)]

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                all_futures = [f for fs in pool.map(work, range(4)) for f in fs]
            assert c.flush(timeout=60)
            assert all(f.done() and f.exception() is None for f in all_futures)
        contents = [r.content for r in server.received]
        assert len(contents) == 4 * per_thread
        for t in range(4):
            mine = [int(c.split(":")[1]) for c in contents if c.startswith(f"{t}:")]
            assert mine == list(range(per_thread))

    def test_stats_count_sent_and_received(self, client: Client) -> None:
        """stats() counts written messages and received responses."""
        client.connect(timeout=TIMEOUT)
        for i in range(3):
            client.send_and_wait(str(i), timeout=TIMEOUT)
        stats = client.stats()
        assert (stats.sent, stats.received, stats.queued, stats.in_flight) == (3, 3, 0, 0)


class TestFutures:
    def test_cancel_while_queued_means_never_sent(
        self, client: Client, server: ProtocolServer
    ) -> None:
        """A future cancelled while queued is never written, even after connecting."""
        future = client.send("cancel me")
        assert future.cancel()
        assert future.cancelled()
        after = client.send("after")
        client.connect(timeout=TIMEOUT)
        assert after.result(TIMEOUT).content == "after"
        assert [r.content for r in server.received] == ["after"]

    def test_cancel_after_write_returns_false(self, client: Client, server: ProtocolServer) -> None:
        """Once written, cancel() returns False and the response still arrives."""
        client.connect(timeout=TIMEOUT)
        server.hold_responses()
        future = client.send("written")
        assert server.wait_for_received(1, TIMEOUT)
        assert future.running()
        assert not future.cancel()
        server.release_responses()
        assert future.result(TIMEOUT).content == "written"

    def test_send_and_wait_timeout_withdraws_a_queued_message(
        self, server: ProtocolServer
    ) -> None:
        """A message still queued at timeout raises ResponseTimeout and is never sent."""
        c = Client(server.url, backoff=FAST)
        try:
            with pytest.raises(wsync.ResponseTimeout):
                c.send_and_wait("too late", timeout=0.05)
            marker = c.send("marker")
            c.connect(timeout=TIMEOUT)
            assert marker.result(TIMEOUT).content == "marker"
            assert [r.content for r in server.received] == ["marker"]
        finally:
            c.close()

    def test_response_timeout_is_a_timeout_error(
        self, client: Client, server: ProtocolServer
    ) -> None:
        """No response in time raises ResponseTimeout, also a TimeoutError."""
        client.connect(timeout=TIMEOUT)
        server.hold_responses()
        with pytest.raises(TimeoutError):
            client.send_and_wait("unanswered", timeout=0.1)
        assert client.stats().in_flight == 0

    def test_done_callbacks_run_off_the_reader_thread(self, client: Client) -> None:
        """A done-callback added before the response runs on the callbacks thread."""
        client.connect(timeout=TIMEOUT)
        seen: list[str] = []
        done = threading.Event()
        future = client.send("cb")

        def callback(_: concurrent.futures.Future[wsync.Response]) -> None:
            seen.append(threading.current_thread().name)
            done.set()

        future.add_done_callback(callback)
        assert done.wait(TIMEOUT)
        assert not seen[0].startswith("wsync-reader")

    def test_flush_waits_for_every_response(self, client: Client) -> None:
        """flush() returns True once every future it waited for is resolved."""
        client.connect(timeout=TIMEOUT)
        futures = [client.send(str(i)) for i in range(200)]
        assert client.flush(timeout=TIMEOUT)
        assert all(f.done() for f in futures)

    def test_flush_times_out_while_disconnected(self, client: Client) -> None:
        """flush() returns False when the queue cannot drain in time."""
        client.send("stuck")
        assert client.flush(timeout=0.05) is False


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"client_id": ""}, ValueError),
            ({"client_id": "-bad"}, ValueError),
            ({"client_id": "x" * 129}, ValueError),
            ({"client_id": 5}, TypeError),
            ({"heartbeat_interval": -1.0}, ValueError),
            ({"heartbeat_interval": 0}, ValueError),
            ({"heartbeat_interval": "1"}, TypeError),
            ({"heartbeat_timeout": 0.0}, ValueError),
            ({"connect_timeout": float("nan")}, ValueError),
            ({"backoff": 3}, TypeError),
            ({"on_state_change": "nope"}, TypeError),
            ({"max_queued": 0}, ValueError),
            ({"max_queued": 1.5}, TypeError),
            ({"rate_limit": -2}, ValueError),
            ({"headers": {"A": 1}}, TypeError),
            ({"max_frame_size": 0}, ValueError),
        ],
    )
    def test_bad_option_raises_at_construction(
        self, kwargs: dict[str, object], error: type
    ) -> None:
        """A bad option raises ValueError/TypeError in the caller's thread, at construction."""
        with pytest.raises(error):
            Client("ws://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize("url", ["http://127.0.0.1:1", "127.0.0.1:1", "ws://", "ftp://x"])
    def test_bad_url_is_a_value_error(self, url: str) -> None:
        """A URL that is not ws:// or wss:// with a host raises ValueError."""
        with pytest.raises(ValueError):
            Client(url)

    def test_url_not_a_string_is_a_type_error(self) -> None:
        """A URL that is not a str raises TypeError."""
        with pytest.raises(TypeError):
            Client(b"ws://127.0.0.1:1")  # type: ignore[arg-type]

    def test_default_client_id_is_a_uuid(self) -> None:
        """Without client_id, the client gets a random UUID4 string."""
        import uuid

        c = Client("ws://127.0.0.1:1")
        assert uuid.UUID(c.client_id).version == 4
        c.close()

    def test_repr_hides_credentials(self) -> None:
        """repr() and url never show userinfo or the query string."""
        c = Client("ws://user:secret@127.0.0.1:1/path?token=hunter2")
        try:
            assert "secret" not in repr(c) and "hunter2" not in repr(c)
            assert "hunter2" not in c.url
            assert "secret" not in c._repr_html_()
        finally:
            c.close()


class TestCancelCallbacks:
    def test_message_is_withdrawn_before_done_callbacks_run(self, client: Client) -> None:
        """Inside a cancel's done-callback the message is gone: its id can be sent again."""
        seen: list[int] = []
        future = client.send("first", message_id="reused")

        def resend(_: concurrent.futures.Future[wsync.Response]) -> None:
            seen.append(client.stats().queued)
            client.send("second", message_id="reused")

        future.add_done_callback(resend)
        assert future.cancel()
        assert seen == [0]
        client.connect(timeout=TIMEOUT)
        assert client.flush(timeout=TIMEOUT)

    def test_second_cancel_spares_a_new_message_with_the_same_id(self, client: Client) -> None:
        """Cancelling an already cancelled future again does not withdraw a later message."""
        old = client.send("old", message_id="k")
        assert old.cancel()
        new = client.send("new", message_id="k")
        assert old.cancel()
        client.connect(timeout=TIMEOUT)
        assert new.result(TIMEOUT).content == "new"


class TestThreads:
    def test_client_without_callbacks_runs_no_callbacks_thread(
        self, server: ProtocolServer
    ) -> None:
        """No callbacks to run: no callbacks thread (its reader, a writer while it writes, and
        the shared timer; tests/integration/test_threads.py counts them exactly)."""
        with Client(server.url, backoff=FAST) as c:
            c.send_and_wait("x", timeout=TIMEOUT)
            names = sorted(
                t.name for t in threading.enumerate()
                if t.name.startswith("wsync-") and not t.name.startswith("wsync-server")
            )
        n = c._engine.number
        assert {f"wsync-reader-{n}.1", "wsync-timer"} <= set(names)
        assert set(names) <= {f"wsync-reader-{n}.1", "wsync-timer", f"wsync-writer-{n}"}

    def test_callbacks_thread_starts_with_the_first_callback(self, server: ProtocolServer) -> None:
        """A done-callback starts the callbacks thread and runs there."""
        with Client(server.url, backoff=FAST) as c:
            ran = threading.Event()
            where: list[str] = []
            future = c.send("x")
            future.add_done_callback(
                lambda _: (where.append(threading.current_thread().name), ran.set())
            )
            assert ran.wait(TIMEOUT)
        callbacks = f"wsync-callbacks-{c._engine.number}"
        assert where in ([callbacks], [threading.current_thread().name])

"""The real Client under every fault the ProtocolServer can inject."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import wsync
from tests.helpers import TIMEOUT
from tests.integration._recorder import Recorder
from wsync import Backoff, Client, Status
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)

FAST = Backoff(initial=0.01, max_delay=0.05, max_attempts=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(server: ProtocolServer, recorder: Recorder) -> Iterator[Client]:
    c = Client(
        server.url,
        client_id="faulty",
        backoff=FAST,
        heartbeat_interval=0.05,
        connect_timeout=1.0,
        **recorder.callbacks(),
    )
    try:
        yield c
    finally:
        c.close()


class TestDrop:
    def test_drop_reconnects_with_a_new_conversation(
        self, client: Client, server: ProtocolServer, recorder: Recorder
    ) -> None:
        """After the server drops the socket the client reconnects at once and confirms again."""
        first = client.connect(timeout=TIMEOUT)
        server.drop_connections()
        assert recorder.wait_status(Status.CONFIRMED, 2)
        statuses = recorder.statuses()
        assert statuses[3:] == [
            Status.DISCONNECTED, Status.CONNECTING, Status.PENDING, Status.CONFIRMED
        ]
        assert recorder.states[4].attempt == 1
        assert recorder.states[-1].conversation_id != first.conversation_id
        assert client.stats().reconnects == 1

    def test_clean_close_frame_from_server_also_reconnects(
        self, client: Client, server: ProtocolServer, recorder: Recorder
    ) -> None:
        """A close frame from the server is an unexpected loss: reconnection follows."""
        client.connect(timeout=TIMEOUT)
        server.drop_connections(clean=True)
        assert recorder.wait_status(Status.CONFIRMED, 2)

    def test_unanswered_messages_are_written_again_with_the_same_id(
        self, client: Client, server: ProtocolServer
    ) -> None:
        """Messages written but unanswered when the link drops are rewritten, in order."""
        client.connect(timeout=TIMEOUT)
        server.hold_responses()
        futures = [client.send(f"m{i}") for i in range(5)]
        assert server.wait_for_received(5, TIMEOUT)
        server.drop_connections()
        # Held responses of the dead connection are lost; the new connection answers.
        server.release_responses()
        for i, future in enumerate(futures):
            assert future.result(TIMEOUT).content == f"m{i}"
        ids = [r.message_id for r in server.received]
        first = [f.message_id for f in futures]
        assert ids[:5] == first
        assert ids[5:10] == first  # the same ids, in the same order, once more

    def test_messages_sent_while_down_are_delivered_after_restart(
        self, client: Client, server: ProtocolServer, recorder: Recorder
    ) -> None:
        """Messages sent while the server is down all arrive after it comes back: none lost."""
        client.connect(timeout=TIMEOUT)
        server.restart(down_for=0.3, wait=False)
        assert recorder.wait_status(Status.DISCONNECTED)
        futures = [client.send(f"down{i}") for i in range(50)]
        assert client.flush(timeout=TIMEOUT)
        assert [f.result(0).content for f in futures] == [f"down{i}" for i in range(50)]
        assert [r.content for r in server.received] == [f"down{i}" for i in range(50)]


class TestHeartbeat:
    def test_stalled_server_is_detected_by_the_pong_timeout(
        self, client: Client, server: ProtocolServer, recorder: Recorder
    ) -> None:
        """A half-open connection (no pong) is declared dead and the client reconnects."""
        client.connect(timeout=TIMEOUT)
        server.stall()
        assert recorder.wait(
            lambda r: any(s.error and "pong" in s.error for s in r.states)
        )
        server.unstall()
        assert recorder.wait_status(Status.CONFIRMED, 2)

    def test_paused_pongs_cause_a_reconnect(
        self, client: Client, server: ProtocolServer, recorder: Recorder
    ) -> None:
        """No pong for heartbeat_timeout means the connection is dead."""
        client.connect(timeout=TIMEOUT)
        server.pause_pongs()
        assert recorder.wait_status(Status.DISCONNECTED)
        server.resume_pongs()
        assert recorder.wait_status(Status.CONFIRMED, 2)

    def test_pings_are_sent_and_rtt_measured(
        self, client: Client, server: ProtocolServer
    ) -> None:
        """While CONFIRMED the client pings every interval; stats().last_rtt comes from pongs."""
        client.connect(timeout=TIMEOUT)
        assert server.wait_until(lambda: server.pings_received >= 2, TIMEOUT)
        client.send_and_wait("after the pong", timeout=TIMEOUT)
        rtt = client.stats().last_rtt
        assert rtt is not None and 0 <= rtt < TIMEOUT

    def test_server_ping_is_answered_with_pong(
        self, client: Client, server: ProtocolServer
    ) -> None:
        """A ping from the server gets a pong."""
        client.connect(timeout=TIMEOUT)
        before = server.pongs_received
        server.send_ping()
        assert server.wait_until(lambda: server.pongs_received > before, TIMEOUT)


class TestHandshake:
    def test_rejected_handshakes_are_retried(
        self, client: Client, server: ProtocolServer, recorder: Recorder
    ) -> None:
        """Two refused handshakes are two failed attempts; the third confirms."""
        server.reject_handshakes(2, error="not now")
        client.connect(timeout=TIMEOUT)
        failures = [s for s in recorder.states if s.status is Status.DISCONNECTED]
        assert len(failures) == 2
        assert all("not now" in (s.error or "") for s in failures)
        assert len(recorder.errors) == 2  # on_error sees every error frame

    def test_rejected_handshake_with_no_retries_is_a_handshake_error(
        self, server: ProtocolServer
    ) -> None:
        """With max_attempts=0 a refused handshake raises HandshakeError from connect()."""
        server.reject_handshakes(1, error="go away")
        c = Client(server.url, backoff=Backoff(max_attempts=0))
        try:
            with pytest.raises(wsync.HandshakeError, match="go away"):
                c.connect(timeout=TIMEOUT)
            assert c.state.status is Status.DISCONNECTED
        finally:
            c.close()

    @pytest.mark.parametrize("kwargs", [{"client_id": "someone-else"}, {"status": "denied"}])
    def test_mismatched_confirm_is_a_handshake_error(
        self, server: ProtocolServer, kwargs: dict[str, str]
    ) -> None:
        """A confirm for another clientId, or with another status, fails the handshake."""
        server.mismatch_handshakes(1, **kwargs)
        c = Client(server.url, backoff=Backoff(max_attempts=0))
        try:
            with pytest.raises(wsync.HandshakeError):
                c.connect(timeout=TIMEOUT)
        finally:
            c.close()

    def test_refused_upgrade_is_a_connect_error(self, server: ProtocolServer) -> None:
        """An HTTP error instead of the upgrade is a failed attempt with the cause chained."""
        server.refuse_upgrades(1, status=503)
        c = Client(server.url, backoff=Backoff(max_attempts=0))
        try:
            with pytest.raises(wsync.ConnectError) as info:
                c.connect(timeout=TIMEOUT)
            assert info.value.__cause__ is not None
        finally:
            c.close()


class TestGiveUp:
    def test_policy_gives_up_with_connect_error_and_cause(self, recorder: Recorder) -> None:
        """With nothing listening, connect() raises ConnectError after 1 + max_attempts tries."""
        c = Client(
            f"ws://127.0.0.1:{free_port()}",
            backoff=Backoff(initial=0.01, max_attempts=2),
            **recorder.callbacks(),
        )
        try:
            with pytest.raises(wsync.ConnectError, match="gave up after 2") as info:
                c.connect(timeout=TIMEOUT)
            assert isinstance(info.value.__cause__, wsync.ConnectError)
            assert recorder.wait_status(Status.DISCONNECTED, 3)
            connecting = [s.attempt for s in recorder.states if s.status is Status.CONNECTING]
            assert connecting == [0, 1, 2]
            assert c.state.status is Status.DISCONNECTED
            assert c.state.error and "gave up" in c.state.error
        finally:
            c.close()

    def test_failed_futures_are_never_sent_later(self) -> None:
        """When the policy gives up, waiting futures fail and those messages leave the queue."""
        port = free_port()
        c = Client(f"ws://127.0.0.1:{port}", backoff=Backoff(initial=0.01, max_attempts=1))
        try:
            doomed = c.send("doomed")
            with pytest.raises(wsync.ConnectError):
                c.connect(timeout=TIMEOUT)
            with pytest.raises(wsync.ConnectError):
                doomed.result(TIMEOUT)
            assert c.stats().queued == 0
            with ProtocolServer(port=port) as srv:
                c.connect(timeout=TIMEOUT)
                assert c.send_and_wait("alive", timeout=TIMEOUT).content == "alive"
                assert [r.content for r in srv.received] == ["alive"]
        finally:
            c.close()

    def test_connect_timeout_stops_trying_and_keeps_the_queue(
        self, server: ProtocolServer
    ) -> None:
        """ConnectTimeout: DISCONNECTED, no more attempts; queued messages go after connect()."""
        server.stall()
        c = Client(server.url, backoff=FAST, connect_timeout=5.0)
        try:
            queued = c.send("kept")
            with pytest.raises(wsync.ConnectTimeout):
                c.connect(timeout=0.3)
            assert c.state.status is Status.DISCONNECTED
            attempts = server.connections_total
            assert not queued.done()
            assert c.stats().queued == 1
            server.unstall()
            c.connect(timeout=TIMEOUT)
            assert queued.result(TIMEOUT).content == "kept"
            assert server.connections_total == attempts + 1
        finally:
            c.close()

    def test_reconnect_starts_again_after_giving_up(self, server: ProtocolServer) -> None:
        """reconnect() after a give-up tries again with a fresh budget."""
        server.reject_handshakes(1)
        rec = Recorder()
        c = Client(server.url, backoff=Backoff(max_attempts=0), **rec.callbacks())
        try:
            with pytest.raises(wsync.HandshakeError):
                c.connect(timeout=TIMEOUT)
            c.reconnect()
            assert rec.wait_status(Status.CONFIRMED)
        finally:
            c.close()


class TestBadInput:
    def test_malformed_frames_are_dropped_and_counted(
        self, client: Client, server: ProtocolServer
    ) -> None:
        """Not JSON, binary, unknown type, missing field: each dropped, counted; client works."""
        client.connect(timeout=TIMEOUT)
        for raw in ["not json", b"\x00\x01", '{"type": "bogus"}', '{"type": "response"}', "[]"]:
            server.send_raw(raw)
        # Frames on one connection are read in order: this response comes after them.
        assert client.send_and_wait("still works", timeout=TIMEOUT).content == "still works"
        assert client.stats().malformed == 5
        assert client.state.status is Status.CONFIRMED

    def test_malformed_content_is_never_logged_at_info(
        self, client: Client, server: ProtocolServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A malformed frame's content never appears in the logs."""
        caplog.set_level("DEBUG", logger="wsync")
        client.connect(timeout=TIMEOUT)
        server.send_raw('{"type": "response", "messageId": 5, "content": "SECRET-XYZ"}')
        client.send_and_wait("sync", timeout=TIMEOUT)
        assert client.stats().malformed == 1
        assert "SECRET-XYZ" not in caplog.text

    def test_error_frame_reaches_on_error(
        self, client: Client, server: ProtocolServer, recorder: Recorder
    ) -> None:
        """An error frame without messageId is delivered to on_error; nothing else changes."""
        client.connect(timeout=TIMEOUT)
        server.send_error("something odd")
        assert recorder.wait(lambda r: len(r.errors) == 1)
        assert recorder.errors[0].error == "something odd"
        assert recorder.errors[0].message_id is None
        assert client.send_and_wait("ok", timeout=TIMEOUT).content == "ok"

    def test_error_frame_with_message_id_fails_that_future(
        self, client: Client, server: ProtocolServer, recorder: Recorder
    ) -> None:
        """An error frame naming a message fails its future with ServerError."""
        client.connect(timeout=TIMEOUT)
        server.hold_responses()
        victim = client.send("victim")
        other = client.send("other")
        assert server.wait_for_received(2, TIMEOUT)
        server.send_error("bad message", message_id=victim.message_id)
        with pytest.raises(wsync.ServerError) as info:
            victim.result(TIMEOUT)
        assert (info.value.error, info.value.message_id) == ("bad message", victim.message_id)
        server.release_responses()
        assert other.result(TIMEOUT).content == "other"
        assert recorder.wait(lambda r: len(r.errors) == 1)

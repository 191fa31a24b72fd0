"""``wsync send``: in-process through ``main(argv)``, and as a real process."""

from __future__ import annotations

import json

import pytest

from tests.cli.support import closed_port, one_line, run_wsync
from wsync._cli import main
from wsync._cli._console import (
    EXIT_BAD_URL,
    EXIT_FAILED,
    EXIT_HANDSHAKE,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_TLS,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)

ANSI = "\x1b[2J\x1b[31mred\x1b[0m\x1b]0;title\x07"
ANSI_SHOWN = "\\x1b[2J\\x1b[31mred\\x1b[0m\\x1b]0;title\\x07"


def fail_on_boom(content: str, client_id: str) -> str:
    """A server handler that answers 'boom' with an error frame and echoes the rest."""
    if content == "boom":
        raise RuntimeError("no")
    return content


def ours(err: str) -> list[str]:
    """The lines the command wrote on stderr (the in-process server logs there too)."""
    return [line for line in err.splitlines() if line.startswith("wsync send:")]


class TestSend:
    def test_prints_each_response_on_its_own_line(
        self, server: ProtocolServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Responses go to stdout, one per line, in the order of the messages."""
        assert main(["send", server.url, "hello", "two words", "3"]) == EXIT_OK
        captured = capsys.readouterr()
        assert captured.out == "hello\ntwo words\n3\n"
        assert captured.err == ""

    def test_json_lines(self, server: ProtocolServer, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints one JSON object per response: messageId, content, timestamp."""
        assert main(["send", server.url, "a", "b", "--json"]) == EXIT_OK
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["content"] for r in rows] == ["a", "b"]
        assert [r["messageId"] for r in rows] == [m.message_id for m in server.received]
        assert all(r["timestamp"].endswith("Z") for r in rows)

    def test_client_id_is_used(
        self, server: ProtocolServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--client-id is the id the server sees."""
        assert main(["send", server.url, "hi", "--client-id", "cli-test"]) == EXIT_OK
        assert [m.client_id for m in server.received] == ["cli-test"]

    def test_a_failed_message_keeps_its_line_and_is_named_by_position(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """'a boom c': line 2 is empty, stderr says message 2 of 3 failed, exit 1."""
        with ProtocolServer(handler=fail_on_boom) as server:
            assert main(["send", server.url, "a", "boom", "c"]) == EXIT_FAILED
            boom = server.received[1].message_id
        captured = capsys.readouterr()
        assert captured.out == "a\n\nc\n"
        assert one_line("\n".join(ours(captured.err))) == (
            f"wsync send: message 2 of 3 failed: server error for message {boom}: handler failed"
        )

    def test_a_failed_message_in_json_is_an_error_object(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json: the failed message's line is {messageId, error}; the others are responses."""
        with ProtocolServer(handler=fail_on_boom) as server:
            assert main(["send", server.url, "a", "boom", "c", "--json"]) == EXIT_FAILED
            ids = [m.message_id for m in server.received]
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["messageId"] for r in rows] == ids
        assert [r.get("content") for r in rows] == ["a", None, "c"]
        assert "handler failed" in rows[1]["error"] and "content" not in rows[1]

    def test_refused_in_process(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A closed port exits 4 with one line naming the URL."""
        url = f"ws://127.0.0.1:{closed_port()}"
        assert main(["send", url, "hi"]) == EXIT_UNREACHABLE
        line = one_line(capsys.readouterr().err)
        assert "connection refused" in line and url in line

    def test_timeout_is_reported_as_given(
        self, server: ProtocolServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--timeout 0.5 against a stalled server says '0.5 s', not the time left of it."""
        server.stall()
        assert main(["send", server.url, "hi", "--timeout", "0.5"]) == EXIT_TIMEOUT
        line = one_line(capsys.readouterr().err)
        assert line == f"wsync send: timed out: not confirmed within 0.5 s: {server.url}"

    def test_bad_url_in_process(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A URL that is not ws:// or wss:// exits 3 with one line."""
        assert main(["send", "http://127.0.0.1:1", "hi"]) == EXIT_BAD_URL
        assert one_line(capsys.readouterr().err).startswith("wsync send: bad URL:")

    def test_upgrade_refused_is_a_handshake_failure(
        self, server: ProtocolServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An HTTP 403 instead of the upgrade exits 6, like a refused handshake."""
        server.refuse_upgrades(5, status=403)
        assert main(["send", server.url, "hi"]) == EXIT_HANDSHAKE
        assert "403" in one_line(capsys.readouterr().err)

    def test_tokens_are_never_printed(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A token in the URL (query or userinfo) stays out of the error line."""
        url = f"ws://user:SECRET1@127.0.0.1:{closed_port()}/ws?token=SECRET2"
        assert main(["send", url, "hi"]) == EXIT_UNREACHABLE
        captured = capsys.readouterr()
        assert "SECRET" not in captured.err + captured.out

    def test_cafile_with_ws_url_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--cafile is for wss:// only."""
        assert main(["send", "ws://127.0.0.1:1", "hi", "--cafile", "ca.pem"]) == EXIT_USAGE
        assert "wss://" in one_line(capsys.readouterr().err)

    def test_cafile_with_another_scheme_is_a_bad_url(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With --cafile, a URL that is not ws:// or wss:// is still a bad URL (exit 3)."""
        assert main(["send", "https://127.0.0.1:1", "hi", "--cafile", "ca.pem"]) == EXIT_BAD_URL


class TestSafeOutput:
    """Content from the server is printed escaped: no traceback, no terminal control."""

    def test_lone_surrogate(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A lone surrogate in a response prints as \\udc80 (UTF-8 cannot encode it)."""
        with ProtocolServer(handler=lambda content, client_id: "bad \udc80 text") as server:
            assert main(["send", server.url, "hi"]) == EXIT_OK
        assert capsys.readouterr().out == "bad \\udc80 text\n"

    def test_escape_sequences(self, capsys: pytest.CaptureFixture[str]) -> None:
        """ANSI escape sequences in a response print as text: \\x1b, not ESC."""
        with ProtocolServer(handler=lambda content, client_id: ANSI) as server:
            assert main(["send", server.url, "hi"]) == EXIT_OK
        captured = capsys.readouterr()
        assert captured.out == ANSI_SHOWN + "\n"
        assert "\x1b" not in captured.out + captured.err

    def test_a_newline_keeps_one_line_per_message(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A response with line breaks is still one line, so line N stays message N."""
        with ProtocolServer(handler=lambda content, client_id: f"{content}\nmore") as server:
            assert main(["send", server.url, "a", "b"]) == EXIT_OK
        assert capsys.readouterr().out == "a\\nmore\nb\\nmore\n"

    def test_json_is_exact_and_safe(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json: the content decodes back exactly, and the line holds no raw ESC or surrogate."""
        content = f"{ANSI} \udc80"
        with ProtocolServer(handler=lambda c, client_id: content) as server:
            assert main(["send", server.url, "hi", "--json"]) == EXIT_OK
        line = one_line(capsys.readouterr().out)
        assert json.loads(line)["content"] == content
        assert "\x1b" not in line

    def test_error_frame_text(
        self, server: ProtocolServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A handshake refusal's text from the server is escaped on stderr too."""
        server.reject_handshakes(5, error="not \x1b[2Jtoday")
        assert main(["send", server.url, "hi"]) == EXIT_HANDSHAKE
        line = one_line(capsys.readouterr().err)
        assert "\x1b" not in line and "not \\x1b[2Jtoday" in line


@pytest.mark.slow
class TestSendSubprocess:
    """``wsync send`` as a real process against a ProtocolServer this test runs."""

    def test_success(self, server: ProtocolServer) -> None:
        """Responses on stdout, nothing on stderr, exit 0."""
        result = run_wsync("send", server.url, "hello", "world")
        assert (result.returncode, result.stdout, result.stderr) == (0, "hello\nworld\n", "")

    def test_refused(self) -> None:
        """A port nobody listens on: exit 4 and one line."""
        result = run_wsync("send", f"ws://127.0.0.1:{closed_port()}", "hi")
        assert result.returncode == EXIT_UNREACHABLE
        assert "connection refused" in one_line(result.stderr)

    def test_timeout(self, server: ProtocolServer) -> None:
        """A stalled server (upgrade done, handshake never answered): exit 7 and one line."""
        server.stall()
        result = run_wsync("send", server.url, "hi", "--timeout", "1")
        assert result.returncode == EXIT_TIMEOUT
        assert one_line(result.stderr).startswith("wsync send: timed out")

    def test_response_timeout(self, server: ProtocolServer) -> None:
        """A server that never answers the message: exit 7 and one line."""
        server.handler = lambda content, client_id: None
        result = run_wsync("send", server.url, "hi", "--timeout", "1")
        assert result.returncode == EXIT_TIMEOUT
        assert "no response to 1 of 1 messages within 1 s" in one_line(result.stderr)

    def test_lone_surrogate_on_a_strict_stdout(self) -> None:
        """A real process, stdout a pipe: a lone surrogate prints escaped, no traceback."""
        with ProtocolServer(handler=lambda content, client_id: "\udc80") as server:
            result = run_wsync("send", server.url, "hi")
        assert (result.returncode, result.stdout, result.stderr) == (0, "\\udc80\n", "")

    def test_untrusted_certificate(self, tls_server: ProtocolServer) -> None:
        """A certificate from a CA the system does not trust: exit 5 and one line."""
        result = run_wsync("send", tls_server.url, "hi")
        assert result.returncode == EXIT_TLS
        assert "certificate" in one_line(result.stderr)

    def test_cafile_trusts_the_ca(self, tls_server: ProtocolServer, cafile: str) -> None:
        """--cafile makes the same server trusted."""
        result = run_wsync("send", tls_server.url, "hi", "--cafile", cafile)
        assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr

    def test_bad_url(self) -> None:
        """A URL that is not ws:// or wss://: exit 3 and one line."""
        result = run_wsync("send", "ftp://example.test", "hi")
        assert result.returncode == EXIT_BAD_URL
        assert "scheme" in one_line(result.stderr)

    def test_handshake_refused(self, server: ProtocolServer) -> None:
        """The server answers connect with an error frame: exit 6 and one line."""
        server.reject_handshakes(5, error="not today")
        result = run_wsync("send", server.url, "hi")
        assert result.returncode == EXIT_HANDSHAKE
        assert "not today" in one_line(result.stderr)

    def test_usage_error(self) -> None:
        """Missing arguments: argparse's usage and exit 2."""
        result = run_wsync("send")
        assert result.returncode == EXIT_USAGE
        assert "usage:" in result.stderr

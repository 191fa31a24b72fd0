"""``wsync chat``: lines from stdin, responses and state changes as they come."""

from __future__ import annotations

import io
import sys
import threading

import pytest

from tests.cli.support import TTY, closed_port, one_line
from tests.helpers import TIMEOUT
from wsync._cli import main
from wsync._cli._chat import PROMPT
from wsync._cli._console import EXIT_OK, EXIT_UNREACHABLE
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)


def chat(monkeypatch: pytest.MonkeyPatch, lines: str, *argv: str) -> int:
    """``wsync chat ARGV`` reading ``lines`` from stdin."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    return main(["chat", *argv])


class TestChat:
    def test_lines_are_sent_and_answered(
        self,
        server: ProtocolServer,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Each line is a message; responses and state changes are shown; EOF exits 0."""
        assert chat(monkeypatch, "hello\n\nworld\n", server.url) == EXIT_OK
        out = capsys.readouterr().out
        assert [m.content for m in server.received] == ["hello", "world"]
        assert "← hello" in out and "← world" in out
        for status in ("connecting", "confirmed", "closed"):
            assert status in out

    def test_embedded_server_and_faults(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without URL it starts a server; lines typed while it is down are queued and answered."""
        lines = "one\n/restart 0.3\ntwo\n/stats\n/help\nthree\n"
        assert chat(monkeypatch, lines) == EXIT_OK
        out = capsys.readouterr().out
        assert "embedded echo server" in out
        assert "queued" in out
        for word in ("one", "two", "three"):
            assert f"← {word}" in out
        assert "disconnected" in out

    def test_stats_are_readable(
        self,
        server: ProtocolServer,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """/stats prints the counters as words, not a repr."""
        assert chat(monkeypatch, "/stats\n", server.url) == EXIT_OK
        out = capsys.readouterr().out
        assert "sent 0 · received 0 · queued 0 · in flight 0 · reconnects 0" in out
        assert "last rtt" in out
        assert "Stats(" not in out

    def test_server_text_is_escaped(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A response with an escape sequence or a lone surrogate prints escaped, no traceback."""
        replies = {"a": "\x1b[2Jwiped", "b": "lone \udc80"}
        with ProtocolServer(handler=lambda content, client_id: replies[content]) as server:
            assert chat(monkeypatch, "a\nb\n", server.url) == EXIT_OK
        out = capsys.readouterr().out
        assert "← \\x1b[2Jwiped" in out and "← lone \\udc80" in out
        assert "\x1b" not in out

    def test_a_late_reply_is_written_above_the_prompt(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a terminal, a reply arriving while the user types goes above a redrawn prompt."""
        prompt_shown = threading.Event()
        reply_written = threading.Event()

        class Terminal(TTY):
            def write(self, text: str) -> int:
                written = super().write(text)
                if "← hello" in text:
                    reply_written.set()
                return written

        class Keyboard(TTY):
            typed = iter(["hello\n", "/quit\n"])

            def readline(self, size: int | None = -1) -> str:
                line = next(self.typed)
                if line == "/quit\n":  # the second prompt is up: let the reply come now
                    prompt_shown.set()
                    assert reply_written.wait(TIMEOUT)
                return line

        def late_echo(content: str, client_id: str) -> str:
            assert prompt_shown.wait(TIMEOUT)
            return content

        terminal = Terminal()
        monkeypatch.setenv("NO_COLOR", "1")
        monkeypatch.setitem(sys.modules, "readline", None)  # the prompt alone is redrawn
        monkeypatch.setattr(sys, "stdin", Keyboard())
        monkeypatch.setattr(sys, "stdout", terminal)
        with ProtocolServer(handler=late_echo) as server:
            assert main(["chat", server.url]) == EXIT_OK
        out = terminal.getvalue()
        at = out.index("\r\x1b[K← hello")
        assert out[at:].split("\n", 1)[1].startswith(PROMPT)

    def test_quit_command(
        self,
        server: ProtocolServer,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """/quit leaves at once, with exit code 0."""
        assert chat(monkeypatch, "/quit\nnever sent\n", server.url) == EXIT_OK
        assert server.received == []

    def test_ctrl_c_exits_0(
        self,
        server: ProtocolServer,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Ctrl-C while waiting for input closes the client and exits 0."""

        class Interrupting(io.StringIO):
            def readline(self, size: int | None = -1) -> str:
                raise KeyboardInterrupt

        monkeypatch.setattr(sys, "stdin", Interrupting())
        assert main(["chat", server.url]) == EXIT_OK
        assert "closed" in capsys.readouterr().out

    def test_unreachable_exits_4(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A server that cannot be reached within --timeout: one line, exit 4."""
        url = f"ws://127.0.0.1:{closed_port()}"
        assert chat(monkeypatch, "", url, "--timeout", "0.5") == EXIT_UNREACHABLE
        line = one_line(capsys.readouterr().err)
        assert "connection refused" in line and "0.5 s" in line

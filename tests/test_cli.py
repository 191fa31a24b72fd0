"""The ``wsync`` command line: ``main(argv)`` in-process, and ``python -m wsync`` as a process."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.helpers import TIMEOUT
from wsync import _cli
from wsync._cli import (
    EXIT_BAD_URL,
    EXIT_FAILED,
    EXIT_HANDSHAKE,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_TLS,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Console,
    main,
)
from wsync._demo import run_demo
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT = 30.0


def _env() -> dict[str, str]:
    """The environment of a subprocess: wsync importable from this checkout, no colour."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}
    env.pop("NO_COLOR", None)
    return env


def run_wsync(*args: str, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m wsync ARGS`` in a subprocess (the console script may not be on PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "wsync", *args],
        capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def one_line(text: str) -> str:
    """The only line of ``text``; fails if there are more or none."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[ProtocolServer]:
    """A wss:// server whose certificate comes from ``ca``, which nothing trusts by default."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    with ProtocolServer(ssl_context=context) as server:
        yield server


@pytest.fixture
def cafile(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class TestArguments:
    def test_help_explains_commands_examples_and_exit_codes(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--help lists every command, examples and the exit codes, and exits 0."""
        assert main(["--help"]) == EXIT_OK
        out = capsys.readouterr().out
        for word in ("demo", "serve", "send", "chat", "examples:", "exit codes:"):
            assert word in out

    @pytest.mark.parametrize("command", ["demo", "serve", "send", "chat"])
    def test_each_command_has_help(self, command: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Every command's --help exits 0 with a description."""
        assert main([command, "--help"]) == EXIT_OK
        assert f"wsync {command}" in capsys.readouterr().out

    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["nope"],
            ["send"],
            ["send", "ws://127.0.0.1:1"],
            ["send", "ws://127.0.0.1:1", "hi", "--timeout", "-1"],
            ["send", "ws://127.0.0.1:1", "hi", "--timeout", "soon"],
            ["send", "ws://127.0.0.1:1", "hi", "--client-id", "has space"],
            ["serve", "--port", "70000"],
            ["demo", "--log-level", "loud"],
        ],
    )
    def test_bad_arguments_exit_2(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Bad arguments are argparse errors: usage on stderr, exit code 2."""
        assert main(argv) == EXIT_USAGE
        assert "usage: wsync" in capsys.readouterr().err

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the version and exits 0."""
        import wsync

        assert main(["--version"]) == EXIT_OK
        assert wsync.__version__ in capsys.readouterr().out

    def test_python_dash_m_wsync_works(self) -> None:
        """``python -m wsync`` runs the same command line."""
        result = run_wsync("--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("wsync ")


class TestConsole:
    def test_no_colour_when_not_a_terminal(self) -> None:
        """Output into a file or pipe carries no escape codes."""
        assert Console(io.StringIO()).style("x", "red") == "x"

    def test_colour_on_a_terminal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A terminal gets colour."""
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setenv("TERM", "xterm")
        assert Console(_TTY()).style("x", "red") == "\x1b[31mx\x1b[0m"

    def test_no_color_is_respected(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """NO_COLOR turns colour off even on a terminal."""
        monkeypatch.setenv("NO_COLOR", "1")
        assert Console(_TTY()).style("x", "red") == "x"

    def test_ascii_stream_gets_ascii_glyphs(self) -> None:
        """A stream that cannot encode the symbols gets plain ones."""
        stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        assert Console(stream).glyph("✓", "ok") == "ok"


    def test_a_closed_pipe_is_not_an_error(self) -> None:
        """`wsync demo | head`: writes after the reader left are dropped, not raised."""

        class ClosedPipe(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError

        console = Console(ClosedPipe())
        console.line("one")
        console.line("two")
        assert console.broken


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

    def test_server_error_answer_exits_1(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A message answered with an error frame exits 1, the other responses still printed."""

        def handler(content: str, client_id: str) -> str:
            if content == "boom":
                raise RuntimeError("no")
            return content

        with ProtocolServer(handler=handler) as server:
            assert main(["send", server.url, "ok", "boom"]) == EXIT_FAILED
        captured = capsys.readouterr()
        assert captured.out == "ok\n"
        # The in-process server logs its handler's failure too; the command says one line.
        ours = [line for line in captured.err.splitlines() if line.startswith("wsync send:")]
        assert one_line("\n".join(ours)).startswith("wsync send: server error for message")

    def test_refused_in_process(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A closed port exits 4 with one line naming the URL."""
        url = f"ws://127.0.0.1:{closed_port()}"
        assert main(["send", url, "hi"]) == EXIT_UNREACHABLE
        line = one_line(capsys.readouterr().err)
        assert "connection refused" in line and url in line

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
        assert "no response to 1 of 1 messages" in one_line(result.stderr)

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


class TestServe:
    def test_port_in_use_exits_1_with_one_line(
        self, server: ProtocolServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A port already taken is one line and exit 1, not a traceback."""
        assert main(["serve", "--port", str(server.port)]) == EXIT_FAILED
        assert "cannot listen on" in one_line(capsys.readouterr().err)

    def test_certfile_needs_keyfile(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--certfile without --keyfile is a usage error."""
        assert main(["serve", "--port", "0", "--certfile", "c.pem"]) == EXIT_USAGE

    @pytest.mark.slow
    @pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
    def test_serves_until_signalled(self, stop_signal: signal.Signals) -> None:
        """It prints its URL, answers clients, and exits 0 on SIGTERM or Ctrl-C (SIGINT)."""
        process = subprocess.Popen(
            [sys.executable, "-m", "wsync", "serve", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
        )
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert first.startswith("wsync test server listening on ws://127.0.0.1:"), first
            url = first.split()[-1]
            assert main(["send", url, "ping", "--client-id", "pinger"]) == EXIT_OK
            process.send_signal(stop_signal)
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, err
        assert "pinger: ping" in out
        assert "stopped" in out


class TestChat:
    def _chat(self, monkeypatch: pytest.MonkeyPatch, lines: str, *argv: str) -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
        return main(["chat", *argv])

    def test_lines_are_sent_and_answered(
        self,
        server: ProtocolServer,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Each line is a message; responses and state changes are shown; EOF exits 0."""
        assert self._chat(monkeypatch, "hello\n\nworld\n", server.url) == EXIT_OK
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
        assert self._chat(monkeypatch, lines) == EXIT_OK
        out = capsys.readouterr().out
        assert "embedded echo server" in out
        assert "queued" in out
        for word in ("one", "two", "three"):
            assert f"← {word}" in out
        assert "disconnected" in out

    def test_quit_command(
        self,
        server: ProtocolServer,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """/quit leaves at once, with exit code 0."""
        assert self._chat(monkeypatch, "/quit\nnever sent\n", server.url) == EXIT_OK
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
        assert self._chat(monkeypatch, "", url, "--timeout", "0.5") == EXIT_UNREACHABLE
        assert "connection refused" in one_line(capsys.readouterr().err)


class TestDemo:
    def test_writes_to_any_stream(self) -> None:
        """The demo writes through its Console: a short run into a StringIO, nothing lost."""
        out = io.StringIO()
        assert run_demo(Console(out), messages=4, down_for=0.3) == 0
        text = out.getvalue()
        assert "lost 0" in text
        assert "CRASH" in text and "reconnected" in text
        assert "\x1b[" not in text  # no colour into a StringIO

    @pytest.mark.slow
    def test_demo_subprocess_loses_nothing(self) -> None:
        """``wsync demo`` exits 0 within 20 s and says so: lost 0."""
        result = run_wsync("demo", timeout=20)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "lost 0" in result.stdout
        assert "answered 16" in result.stdout
        assert "reconnects 1" in result.stdout
        assert result.stderr == ""


def test_exit_codes_are_distinct() -> None:
    """Each failure class has its own exit code."""
    codes = [getattr(_cli, name) for name in dir(_cli) if name.startswith("EXIT_")]
    assert len(codes) == len(set(codes))

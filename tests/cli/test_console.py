"""The console leaf: output, escaping of server text, and failures classified by type."""

from __future__ import annotations

import concurrent.futures
import io
import json
import ssl
from datetime import datetime, timezone

import pytest

from tests.cli.support import TTY
from wsync._cli._console import (
    EXIT_FAILED,
    EXIT_HANDSHAKE,
    EXIT_TIMEOUT,
    EXIT_TLS,
    EXIT_UNREACHABLE,
    Console,
    classify,
    printable,
    printable_json,
)
from wsync._errors import (
    ConnectError,
    ConnectTimeout,
    HandshakeError,
    ResponseTimeout,
    ServerError,
    TLSError,
    UpgradeRejected,
)

URL = "ws://127.0.0.1:9"


def caused(error: BaseException, cause: BaseException) -> BaseException:
    """``error`` with ``cause`` chained, as ``raise error from cause`` leaves it."""
    error.__cause__ = cause
    return error


class TestConsole:
    def test_no_colour_when_not_a_terminal(self) -> None:
        """Output into a file or pipe carries no escape codes."""
        assert Console(io.StringIO()).style("x", "red") == "x"

    def test_colour_on_a_terminal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A terminal gets colour."""
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setenv("TERM", "xterm")
        assert Console(TTY()).style("x", "red") == "\x1b[31mx\x1b[0m"

    def test_no_color_is_respected(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """NO_COLOR turns colour off even on a terminal."""
        monkeypatch.setenv("NO_COLOR", "1")
        assert Console(TTY()).style("x", "red") == "x"

    def test_ascii_stream_gets_ascii_glyphs(self) -> None:
        """A stream that cannot encode the symbols gets plain ones."""
        stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        assert Console(stream).glyph("✓", "ok") == "ok"

    def test_unencodable_text_is_backslash_escaped_not_raised(self) -> None:
        """A character the stream cannot encode is written as its escape, not a traceback."""
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
        Console(stream).line("caf\u00e9 \udc80")
        assert raw.getvalue() == b"caf\\xe9 \\udc80\n"

    def test_a_closed_pipe_is_not_an_error(self) -> None:
        """`wsync demo | head`: writes after the reader left are dropped, not raised."""

        class ClosedPipe(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError

        console = Console(ClosedPipe())
        console.line("one")
        console.line("two")
        assert console.broken

    def test_every_line_is_flushed(self) -> None:
        """Each line reaches the stream's file at once: `wsync serve > log` is live."""
        raw = io.BytesIO()
        stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")  # block-buffered
        Console(stream).line("first")
        assert raw.getvalue() == b"first\n"

    def test_a_line_written_during_a_prompt_goes_above_it(self) -> None:
        """While prompting, a line erases the prompt, is written, and the prompt comes back."""
        stream = TTY()
        console = Console(stream, colour=False)
        with console.prompting(lambda: "> typed"):
            console.line("late reply")
        console.line("after")
        assert stream.getvalue() == "\r\x1b[Klate reply\n> typed" + "after\n"


class TestPrintable:
    @pytest.mark.parametrize(
        ("text", "shown"),
        [
            ("tabs\tand caf\u00e9 \u2603 \U0001f600", "tabs\tand caf\u00e9 \u2603 \U0001f600"),
            ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
            ("two\nlines\r", "two\\nlines\\r"),
            ("\x00\x7f\x9b31m", "\\x00\\x7f\\x9b31m"),
            ("lone \udc80 surrogate", "lone \\udc80 surrogate"),
            ("line\u2028separator", "line\\u2028separator"),
        ],
    )
    def test_controls_and_lone_surrogates_are_escaped(self, text: str, shown: str) -> None:
        """Terminal controls, line breaks and lone surrogates become escapes; the rest stays."""
        assert printable(text) == shown
        shown.encode("utf-8")  # always encodable

    def test_json_stays_exact_and_safe(self) -> None:
        """printable_json decodes back to the same text and carries no raw control or surrogate."""
        value = {"content": "\x1b[31m \x9b \udc80 \u2028 caf\u00e9 \"q\""}
        line = printable_json(value)
        assert json.loads(line) == value
        assert "\n" not in line and "\x1b" not in line and "\x9b" not in line
        assert "caf\u00e9" in line
        line.encode("utf-8")


class TestClassify:
    """Failures are told apart by type and ConnectError.phase, never by message text."""

    def test_confirm_timeout_is_a_timeout_by_its_phase(self) -> None:
        """The machine's confirm timeout (phase 'confirm'), given up on, exits 7."""
        cause = ConnectError("no connect_confirm within connect_timeout=1 s", phase="confirm")
        error = caused(ConnectError(f"could not connect: {cause}"), cause)
        assert classify(error)[0] == EXIT_TIMEOUT

    def test_message_text_is_not_parsed(self) -> None:
        """A ConnectError that only says 'no connect_confirm within' is no timeout: exit 4."""
        error = ConnectError("no connect_confirm within connect_timeout=1 s")
        assert classify(error)[0] == EXIT_UNREACHABLE

    @pytest.mark.parametrize(
        "error",
        [
            TLSError(f"tls certificate verification failed: {URL}"),
            ConnectError("anything", phase="tls"),
            caused(ConnectError("gave up"), ssl.SSLError(1, "bad record")),
        ],
    )
    def test_tls(self, error: BaseException) -> None:
        """A TLSError, phase 'tls' or an ssl error in the chain exits 5."""
        code, reason = classify(error)
        assert code == EXIT_TLS and reason.startswith("tls failure: ")

    @pytest.mark.parametrize(
        "error",
        [
            HandshakeError("server refused the handshake: not today"),
            UpgradeRejected(f"upgrade rejected by server with HTTP 403: {URL}", 403),
            caused(ConnectError("could not connect: x"), UpgradeRejected("x", 401)),
        ],
    )
    def test_refused_upgrade_or_handshake(self, error: BaseException) -> None:
        """A HandshakeError or UpgradeRejected anywhere in the chain exits 6."""
        assert classify(error)[0] == EXIT_HANDSHAKE

    def test_connect_timeout_says_the_users_figure(self) -> None:
        """connect(timeout=...) running out is reported with the seconds the user gave."""
        error = ConnectTimeout(f"not confirmed within 1.99938 s: {URL}")
        assert classify(error, timeout=2, url=URL) == (
            EXIT_TIMEOUT, f"timed out: not confirmed within 2 s: {URL}"
        )

    def test_connect_timeout_after_refusals_says_why(self) -> None:
        """Every attempt refused until the time ran out: exit 4, with the refusal."""
        refused = ConnectError(f"connection refused: {URL}", phase="tcp")
        error = caused(ConnectTimeout(f"not confirmed within 0.49 s: {URL}"), refused)
        code, reason = classify(error, timeout=0.5, url=URL)
        assert code == EXIT_UNREACHABLE
        assert reason == (f"could not connect: connection refused: {URL} "
                          f"(gave up: not confirmed within 0.5 s: {URL})")

    def test_connect_timeout_after_a_cancelled_attempt_is_a_timeout(self) -> None:
        """An attempt cancelled by the timeout itself is no reason to report: exit 7."""
        cancelled = ConnectError(f"connect cancelled during tcp connect: {URL}", phase="cancelled")
        error = caused(ConnectTimeout("not confirmed"), cancelled)
        assert classify(error, timeout=1)[0] == EXIT_TIMEOUT

    @pytest.mark.parametrize(
        "error",
        [ResponseTimeout("no response"), concurrent.futures.TimeoutError(), TimeoutError()],
    )
    def test_other_timeouts(self, error: BaseException) -> None:
        """Any timeout type exits 7."""
        assert classify(error)[0] == EXIT_TIMEOUT

    def test_connection_lost_for_good(self) -> None:
        """Any other ConnectError exits 4, without repeating 'could not connect'."""
        error = ConnectError(f"could not connect: connection refused: {URL}", phase="tcp")
        reason = f"could not connect: connection refused: {URL}"
        assert classify(error) == (EXIT_UNREACHABLE, reason)

    def test_server_error_and_anything_else_exit_1(self) -> None:
        """A server's error frame and any other error exit 1."""
        stamp = datetime(2025, 1, 1, tzinfo=timezone.utc)
        assert classify(ServerError(error="no", timestamp=stamp)) == (
            EXIT_FAILED, "server error: no"
        )
        assert classify(ValueError("odd")) == (EXIT_FAILED, "error: odd")

    def test_server_text_in_a_reason_is_escaped(self) -> None:
        """A refusal reason from the server cannot drive the terminal."""
        _, reason = classify(HandshakeError("server refused: \x1b[2J\udc80"))
        assert "\x1b" not in reason and "\\x1b[2J\\udc80" in reason

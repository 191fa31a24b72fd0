"""``wsync serve``: the test server in a terminal, in-process and as a real process."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from typing import IO

import pytest

from tests.cli.support import ROOT, env, one_line
from tests.helpers import TIMEOUT
from wsync._cli import main
from wsync._cli._console import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(60)


class _Lines:
    """The lines of a pipe, read on a thread so that each wait has a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(
            target=self._read, args=(stream,), name="cli-test-pipe", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)

    def next(self) -> str:
        """The next line, as soon as the process has written it (a flushed line)."""
        try:
            return self._lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no line within {TIMEOUT} s: not flushed?") from None

    def rest(self) -> str:
        """Everything else, once the process has closed the pipe."""
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()
        parts = []
        while not self._lines.empty():
            parts.append(self._lines.get_nowait())
        return "".join(parts)


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
        """It prints its URL and each message as it comes (into a pipe), and exits 0 on a signal."""
        with subprocess.Popen(
            [sys.executable, "-m", "wsync", "serve", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT,
        ) as process:
            try:
                assert process.stdout is not None and process.stderr is not None
                lines = _Lines(process.stdout)
                first = lines.next()
                assert first.startswith("wsync test server listening on ws://127.0.0.1:"), first
                url = first.split()[-1]
                assert "Ctrl-C" in lines.next()
                assert main(["send", url, "ping \x1b[2J", "--client-id", "pinger"]) == EXIT_OK
                # Written while the server runs, not at exit: the output is line-buffered.
                assert lines.next() == "pinger: ping \\x1b[2J\n"
                process.send_signal(stop_signal)
                process.wait(TIMEOUT)
                err = process.stderr.read()
            finally:
                if process.poll() is None:
                    process.kill()
        assert process.returncode == 0, err
        assert lines.rest() == "stopped\n"

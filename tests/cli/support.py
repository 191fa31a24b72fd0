"""Helpers for the command-line tests: ``python -m wsync`` as a process, and small checks."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Final

__all__ = ["ROOT", "SUBPROCESS_TIMEOUT", "TTY", "closed_port", "env", "one_line", "run_wsync"]

ROOT: Final = Path(__file__).resolve().parent.parent.parent
SUBPROCESS_TIMEOUT: Final = 30.0


def env() -> dict[str, str]:
    """The environment of a subprocess: wsync importable from this checkout, as a user runs it.

    No ``NO_COLOR``, and no ``PYTHONUNBUFFERED``: output into a pipe is block-buffered
    unless the command flushes it.
    """
    path = os.environ.get("PYTHONPATH")
    result = {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}
    result.pop("NO_COLOR", None)
    result.pop("PYTHONUNBUFFERED", None)
    return result


def run_wsync(*args: str, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m wsync ARGS`` in a subprocess (the console script may not be on PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "wsync", *args],
        capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT,
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


class TTY(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True

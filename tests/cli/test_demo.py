"""``wsync demo``: a server crash mid-stream, and nothing lost."""

from __future__ import annotations

import io

import pytest

from tests.cli.support import run_wsync
from wsync._cli._console import Console
from wsync._cli._demo import run_demo

pytestmark = pytest.mark.timeout(60)


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

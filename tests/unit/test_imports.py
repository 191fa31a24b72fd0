"""What ``import wsync`` loads: only what a plain ``ws://`` client needs; the rest on first use.

Each check runs in a fresh interpreter (``sys.modules`` of the test process already holds
everything). No timing is asserted here: ``benchmarks/import_time.py`` measures the time.
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wsync._handshake import Connector

ROOT = Path(__file__).resolve().parents[2]

#: Modules a ``ws://`` client never needs at import; each is loaded when first used.
NOT_AT_IMPORT = (
    "sqlite3",
    "http.cookiejar",
    "urllib.request",
    "http.client",
    "email.parser",
    "cattrs",
    "wsync._sqlite_outbox",
    "wsync._notebook",
    "wsync.testing",
    "wsync._cli",
)


def _run(code: str) -> object:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); return the JSON
    value its last stdout line holds."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _modules_after(statement: str) -> set[str]:
    """The names in ``sys.modules`` after ``statement`` runs in a fresh interpreter."""
    found = _run(
        f"""
        import json, sys
        {statement}
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert isinstance(found, list)
    return set(found)


class TestImportWsync:
    @pytest.mark.parametrize("module", NOT_AT_IMPORT)
    def test_import_wsync_leaves_out(self, module: str) -> None:
        """``import wsync`` does not import a module only some clients use."""
        assert module not in _modules_after("import wsync")

    def test_import_wsync_leaves_out_ssl(self) -> None:
        """``import wsync`` does not import ssl (only wss:// or an ssl_context needs it)."""
        assert "ssl" not in _modules_after("import wsync")

    def test_lazy_names_resolve(self) -> None:
        """SQLiteOutbox and status_widget import from wsync and are listed by dir()."""
        found = _run(
            """
            import json, wsync
            listed = [name in dir(wsync) for name in wsync.__all__]
            from wsync import SQLiteOutbox, status_widget
            from wsync._notebook import status_widget as widget
            from wsync._sqlite_outbox import SQLiteOutbox as outbox
            print(json.dumps([all(listed), SQLiteOutbox is outbox, status_widget is widget]))
            """
        )
        assert found == [True, True, True]

    def test_star_import_binds_lazy_names(self) -> None:
        """``from wsync import *`` binds the lazily loaded names too."""
        found = _run(
            """
            import json
            from wsync import *
            print(json.dumps([SQLiteOutbox.__name__, status_widget.__name__]))
            """
        )
        assert found == ["SQLiteOutbox", "status_widget"]

    def test_unknown_name_raises_attribute_error(self) -> None:
        """A name wsync does not have still raises AttributeError naming it."""
        import wsync

        with pytest.raises(AttributeError, match="no_such_name"):
            wsync.no_such_name  # type: ignore[attr-defined]  # noqa: B018


class TestConverterOnFirstUse:
    def test_hot_paths_do_not_build_the_converter(self) -> None:
        """Decoding a response and encoding a message never import cattrs."""
        found = _run(
            """
            import json, sys
            from wsync import protocol
            frame = protocol.decode(
                '{"type":"response","messageId":"m-1","content":"hi",'
                '"timestamp":"2026-11-27T13:40:30.123Z"}'
            )
            protocol.encode_message_now(client_id="c-1", message_id="m-1", content="x")
            print(json.dumps([type(frame).__name__, "cattrs" in sys.modules]))
            """
        )
        assert found == ["Response", False]

    def test_connection_frames_do_not_build_the_converter(self) -> None:
        """Encoding connect/ping/pong and decoding connect_confirm/ping/pong never import cattrs."""
        found = _run(
            """
            import json, sys
            from wsync import protocol
            stamp = protocol.now()
            for frame in (protocol.Connect(client_id="c-1", timestamp=stamp),
                          protocol.Ping(timestamp=stamp), protocol.Pong(timestamp=stamp)):
                protocol.encode(frame)
            ts = '"timestamp":"2026-11-27T13:40:30.123Z"'
            names = [type(protocol.decode(text)).__name__ for text in (
                '{"type":"connect_confirm","clientId":"c-1","conversationId":"v-1",'
                '"status":"confirmed",' + ts + '}',
                '{"type":"ping",' + ts + '}',
                '{"type":"pong",' + ts + '}',
            )]
            print(json.dumps([names, "cattrs" in sys.modules]))
            """
        )
        assert found == [["ConnectConfirm", "Ping", "Pong"], False]

    def test_converter_is_built_once_on_first_access(self) -> None:
        """``protocol.CONVERTER`` is listed, built on first access, the same object after."""
        found = _run(
            """
            import json, sys
            from wsync import protocol
            before = "cattrs" not in sys.modules
            from wsync.protocol import CONVERTER
            listed = "CONVERTER" in dir(protocol)
            print(json.dumps([before and listed, CONVERTER is protocol.CONVERTER,
                              type(CONVERTER).__module__.split(".")[0]]))
            """
        )
        assert found == [True, True, "cattrs"]


def _headers(*lines: str) -> http.client.HTTPMessage:
    """The headers ``http.client`` parses from these header lines."""
    return http.client.parse_headers(io.BytesIO("".join(f"{x}\r\n" for x in (*lines, "")).encode()))


class TestCookieJarOnFirstUse:
    def test_no_jar_until_a_cookie_is_set(self) -> None:
        """A response without Set-Cookie leaves the connector without a jar and no Cookie."""
        connector = Connector("ws://127.0.0.1:9/")
        connector._keep_cookies(_headers("Upgrade: websocket"))
        assert connector._cookies is None
        assert connector._jar_cookie() == ""

    def test_first_cookie_makes_the_jar(self) -> None:
        """The first Set-Cookie makes the jar, and the next upgrade sends the cookie back."""
        connector = Connector("ws://127.0.0.1:9/")
        connector._keep_cookies(_headers("Set-Cookie: sid=abc; Path=/"))
        assert connector._cookies is not None
        assert connector._jar_cookie() == "sid=abc"

    def test_connector_for_ws_does_not_import_cookie_modules(self) -> None:
        """Building a ws:// Connector imports neither http.cookiejar nor urllib.request."""
        modules = _modules_after(
            "from wsync._handshake import Connector; Connector('ws://127.0.0.1:9/')"
        )
        assert "http.cookiejar" not in modules
        assert "urllib.request" not in modules

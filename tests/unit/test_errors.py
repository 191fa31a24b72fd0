"""The WsyncError tree, exactly as the API reference draws it, and ServerError as a value."""

from __future__ import annotations

from datetime import datetime, timezone

import attrs
import pytest

from wsync._errors import (
    ClientClosed,
    ConnectError,
    ConnectTimeout,
    HandshakeError,
    ProtocolError,
    QueueFull,
    ResponseTimeout,
    ServerError,
    WsyncError,
)

# Each class with the wsync base it extends directly, as drawn in docs/api.rst ("Errors").
TREE: dict[type[BaseException], type[BaseException]] = {
    ConnectError: WsyncError,
    ConnectTimeout: ConnectError,
    HandshakeError: ConnectError,
    ResponseTimeout: WsyncError,
    ClientClosed: WsyncError,
    QueueFull: WsyncError,
    ServerError: WsyncError,
    ProtocolError: WsyncError,
}
TIMEOUTS = {ConnectTimeout, ResponseTimeout}
WHEN = datetime(2026, 11, 27, 13, 40, 30, 123000, tzinfo=timezone.utc)


class TestHierarchy:
    def test_root_is_exception(self) -> None:
        """WsyncError is a plain Exception subclass."""
        assert WsyncError.__bases__ == (Exception,)

    @pytest.mark.parametrize(("cls", "parent"), TREE.items())
    def test_parent(self, cls: type[BaseException], parent: type[BaseException]) -> None:
        """Each error extends the class the documented tree draws above it."""
        assert issubclass(cls, parent)
        wsync_bases = [b for b in cls.__bases__ if issubclass(b, WsyncError)]
        assert wsync_bases == [parent]

    @pytest.mark.parametrize("cls", TREE)
    def test_timeout_only_where_drawn(self, cls: type[BaseException]) -> None:
        """ConnectTimeout and ResponseTimeout are TimeoutErrors; no other error is."""
        assert issubclass(cls, TimeoutError) is (cls in TIMEOUTS)

    def test_connect_timeout_is_connect_error_and_timeout(self) -> None:
        """`except ConnectError` and `except TimeoutError` both catch a ConnectTimeout."""
        with pytest.raises(ConnectError):
            raise ConnectTimeout("no confirm within 1.0 s")
        with pytest.raises(TimeoutError):
            raise ConnectTimeout("no confirm within 1.0 s")

    def test_response_timeout_is_not_connect_error(self) -> None:
        """A ResponseTimeout is a TimeoutError but not a ConnectError."""
        assert issubclass(ResponseTimeout, TimeoutError)
        assert not issubclass(ResponseTimeout, ConnectError)

    @pytest.mark.parametrize("cls", [c for c in TREE if c is not ServerError])
    def test_message(self, cls: type[BaseException]) -> None:
        """Plain errors carry their message as str()."""
        assert str(cls("something failed")) == "something failed"

    def test_cause_is_chained(self) -> None:
        """A ConnectError raised `from` a cause keeps it as __cause__."""
        cause = OSError("connection refused")
        with pytest.raises(ConnectError) as info:
            try:
                raise cause
            except OSError as exc:
                raise ConnectError("gave up after 5 attempts") from exc
        assert info.value.__cause__ is cause


class TestServerError:
    def test_fields(self) -> None:
        """error, timestamp and message_id are kept as given."""
        err = ServerError(error="bad message", timestamp=WHEN, message_id="m1")
        assert (err.error, err.timestamp, err.message_id) == ("bad message", WHEN, "m1")

    def test_message_id_defaults_to_none(self) -> None:
        """An error frame need not name a message."""
        assert ServerError(error="overloaded", timestamp=WHEN).message_id is None

    def test_keyword_only(self) -> None:
        """Fields are keyword-only."""
        with pytest.raises(TypeError):
            ServerError("bad", WHEN)  # type: ignore[misc]

    def test_str_with_message_id(self) -> None:
        """str() names the message and the server's description."""
        err = ServerError(error="bad message", timestamp=WHEN, message_id="m1")
        assert str(err) == "server error for message m1: bad message"

    def test_str_without_message_id(self) -> None:
        """str() without a message id gives the server's description."""
        assert str(ServerError(error="overloaded", timestamp=WHEN)) == "server error: overloaded"

    def test_is_raisable_and_catchable(self) -> None:
        """A ServerError is raised and caught as a WsyncError, fields intact."""
        with pytest.raises(WsyncError) as info:
            raise ServerError(error="bad message", timestamp=WHEN, message_id="m1")
        assert isinstance(info.value, ServerError)
        assert info.value.message_id == "m1"

    def test_can_be_chained(self) -> None:
        """A ServerError can be the cause of another error, and chain a cause itself."""
        err = ServerError(error="bad message", timestamp=WHEN, message_id="m1")
        with pytest.raises(ConnectError) as info:
            raise HandshakeError("server refused the handshake") from err
        assert info.value.__cause__ is err
        cause = ValueError("inner")
        with pytest.raises(ServerError) as info2:
            raise err from cause
        assert info2.value.__cause__ is cause

    def test_frozen(self) -> None:
        """Fields cannot be changed after construction."""
        err = ServerError(error="x", timestamp=WHEN)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            err.error = "y"  # type: ignore[misc]

    def test_equality_is_identity(self) -> None:
        """Being an exception, two ServerErrors with the same fields are not equal."""
        a = ServerError(error="x", timestamp=WHEN)
        b = ServerError(error="x", timestamp=WHEN)
        assert a == a
        assert a != b
        assert attrs.asdict(a) == attrs.asdict(b)
        hash(a)

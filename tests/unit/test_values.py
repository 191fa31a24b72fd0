"""Status, ConnectionState, Stats and client id validation."""

from __future__ import annotations

import attrs
import pytest

from wsync._values import ConnectionState, Stats, Status, validate_client_id


class TestStatus:
    def test_members(self) -> None:
        """Status has exactly the five documented members, in lifecycle order."""
        assert [s.name for s in Status] == [
            "CONNECTING",
            "PENDING",
            "CONFIRMED",
            "DISCONNECTED",
            "CLOSED",
        ]

    @pytest.mark.parametrize("status", list(Status))
    def test_value_is_lowercase_name(self, status: Status) -> None:
        """Each value is the member's name in lowercase."""
        assert status.value == status.name.lower()

    def test_lookup_by_value(self) -> None:
        """A status is found from its wire-friendly value."""
        assert Status("confirmed") is Status.CONFIRMED


class TestConnectionState:
    def test_fields(self) -> None:
        """A state carries status, client id, conversation id, error and attempt."""
        state = ConnectionState(
            status=Status.PENDING,
            client_id="c1",
            conversation_id="conv",
            error="boom",
            attempt=2,
        )
        assert (
            state.status,
            state.client_id,
            state.conversation_id,
            state.error,
            state.attempt,
        ) == (Status.PENDING, "c1", "conv", "boom", 2)

    def test_defaults(self) -> None:
        """conversation_id and error default to None, attempt to 0."""
        state = ConnectionState(status=Status.CONNECTING, client_id="c1")
        assert (state.conversation_id, state.error, state.attempt) == (None, None, 0)

    def test_frozen(self) -> None:
        """A state is an immutable snapshot."""
        state = ConnectionState(status=Status.CONFIRMED, client_id="c1")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            state.status = Status.CLOSED  # type: ignore[misc]

    def test_evolve(self) -> None:
        """attrs.evolve makes a changed copy and leaves the original alone."""
        state = ConnectionState(status=Status.CONFIRMED, client_id="c1")
        closed = attrs.evolve(state, status=Status.CLOSED)
        assert closed.status is Status.CLOSED
        assert state.status is Status.CONFIRMED

    def test_equality_by_value(self) -> None:
        """Two states with the same fields are equal and hash alike."""
        a = ConnectionState(status=Status.CONFIRMED, client_id="c1", conversation_id="x")
        b = ConnectionState(status=Status.CONFIRMED, client_id="c1", conversation_id="x")
        assert a == b
        assert hash(a) == hash(b)

    def test_keyword_only(self) -> None:
        """Fields are keyword-only."""
        with pytest.raises(TypeError):
            ConnectionState(Status.CONFIRMED, "c1")  # type: ignore[misc]


class TestStats:
    def test_defaults(self) -> None:
        """Counters start at zero and last_rtt at None."""
        stats = Stats()
        assert attrs.asdict(stats) == {
            "sent": 0,
            "received": 0,
            "queued": 0,
            "in_flight": 0,
            "reconnects": 0,
            "malformed": 0,
            "last_rtt": None,
        }

    def test_frozen(self) -> None:
        """Stats is an immutable snapshot."""
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            Stats().sent = 1  # type: ignore[misc]


VALID_IDS = [
    "a",
    "A",
    "0",
    "client-1",
    "user.name:device_2",
    "x" * 128,
    "9-._:",
]
INVALID_IDS = [
    "",
    "x" * 129,
    "-leading-dash",
    ".leading-dot",
    "_leading-underscore",
    ":leading-colon",
    "has space",
    " leading-space",
    "trailing-space ",
    "tab\tinside",
    "new\nline",
    "trailing-newline\n",
    "slash/inside",
    "ünïcode",
    "emoji-😀",
]


class TestValidateClientId:
    @pytest.mark.parametrize("client_id", VALID_IDS)
    def test_accepts(self, client_id: str) -> None:
        """Ids matching ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$ are returned unchanged."""
        assert validate_client_id(client_id) == client_id

    @pytest.mark.parametrize("client_id", INVALID_IDS)
    def test_rejects(self, client_id: str) -> None:
        """Ids outside the pattern are a ValueError."""
        with pytest.raises(ValueError, match="client_id"):
            validate_client_id(client_id)

    @pytest.mark.parametrize("client_id", [None, 1, b"abc", ["abc"], 1.5, True])
    def test_non_str_is_type_error(self, client_id: object) -> None:
        """A client id that is not a str is a TypeError."""
        with pytest.raises(TypeError, match="client_id"):
            validate_client_id(client_id)

    @pytest.mark.parametrize("client_id", ["secret token", "-SeCrEt-", "s3cr3t/" * 30])
    def test_message_does_not_echo_the_id(self, client_id: str) -> None:
        """The error message does not contain the rejected id."""
        with pytest.raises(ValueError) as info:
            validate_client_id(client_id)
        assert client_id not in str(info.value)
        assert client_id.strip() not in str(info.value)

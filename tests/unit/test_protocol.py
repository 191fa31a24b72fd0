"""wsync.protocol: frames, encode/decode, strict validation, timestamps and the fast paths."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import cattrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsync._errors import ProtocolError
from wsync.protocol import (
    CONVERTER,
    PROTOCOL_VERSION,
    TAGS,
    Connect,
    ConnectConfirm,
    Error,
    Frame,
    Message,
    Ping,
    Pong,
    Response,
    _decode_fast,
    _decode_object,
    _loads,
    decode,
    encode,
    encode_message,
    format_timestamp,
    make_converter,
    now,
    parse_timestamp,
)

SECRET = "s3cr3t-t0ken-do-not-log"
T = datetime(2026, 11, 27, 13, 40, 30, 123000, tzinfo=timezone.utc)
TS = "2026-11-27T13:40:30.123Z"
UTC = timezone.utc
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRAMES: list[Frame] = [
    Connect(client_id="c-1", timestamp=T),
    ConnectConfirm(client_id="c-1", conversation_id="conv-9", status="confirmed", timestamp=T),
    Ping(timestamp=T),
    Pong(timestamp=T),
    Message(client_id="c-1", content="hello", timestamp=T, message_id="m-1"),
    Response(message_id="m-1", content="hi", timestamp=T),
    Error(error="bad request", timestamp=T),
    Error(error="too large", timestamp=T, message_id="m-1"),
]
WIRE = [
    f'{{"type":"connect","clientId":"c-1","timestamp":"{TS}","version":"1.0"}}',
    '{"type":"connect_confirm","clientId":"c-1","conversationId":"conv-9",'
    f'"status":"confirmed","timestamp":"{TS}"}}',
    f'{{"type":"ping","timestamp":"{TS}"}}',
    f'{{"type":"pong","timestamp":"{TS}"}}',
    f'{{"type":"message","clientId":"c-1","content":"hello","timestamp":"{TS}","messageId":"m-1"}}',
    f'{{"type":"response","messageId":"m-1","content":"hi","timestamp":"{TS}"}}',
    f'{{"type":"error","error":"bad request","timestamp":"{TS}"}}',
    f'{{"type":"error","error":"too large","timestamp":"{TS}","messageId":"m-1"}}',
]

# Strategies ----------------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=20)  # lone surrogates too
ids = any_text.filter(bool)
offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ).map(lambda d: timedelta(minutes=d // timedelta(minutes=1))),
)
aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)
ms_utc = aware.map(lambda d: d.astimezone(UTC).replace(microsecond=d.microsecond // 1000 * 1000))
frames = st.one_of(
    st.builds(Connect, client_id=ids, timestamp=ms_utc, version=any_text),
    st.builds(
        ConnectConfirm, client_id=ids, conversation_id=ids, status=any_text, timestamp=ms_utc
    ),
    st.builds(Ping, timestamp=ms_utc),
    st.builds(Pong, timestamp=ms_utc),
    st.builds(Message, client_id=ids, content=any_text, timestamp=ms_utc, message_id=ids),
    st.builds(Response, message_id=ids, content=any_text, timestamp=ms_utc),
    st.builds(Error, error=any_text, timestamp=ms_utc, message_id=st.none() | ids),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(st.text(max_size=5), json_values, max_size=3)
TIMESTAMP_LIKE = [
    TS,
    "2026-11-27T13:40:30Z",
    "2026-11-27T13:40:30.123+02:00",
    "2026-11-27T13:40:30.123",
    "2026-13-27T13:40:30.123Z",
    "2026-11-27T13:40:30.12Z",
    "\u0662026-11-27T13:40:30.123Z",
    "0001-01-01T00:00:00.000+01:00",
]
field_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=5)
    | st.sampled_from(["", "m-1", *TIMESTAMP_LIKE])
    | st.lists(st.integers(), max_size=2)
)
WIRE_KEYS = [
    "clientId",
    "conversationId",
    "status",
    "timestamp",
    "version",
    "content",
    "messageId",
    "error",
    "extra",
]
tagged_dicts = st.builds(
    lambda tag, fields: {**fields, "type": tag},
    st.sampled_from(sorted(TAGS.values())),
    st.dictionaries(st.sampled_from(WIRE_KEYS), field_values),
)
hot_dicts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["response", "pong", "ping"]) | field_values,
        "messageId": field_values,
        "content": field_values,
        "timestamp": field_values,
        "extra": field_values,
    },
)
# A valid response or pong with one field changed, dropped or added: the fast path's border.
VALID_HOT = [json.loads(WIRE[3]), json.loads(WIRE[5])]
near_hot_dicts = st.builds(
    lambda base, key, value, drop: (
        {k: v for k, v in base.items() if k != key} if drop else {**base, key: value}
    ),
    st.sampled_from(VALID_HOT),
    st.sampled_from(["type", "messageId", "content", "timestamp", "extra"]),
    field_values | any_text,
    st.booleans(),
)


def _outcome(fn: Any, arg: Any) -> str:
    """Return repr of fn(arg), or the name and message of the exception it raised."""
    try:
        return repr(fn(arg))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _reference_decode(text: str) -> Frame:
    """Decode through the converter only, skipping both fast paths."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("not valid JSON") from exc
    return _decode_object(obj)


# Tests ---------------------------------------------------------------------------------------


class TestTimestamps:
    def test_now_is_utc_milliseconds(self) -> None:
        """now() is aware UTC with no sub-millisecond part."""
        t = now()
        assert t.tzinfo is UTC
        assert t.microsecond % 1000 == 0

    def test_format_javascript_form(self) -> None:
        """format_timestamp writes toISOString()'s form, with milliseconds and Z."""
        assert format_timestamp(T) == TS
        assert (
            format_timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
            == "2026-01-02T03:04:05.000Z"
        )

    def test_format_converts_and_truncates(self) -> None:
        """An offset is converted to UTC and microseconds are truncated, not rounded."""
        t = datetime(2026, 11, 27, 15, 40, 30, 123999, tzinfo=timezone(timedelta(hours=2)))
        assert format_timestamp(t) == TS

    def test_format_rejects_naive(self) -> None:
        """A naive datetime cannot be written."""
        with pytest.raises(ValueError, match="aware"):
            format_timestamp(datetime(2026, 11, 27))

    def test_format_rejects_overflow(self) -> None:
        """A time that leaves datetime's range once converted to UTC is a ValueError."""
        with pytest.raises(ValueError, match="range"):
            format_timestamp(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (TS, T),
            ("2026-11-27T13:40:30.123+00:00", T),
            ("2026-11-27T15:40:30.123+02:00", T),
            ("2026-11-27T08:10:30.123-05:30", T),
            ("2026-11-27T19:10:30.123+0530", T),
            ("2026-11-27t13:40:30.123z", T),
            ("2026-11-27T13:40:30.123456789Z", T.replace(microsecond=123456)),
            ("2026-11-27T13:40:30.1Z", T.replace(microsecond=100000)),
            ("2026-11-27T13:40:30,123Z", T),
            ("2026-11-27T13:40Z", T.replace(second=0, microsecond=0)),
            ("2026-11-27T14:40:30.123+01", T),
        ],
    )
    def test_parse_forms(self, text: str, expected: datetime) -> None:
        """parse_timestamp reads each ISO 8601 form with an offset and returns UTC."""
        parsed = parse_timestamp(text)
        assert parsed == expected
        assert parsed.tzinfo is UTC

    @pytest.mark.parametrize(
        "text",
        [
            "2026-11-27T13:40:30.123",
            "2026-11-27",
            "",
            "yesterday",
            "2026-13-27T13:40:30Z",
            "2026-02-30T13:40:30Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T13:40:30+24:00",
            "2026-11-27T13:40:30+01:60",
            "\u0662\u0660\u0662\u0666-11-27T13:40:30Z",
            "\u0662\u0660\u0662\u0666-11-27T13:40:30.123Z",
            "0001-01-01T00:00:00+01:00",
            " 2026-11-27T13:40:30Z",
        ],
    )
    def test_parse_rejects(self, text: str) -> None:
        """Naive, malformed, impossible or out-of-range timestamps raise ValueError."""
        with pytest.raises(ValueError):
            parse_timestamp(text)

    @SETTINGS
    @given(aware)
    def test_format_parse_round_trip(self, t: datetime) -> None:
        """Parsing what format_timestamp wrote gives the same instant, truncated to ms."""
        assert parse_timestamp(format_timestamp(t)) == t.replace(
            microsecond=t.microsecond // 1000 * 1000
        )


class TestFrames:
    def test_tags_cover_every_frame(self) -> None:
        """TAGS names every member of Frame with the protocol's type strings."""
        assert set(TAGS) == set(Frame.__args__)
        assert sorted(TAGS.values()) == sorted(
            ["connect", "connect_confirm", "ping", "pong", "message", "response", "error"]
        )

    def test_connect_defaults_to_protocol_version(self) -> None:
        """A Connect carries version "1.0" unless told otherwise."""
        assert Connect(client_id="c", timestamp=T).version == PROTOCOL_VERSION == "1.0"

    def test_frozen(self) -> None:
        """Frames cannot be changed after construction; attrs.evolve makes a new one."""
        r = Response(message_id="m", content="x", timestamp=T)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            r.content = "y"  # type: ignore[misc]
        assert attrs.evolve(r, content="y").content == "y"

    @pytest.mark.parametrize("bad", ["", 3])
    def test_ids_validated(self, bad: Any) -> None:
        """An empty or non-str id is refused at construction."""
        with pytest.raises((TypeError, ValueError), match="message_id"):
            Response(message_id=bad, content="x", timestamp=T)

    def test_naive_timestamp_refused(self) -> None:
        """A naive timestamp is refused at construction."""
        with pytest.raises(ValueError, match="timestamp"):
            Ping(timestamp=datetime(2026, 11, 27))


class TestEncode:
    @pytest.mark.parametrize(("frame", "wire"), list(zip(FRAMES, WIRE, strict=True)))
    def test_exact_wire_form(self, frame: Frame, wire: str) -> None:
        """Each frame is compact JSON: "type" first, camelCase keys, ms 'Z' timestamps."""
        assert encode(frame) == wire

    def test_ascii_only_and_lone_surrogate(self) -> None:
        """Output is ASCII, so a lone surrogate is escaped and survives the round trip."""
        frame = Response(message_id="m", content="caf\u00e9 \ud800 \U0001f600", timestamp=T)
        text = encode(frame)
        assert text.isascii()
        assert "\\ud800" in text
        assert decode(text) == frame

    def test_not_a_frame(self) -> None:
        """encode refuses anything that is not a frame."""
        with pytest.raises(TypeError, match="frame"):
            encode({"type": "ping"})  # type: ignore[arg-type]


class TestEncodeMessage:
    def test_matches_encode(self) -> None:
        """encode_message writes exactly what encode(Message(...)) writes."""
        assert (
            encode_message(client_id="c-1", message_id="m-1", content="hello", timestamp=T)
            == WIRE[4]
        )

    @SETTINGS
    @given(client_id=ids, message_id=ids, content=any_text, timestamp=aware)
    def test_matches_encode_property(
        self, client_id: str, message_id: str, content: str, timestamp: datetime
    ) -> None:
        """For any valid fields the fast encoder's text equals the converter's."""
        kwargs = {"client_id": client_id, "message_id": message_id, "content": content}
        expected = _outcome(lambda t: encode(Message(**kwargs, timestamp=t)), timestamp)
        assert _outcome(lambda t: encode_message(**kwargs, timestamp=t), timestamp) == expected

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"client_id": ""}, ValueError),
            ({"message_id": ""}, ValueError),
            ({"message_id": 7}, TypeError),
            ({"content": None}, TypeError),
            ({"timestamp": datetime(2026, 1, 1)}, ValueError),
            ({"timestamp": "2026-01-01T00:00:00Z"}, TypeError),
        ],
    )
    def test_rejects_what_message_rejects(
        self, kwargs: dict[str, Any], error: type[Exception]
    ) -> None:
        """Invalid fields raise the same exception class Message(...) or encode would."""
        fields: dict[str, Any] = {
            "client_id": "c",
            "message_id": "m",
            "content": "x",
            "timestamp": T,
        }
        with pytest.raises(error):
            encode_message(**{**fields, **kwargs})


class TestRoundTrip:
    @pytest.mark.parametrize("frame", FRAMES)
    def test_every_frame_type(self, frame: Frame) -> None:
        """encode then decode gives back an equal frame for every frame type."""
        assert decode(encode(frame)) == frame

    @SETTINGS
    @given(frames)
    def test_any_frame(self, frame: Frame) -> None:
        """Any frame with ms UTC timestamps survives encode then decode unchanged."""
        assert decode(encode(frame)) == frame


class TestDecodeAccepts:
    def test_javascript_timestamp(self) -> None:
        """A toISOString() timestamp decodes to aware UTC."""
        frame = decode(WIRE[5])
        assert isinstance(frame, Response)
        assert frame.timestamp == T
        assert frame.timestamp.tzinfo is UTC

    def test_offset_timestamp_converted(self) -> None:
        """A '+02:00' timestamp is converted to UTC."""
        frame = decode('{"type":"pong","timestamp":"2026-11-27T15:40:30.123+02:00"}')
        assert frame == Pong(timestamp=T)
        assert frame.timestamp.tzinfo is UTC

    def test_unknown_fields_ignored(self) -> None:
        """Extra fields, at any place, are ignored."""
        text = (
            f'{{"v":2,"type":"response","messageId":"m-1","content":"hi","timestamp":"{TS}","x":1}}'
        )
        assert decode(text) == FRAMES[5]

    def test_null_optional_message_id(self) -> None:
        """An error frame with "messageId": null is about no message."""
        text = f'{{"type":"error","error":"e","timestamp":"{TS}","messageId":null}}'
        assert decode(text) == Error(error="e", timestamp=T)

    def test_connect_without_version(self) -> None:
        """A connect frame without "version" gets the default version."""
        assert decode(f'{{"type":"connect","clientId":"c-1","timestamp":"{TS}"}}') == FRAMES[0]

    def test_surrounding_whitespace(self) -> None:
        """JSON whitespace around the object is allowed, as json.loads allows it."""
        assert decode(f"  \n{WIRE[3]}\t ") == FRAMES[3]


def _resp(**fields: Any) -> str:
    base: dict[str, Any] = {
        "type": "response",
        "messageId": "m-1",
        "content": SECRET,
        "timestamp": TS,
    }
    return json.dumps({**base, **fields})


MALFORMED = [
    pytest.param(f"{{not json {SECRET}", "not valid JSON", id="not-json"),
    pytest.param(f'["{SECRET}"]', "JSON object", id="array"),
    pytest.param("42", "JSON object", id="number"),
    pytest.param("null", "JSON object", id="null"),
    pytest.param(f'"{SECRET}"', "JSON object", id="string"),
    pytest.param(json.dumps({"content": SECRET}), "$.type", id="missing-type"),
    pytest.param(json.dumps({"type": SECRET}), "$.type", id="unknown-type"),
    pytest.param(json.dumps({"type": 3, "content": SECRET}), "$.type", id="int-type"),
    pytest.param(json.dumps({"type": ["response"], "content": SECRET}), "$.type", id="list-type"),
    pytest.param(
        json.dumps({"type": "response", "content": SECRET, "timestamp": TS}),
        "$.messageId",
        id="missing-field",
    ),
    pytest.param(_resp(messageId=3), "expected string, got number @ $.messageId", id="int-for-str"),
    pytest.param(_resp(messageId=True), "$.messageId", id="bool-for-str"),
    pytest.param(_resp(content=None), "expected string, got null @ $.content", id="null-for-str"),
    pytest.param(_resp(content=[SECRET]), "$.content", id="list-for-str"),
    pytest.param(_resp(messageId=""), "must not be empty @ $.messageId", id="empty-id"),
    pytest.param(
        _resp(timestamp="2026-11-27T13:40:30.123"), "no UTC offset @ $.timestamp", id="naive"
    ),
    pytest.param(_resp(timestamp=SECRET), "$.timestamp", id="bad-timestamp"),
    pytest.param(_resp(timestamp=1764250830123), "$.timestamp", id="epoch-timestamp"),
    pytest.param(_resp(timestamp="2026-02-30T00:00:00Z"), "$.timestamp", id="impossible-date"),
    pytest.param(
        json.dumps({"type": "connect", "clientId": "", "timestamp": TS, "version": 1, "x": SECRET}),
        "$.clientId",
        id="connect-empty-client-id",
    ),
    pytest.param(
        json.dumps({"type": "connect_confirm", "clientId": "c", "status": SECRET, "timestamp": TS}),
        "$.conversationId",
        id="confirm-missing-conversation",
    ),
    pytest.param(
        json.dumps({"type": "error", "error": SECRET, "timestamp": TS, "messageId": 5}),
        "$.messageId",
        id="error-int-message-id",
    ),
    pytest.param(
        json.dumps({"type": "message", "clientId": "c", "content": SECRET, "timestamp": TS}),
        "$.messageId",
        id="message-missing-id",
    ),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested", id="too-deep"),
    pytest.param('{"type":"ping","timestamp":' + "9" * 5000 + "}", "not valid JSON", id="huge-int"),
]


class TestDecodeRejects:
    @pytest.mark.parametrize(("text", "names"), MALFORMED)
    def test_malformed(self, text: str, names: str) -> None:
        """Each malformed frame raises ProtocolError naming the problem, never the content."""
        with pytest.raises(ProtocolError) as info:
            decode(text)
        assert names in str(info.value)
        assert SECRET not in str(info.value)

    def test_every_problem_listed(self) -> None:
        """All bad fields of one frame are named, each with its wire path."""
        with pytest.raises(ProtocolError) as info:
            decode(json.dumps({"type": "connect_confirm", "clientId": 1, "timestamp": "x"}))
        message = str(info.value)
        for path in ("$.clientId", "$.conversationId", "$.status", "$.timestamp"):
            assert path in message

    @pytest.mark.parametrize("value", [b'{"type":"ping"}', bytearray(b"{}"), None, 3])
    def test_not_text(self, value: Any) -> None:
        """A binary frame (or anything that is not a str) is a ProtocolError."""
        with pytest.raises(ProtocolError, match="text frame"):
            decode(value)

    def test_cause_chained(self) -> None:
        """The underlying JSON or validation error is chained as __cause__."""
        with pytest.raises(ProtocolError) as info:
            decode("{")
        assert isinstance(info.value.__cause__, json.JSONDecodeError)
        with pytest.raises(ProtocolError) as info:
            decode(_resp(content=1))
        assert isinstance(info.value.__cause__, cattrs.BaseValidationError)


class TestDecodeNeverCrashes:
    @SETTINGS
    @given(st.text())
    def test_any_text(self, text: str) -> None:
        """Arbitrary text decodes to a frame or raises ProtocolError, nothing else."""
        try:
            frame = decode(text)
        except ProtocolError:
            return
        assert isinstance(frame, tuple(TAGS))

    @SETTINGS
    @given(json_values | tagged_dicts)
    def test_any_json(self, value: Any) -> None:
        """Any JSON, including frames with random field values, gives a frame or ProtocolError."""
        try:
            assert isinstance(decode(json.dumps(value)), tuple(TAGS))
        except ProtocolError as exc:
            assert SECRET not in str(exc)


class TestFastPaths:
    def test_fast_path_taken(self) -> None:
        """A plain response or pong is decoded without the converter."""
        assert _decode_fast(json.loads(WIRE[5])) == FRAMES[5]
        assert _decode_fast(json.loads(WIRE[3])) == FRAMES[3]

    @SETTINGS
    @given(near_hot_dicts | hot_dicts | tagged_dicts)
    def test_decode_matches_converter(self, value: dict[str, Any]) -> None:
        """decode gives the converter's exact result or error for response-like input."""
        text = json.dumps(value)
        assert _outcome(decode, text) == _outcome(_reference_decode, text)

    @SETTINGS
    @given(
        st.one_of(
            st.text(),
            json_values.map(json.dumps),
            st.builds("{}{}".format, st.text(), json_values.map(json.dumps)),
            st.builds("{}{}".format, json_objects.map(json.dumps), st.text(max_size=3)),
        )
    )
    def test_loads_matches_json_loads(self, text: str) -> None:
        """_loads returns what json.loads returns, and raises where it raises."""
        assert _outcome(_loads, text) == _outcome(json.loads, text)

    @pytest.mark.parametrize("text", ['{"a":1} x', '{"a":1}{}', '{"a":1}  ', '{"a":', "{\ufeff}"])
    def test_loads_trailing_text(self, text: str) -> None:
        """Text after the object, or a broken object, gets json.loads' own outcome."""
        assert _outcome(_loads, text) == _outcome(json.loads, text)


class TestConverter:
    def test_make_converter_builds_a_new_one(self) -> None:
        """make_converter returns a fresh converter equivalent to CONVERTER."""
        converter = make_converter()
        assert converter is not CONVERTER
        assert converter.unstructure(FRAMES[5], unstructure_as=Frame) == CONVERTER.unstructure(
            FRAMES[5], unstructure_as=Frame
        )

    def test_global_converter_untouched(self) -> None:
        """cattrs' global converter keeps its own (coercing) behaviour."""
        assert cattrs.structure(3, str) == "3"

    @pytest.mark.parametrize(
        ("typ", "good", "bad"),
        [(int, 3, True), (float, 1, "1.0"), (bool, False, "no"), (str, "", 0)],
    )
    def test_strict_scalars(self, typ: type, good: Any, bad: Any) -> None:
        """The strict scalar hooks accept their JSON type and refuse coercion."""
        assert CONVERTER.structure(good, typ) == good
        with pytest.raises(TypeError):
            CONVERTER.structure(bad, typ)


# Added with the converter built on first use (issue 15) ---------------------------------------

# A valid ping or connect_confirm with one field changed, dropped or added.
VALID_CONTROL = [json.loads(WIRE[1]), json.loads(WIRE[2])]
near_control_dicts = st.builds(
    lambda base, key, value, drop: (
        {k: v for k, v in base.items() if k != key} if drop else {**base, key: value}
    ),
    st.sampled_from(VALID_CONTROL),
    st.sampled_from(["type", "clientId", "conversationId", "status", "timestamp", "extra"]),
    field_values | any_text,
    st.booleans(),
)
control_frames = st.one_of(
    st.builds(Connect, client_id=ids, timestamp=aware, version=any_text),
    st.builds(Ping, timestamp=aware),
    st.builds(Pong, timestamp=aware),
)


def _reference_encode(frame: Frame) -> str:
    """Encode through the converter only, as encode() did for every frame."""
    fields = CONVERTER.unstructure(frame, unstructure_as=Frame)
    return json.dumps({"type": TAGS[type(frame)], **fields}, separators=(",", ":"))


class TestControlFastPaths:
    def test_fast_path_taken(self) -> None:
        """A plain ping or connect_confirm is decoded without the converter."""
        assert _decode_fast(json.loads(WIRE[1])) == FRAMES[1]
        assert _decode_fast(json.loads(WIRE[2])) == FRAMES[2]

    @SETTINGS
    @given(near_control_dicts)
    def test_decode_matches_converter(self, value: dict[str, Any]) -> None:
        """decode gives the converter's exact result or error for ping/connect_confirm-likes."""
        text = json.dumps(value)
        assert _outcome(decode, text) == _outcome(_reference_decode, text)

    @SETTINGS
    @given(control_frames)
    def test_encode_matches_converter(self, frame: Frame) -> None:
        """encode writes connect, ping and pong exactly as the converter does."""
        assert _outcome(encode, frame) == _outcome(_reference_encode, frame)

    def test_connect_with_a_version_that_is_no_str(self) -> None:
        """A Connect whose version is not a str still gets the converter's text."""
        frame = Connect(client_id="c-1", timestamp=T, version=1)  # type: ignore[arg-type]
        assert encode(frame) == _reference_encode(frame)

"""The wsync wire format: frame classes, THE converter, ``encode``/``decode`` and timestamps.

This module's one job is turning frames into JSON text and back (docs/protocol.rst specifies
them). It is pure: no I/O, no threads, no logging, no clock other than ``now()``. Every other
module uses it through these names and never imports cattrs itself.

- Frames are frozen attrs classes with snake_case fields; camelCase exists only on the wire.
- ``decode`` is the only way in: anything that is not a valid frame raises ``ProtocolError``,
  whose message names the field path and the expected type, never a value from the frame.
- Timestamps are written like JavaScript's ``Date.toISOString()`` (UTC, milliseconds, ``Z``)
  and read from any ISO 8601 form with an offset, the same way on every Python version.
- The converter path is the reference. ``decode`` has a hand-written fast path for the
  frames a client receives (``response`` on every message; ``pong``, ``ping`` and
  ``connect_confirm`` on every connection and heartbeat) that accepts a subset of it, with the
  same results; ``encode`` writes ``connect``, ``ping`` and ``pong`` itself, and
  ``encode_message_now`` every message, with the converter's exact text.
- The converter (and cattrs itself, some 15-20 ms) is built on first use, not at import:
  ``import wsync`` does not pay for it, and a client running normally never does (only an
  ``error`` frame, a malformed one or an unusual form takes the converter's path).
  ``CONVERTER`` is still a module attribute (a module ``__getattr__`` builds it).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs

from wsync._errors import ProtocolError

if TYPE_CHECKING:
    import cattrs

__all__ = [
    "CONVERTER",
    "PROTOCOL_VERSION",
    "TAGS",
    "Connect",
    "ConnectConfirm",
    "Error",
    "Frame",
    "Message",
    "Ping",
    "Pong",
    "Response",
    "decode",
    "encode",
    "encode_message",
    "encode_message_now",
    "format_timestamp",
    "make_converter",
    "now",
    "now_text",
    "parse_timestamp",
]

PROTOCOL_VERSION: Final = "1.0"

# --- Timestamps ---


class _BadValue(ValueError):
    """A value-free description of a bad value, safe to show in a ``ProtocolError``."""


class _WrongType(TypeError):
    """A value-free description of a wrong JSON type, safe to show in a ``ProtocolError``."""


# ASCII only: without re.ASCII, \d matches other scripts' digits, which int() would accept.
_TIMESTAMP: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?"
    r"(?:[Zz]|([+-])(\d\d)(?::?(\d\d))?)",
    re.ASCII,
)
# What toISOString() writes; the only form decode's fast path reads itself.
_JS_TIMESTAMP: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", re.ASCII)


def now() -> datetime:
    """Return the current time as an aware UTC datetime truncated to milliseconds.

    Truncating makes a frame built from ``now()`` survive ``encode``/``decode`` unchanged.
    """
    dt = datetime.now(timezone.utc)
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def format_timestamp(dt: datetime) -> str:
    """Write ``dt`` the way JavaScript's ``toISOString()`` does: ``2026-11-27T13:40:30.123Z``.

    The time is converted to UTC and truncated (not rounded) to milliseconds.

    Raises:
        TypeError: ``dt`` is not a ``datetime``.
        ValueError: ``dt`` is naive, or out of range once converted to UTC.
    """
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is not timezone.utc:
        if dt.utcoffset() is None:
            raise ValueError("timestamp must be timezone-aware")
        try:
            dt = dt.astimezone(timezone.utc)
        except OverflowError as exc:
            raise ValueError("timestamp out of range once converted to UTC") from exc
    # UTC isoformat always ends in '+00:00'.
    return dt.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_timestamp(text: str) -> datetime:
    """Read an ISO 8601 timestamp with an offset and return it as an aware UTC datetime.

    Accepts ``YYYY-MM-DDTHH:MM[:SS[.fraction]]`` (``T``, ``t`` or a space between date and
    time; any number of fraction digits, beyond microseconds truncated) followed by ``Z``,
    ``z``, ``+hh``, ``+hhmm`` or ``+hh:mm``. Behaves the same on Python 3.10 and later.

    Raises:
        ValueError: naive, malformed, or not a real date and time. The message never
            repeats ``text``.
    """
    if len(text) == 24 and _JS_TIMESTAMP.fullmatch(text):  # the common case, about 4x faster
        try:
            return datetime.fromisoformat(text[:23] + "+00:00")
        except ValueError as exc:
            raise _BadValue("invalid date or time") from exc
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        if _TIMESTAMP.fullmatch(text + "Z") is not None:
            raise _BadValue("timestamp has no UTC offset")
        raise _BadValue("expected an ISO 8601 timestamp")
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    try:
        if int(off_m or 0) > 59:
            raise ValueError("offset minutes out of range")
        offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
        tz = timezone(-offset if sign == "-" else offset)  # |offset| < 24 h, or ValueError
        micro = int((fraction or "")[:6].ljust(6, "0"))
        y, mo, d, h, mi, sec = (int(part or 0) for part in (year, month, day, hour, minute, second))
        return datetime(y, mo, d, h, mi, sec, micro, tzinfo=tz).astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise _BadValue("invalid date or time") from exc


# --- Frames ---


def _id(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    """Validate an id: a non-empty ``str``."""
    if type(value) is not str:
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


def _aware(instance: object, attribute: attrs.Attribute[datetime], value: datetime) -> None:
    """Validate a timestamp: an aware ``datetime``."""
    if not isinstance(value, datetime):
        raise TypeError(f"{attribute.name} must be a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        raise ValueError(f"{attribute.name} must be timezone-aware")


@attrs.frozen(kw_only=True)
class Connect:
    """``connect``: the client's first frame on every connection."""

    client_id: str = attrs.field(validator=_id)
    timestamp: datetime = attrs.field(validator=_aware)
    version: str = PROTOCOL_VERSION


@attrs.frozen(kw_only=True)
class ConnectConfirm:
    """``connect_confirm``: the server accepts the handshake and names the conversation."""

    client_id: str = attrs.field(validator=_id)
    conversation_id: str = attrs.field(validator=_id)
    status: str
    timestamp: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class Ping:
    """``ping``: a heartbeat; either side may send it and the other answers ``pong``."""

    timestamp: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class Pong:
    """``pong``: the answer to a ``ping``."""

    timestamp: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class Message:
    """``message``: a client's message; ``message_id`` correlates the response."""

    client_id: str = attrs.field(validator=_id)
    content: str
    timestamp: datetime = attrs.field(validator=_aware)
    message_id: str = attrs.field(validator=_id)


@attrs.frozen(kw_only=True)
class Response:
    """``response``: the server's answer to the message whose id is ``message_id``.

    Attributes:
        message_id: the id of the message this answers.
        content: the response text.
        timestamp: when the server sent it, timezone-aware UTC.
    """

    message_id: str = attrs.field(validator=_id)
    content: str
    timestamp: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class Error:
    """``error``: the server reports a problem, about one message if ``message_id`` is set."""

    error: str
    timestamp: datetime = attrs.field(validator=_aware)
    message_id: str | None = attrs.field(default=None, validator=attrs.validators.optional(_id))


Frame: TypeAlias = Connect | ConnectConfirm | Ping | Pong | Message | Response | Error

TAGS: Final[dict[type, str]] = {
    Connect: "connect",
    ConnectConfirm: "connect_confirm",
    Ping: "ping",
    Pong: "pong",
    Message: "message",
    Response: "response",
    Error: "error",
}
_CLASSES: Final[dict[str, type]] = {tag: cls for cls, tag in TAGS.items()}

# --- The converter ---

_JSON_TYPE_NAMES: Final = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _json_type(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _structure_str(value: object, _: object) -> str:
    if type(value) is not str:
        raise _WrongType(f"expected string, got {_json_type(value)}")
    return value


def _strict(name: str, *types: type) -> Callable[[object, object], Any]:
    """Return a hook accepting exactly ``types`` (so True is no int), made ``types[0]``."""

    def structure(value: object, _: object) -> Any:
        if type(value) not in types:
            raise _WrongType(f"expected {name}, got {_json_type(value)}")
        return types[0](value)

    return structure


def _structure_timestamp(value: object, _: object) -> datetime:
    return parse_timestamp(_structure_str(value, None))


def _structure_id(value: object, _: object) -> str:
    text = _structure_str(value, None)
    if not text:
        raise _BadValue("must not be empty")
    return text


def _structure_optional_id(value: object, _: object) -> str | None:
    return None if value is None else _structure_id(value, None)


def _camel(name: str) -> str:
    """Return the wire name of a field: ``message_id`` -> ``messageId``."""
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def make_converter() -> cattrs.Converter:
    """Build the converter for frames: strict types, camelCase keys, a ``type`` tag.

    Returns:
        A new converter. ``CONVERTER`` holds the one wsync uses; cattrs' global converter is
        never touched.
    """
    import cattrs
    from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
    from cattrs.strategies import configure_tagged_union

    converter = cattrs.Converter()  # detailed_validation=True: errors carry field paths
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _strict("integer", int))
    converter.register_structure_hook(float, _strict("number", float, int))
    converter.register_structure_hook(bool, _strict("boolean", bool))
    converter.register_structure_hook(datetime, _structure_timestamp)
    converter.register_unstructure_hook(datetime, format_timestamp)

    def structure_factory(cls: type) -> Callable[[Any, Any], Any]:
        overrides: dict[str, Any] = {}
        for field in attrs.fields(attrs.resolve_types(cls)):
            hook = None  # ids must be non-empty (see _id); checked here so errors name the field
            if field.name.endswith("_id"):
                hook = _structure_optional_id if field.default is None else _structure_id
            overrides[field.name] = override(rename=_camel(field.name), struct_hook=hook)
        return make_dict_structure_fn(cls, converter, **overrides)

    def unstructure_factory(cls: type) -> Callable[[Any], Any]:
        overrides: dict[str, Any] = {
            # An absent optional field is left off the wire rather than written as null.
            field.name: override(rename=_camel(field.name), omit_if_default=field.default is None)
            for field in attrs.fields(attrs.resolve_types(cls))
        }
        return make_dict_unstructure_fn(cls, converter, **overrides)

    converter.register_structure_hook_factory(attrs.has, structure_factory)
    converter.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    configure_tagged_union(Frame, converter, tag_generator=TAGS.__getitem__, tag_name="type")
    return converter


_converter: cattrs.Converter | None = None  # THE converter, once _the_converter() built it
_converter_lock: Final = threading.Lock()


def _the_converter() -> cattrs.Converter:
    """Return ``CONVERTER``, building it (and importing cattrs) on the first call."""
    global _converter
    converter = _converter
    if converter is None:
        with _converter_lock:
            converter = _converter
            if converter is None:
                converter = _converter = make_converter()
    return converter


if TYPE_CHECKING:
    #: The converter wsync uses for every frame (built on first access).
    CONVERTER: cattrs.Converter
else:

    def __getattr__(name: str) -> Any:
        """Build ``CONVERTER`` on first access (PEP 562); mypy sees the declaration above."""
        if name == "CONVERTER":
            return _the_converter()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        """The module's names, ``CONVERTER`` included before it is built."""
        return sorted({*globals(), "CONVERTER"})


# --- Encoding ---

_escape: Final = json.encoder.encode_basestring_ascii  # str -> quoted ASCII JSON string


def encode(frame: Frame) -> str:
    """Return ``frame`` as compact JSON text: camelCase keys, ``type`` first.

    The text is pure ASCII (other characters are ``\\u`` escapes), so a lone surrogate in
    ``content`` is written as ``\\ud800`` and decodes back unchanged instead of failing
    to encode as UTF-8 on the socket.

    Raises:
        TypeError: ``frame`` is not one of the frame classes.
        ValueError: a timestamp cannot be written (see ``format_timestamp``).
    """
    tag = TAGS.get(type(frame))
    if tag is None:
        raise TypeError(f"expected a frame, got {type(frame).__name__}")
    # What every connection and heartbeat writes, in the converter's exact text without it.
    if type(frame) is Ping or type(frame) is Pong:
        return f'{{"type":"{tag}","timestamp":"{format_timestamp(frame.timestamp)}"}}'
    if type(frame) is Connect and type(frame.version) is str:
        return (
            f'{{"type":"connect","clientId":{_escape(frame.client_id)},'
            f'"timestamp":"{format_timestamp(frame.timestamp)}",'
            f'"version":{_escape(frame.version)}}}'
        )
    fields = _the_converter().unstructure(frame, unstructure_as=Frame)
    return json.dumps({"type": tag, **fields}, separators=(",", ":"))


_now_cache: tuple[int, str] = (-1, "")


def now_text() -> str:
    """The current UTC time as ``format_timestamp(now())`` writes it, cached per millisecond.

    The hot path of ``send()``: many messages share a millisecond, and formatting a datetime
    costs more than the rest of the frame.
    """
    global _now_cache
    ms = time.time_ns() // 1_000_000
    cached_ms, text = _now_cache
    if ms != cached_ms:
        seconds, millis = divmod(ms, 1000)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
        _now_cache = (ms, text)  # one tuple: a reader on another thread sees old or new, whole
    return text


def encode_message_now(*, client_id: str, message_id: str, content: str) -> str:
    """``encode_message`` stamped with the current time; ids must already be valid strs."""
    return _message_text(client_id, content, now_text(), message_id)


def _message_text(client_id: str, content: str, stamp: str, message_id: str) -> str:
    """The ``message`` frame, keys in ``encode()``'s order, built without the converter."""
    return (
        f'{{"type":"message","clientId":{_escape(client_id)},"content":{_escape(content)},'
        f'"timestamp":"{stamp}","messageId":{_escape(message_id)}}}'
    )


def encode_message(*, client_id: str, message_id: str, content: str, timestamp: datetime) -> str:
    """Return the same text as ``encode(Message(...))`` with these fields, about 3x faster.

    Raises:
        TypeError: an id or ``content`` is not a ``str``.
        ValueError: an id is empty, or ``timestamp`` is naive.
    """
    if not client_id or not message_id or type(client_id) is not str or type(message_id) is not str:
        # Bad ids: raise exactly what Message(...) raises. Good ones skip building a Message.
        Message(client_id=client_id, message_id=message_id, content=content, timestamp=timestamp)
    return _message_text(client_id, content, format_timestamp(timestamp), message_id)


# --- Decoding ---


def decode(text: str) -> Frame:
    """Parse one text frame and return the frame it holds.

    Args:
        text: the payload of a WebSocket text frame.

    Returns:
        A frame whose timestamps are aware UTC datetimes. Unknown extra fields are ignored.

    Raises:
        ProtocolError: not a ``str`` (a binary frame), not JSON, not an object, no known
            string ``type``, or a required field missing, mistyped or invalid. The message
            names the field path and what was expected, never a value from the frame.
    """
    if not isinstance(text, str):
        raise ProtocolError(f"expected a text frame (str), got {type(text).__name__}")
    try:
        obj = _loads(text)
    except RecursionError as exc:
        raise ProtocolError("JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise ProtocolError("not valid JSON") from exc
    if type(obj) is dict:
        frame = _decode_fast(obj)
        if frame is not None:
            return frame
    return _decode_object(obj)


# The default decoder's scanner (the one json.loads uses); typeshed does not declare it.
_scan_once: Final[Callable[[str, int], tuple[Any, int]]] = vars(json.JSONDecoder())["scan_once"]


def _loads(text: str) -> Any:
    """Return ``json.loads(text)``, about 1 us sooner for the usual ``{...}`` text.

    For text that starts with ``{`` and scans to its very end, this is what ``json.loads``
    does; anything else, including every error, is left to ``json.loads`` itself.
    """
    if text[:1] == "{":
        try:
            obj, end = _scan_once(text, 0)
        except (StopIteration, ValueError, RecursionError):
            pass
        else:
            if end == len(text):
                return obj
    return json.loads(text)


def _decode_fast(obj: dict[str, Any]) -> Frame | None:
    """Return the ``response``, ``pong``, ``ping`` or ``connect_confirm`` frame in ``obj``, or
    None to take the slow path.

    Accepts only what ``_decode_object`` accepts, and returns what it would return; anything
    unusual, including every error, goes to the converter, which also words the message.
    """
    global _last_stamp
    tag = obj.get("type")
    stamp = obj.get("timestamp")
    if type(stamp) is not str:
        return None
    try:
        # Responses arrive in bursts stamped with the same millisecond: parse each text once.
        last_text, when = _last_stamp
        if stamp != last_text:
            when = parse_timestamp(stamp)
            _last_stamp = (stamp, when)  # one tuple: another thread sees old or new, whole
        if tag == "response":
            message_id = obj.get("messageId")
            content = obj.get("content")
            if type(message_id) is str and message_id and type(content) is str:
                # The checks above are exactly Response's validators (non-empty str id, str
                # content, aware timestamp): build it without running them a second time.
                frame = _new_response(Response)
                _set(frame, "message_id", message_id)
                _set(frame, "content", content)
                _set(frame, "timestamp", when)
                return frame
        elif tag == "pong":
            return Pong(timestamp=when)
        elif tag == "ping":
            return Ping(timestamp=when)
        elif tag == "connect_confirm":
            client_id = obj.get("clientId")
            conversation_id = obj.get("conversationId")
            status = obj.get("status")
            if (
                type(client_id) is str
                and client_id
                and type(conversation_id) is str
                and conversation_id
                and type(status) is str
            ):
                return ConnectConfirm(
                    client_id=client_id,
                    conversation_id=conversation_id,
                    status=status,
                    timestamp=when,
                )
    except ValueError:
        pass
    return None


# The last timestamp text parsed and its value; None matches no text.
_last_stamp: tuple[str | None, datetime] = (None, datetime(1970, 1, 1, tzinfo=timezone.utc))
_new_response: Final = object.__new__
_set: Final = object.__setattr__


def _decode_object(obj: object) -> Frame:
    """Structure a parsed JSON value through ``CONVERTER``: the reference path of ``decode``."""
    if type(obj) is not dict:
        raise ProtocolError(f"expected a JSON object, got {_json_type(obj)}")
    if "type" not in obj:
        raise ProtocolError("malformed frame: required field missing @ $.type")
    tag = obj["type"]
    if type(tag) is not str:
        raise ProtocolError(f"malformed frame: expected string, got {_json_type(tag)} @ $.type")
    if tag not in _CLASSES:
        raise ProtocolError("malformed frame: unknown frame type @ $.type")
    converter = _the_converter()
    import cattrs  # imported by _the_converter()

    try:
        # mypy: structure() wants a type[T]; a Union alias is a valid target at runtime.
        frame: Frame = converter.structure(obj, Frame)  # type: ignore[arg-type]
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        # transform_error names attributes (``@ $.message_id``); the wire names are camelCase.
        details = [
            _ATTRIBUTE_PATH.sub(lambda m: "@ $." + _camel(m[1]), line)
            for line in cattrs.transform_error(exc, format_exception=_describe)
        ]
        raise ProtocolError(f"malformed {tag} frame: " + "; ".join(details)) from exc
    return frame


_ATTRIBUTE_PATH: Final = re.compile(r"@ \$\.([a-z][a-z0-9_]*)$")


def _describe(exc: BaseException, _type: object) -> str:
    """Describe one structuring error without any value from the frame."""
    if isinstance(exc, (_BadValue, _WrongType)):
        return str(exc)  # written by this module, value-free
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError):
        return "invalid type"
    if isinstance(exc, ValueError):
        return "invalid value"
    return f"unexpected {type(exc).__name__}"

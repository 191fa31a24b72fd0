"""RFC 6455 frames, sans I/O: parse, validate and reassemble what a server sends; encode ours.

Its one job is the WebSocket wire format as a client must speak it, with bytes in and events
out: :class:`Parser` is fed the bytes read from the socket and hands back whole messages (``str``
for text, ``bytes`` for binary) and control events (:class:`Ping`, :class:`Pong`,
:class:`Close`, :class:`Dropped`), or raises :class:`ProtocolViolation` carrying the close code
(1002, or 1007 for invalid UTF-8) the connection must be failed with. The ``encode_*`` functions
build masked client frames. What it must not do: touch a socket, a lock, a thread or a clock,
know the HTTP upgrade, or know anything of the wsync protocol; the connection layer
(``wsync._connection``) does the I/O around it, in the manner of websockets' ``frames.py``.

Why wsync frames messages itself rather than through websocket-client (measured, and still true
of websocket-client 1.9): its ``recv()`` spent 38 of 47 us per small frame in its pure-Python
UTF-8 validator, where ``bytes.decode`` here costs well under a microsecond; it holds a whole
frame before checking its size, where :class:`Parser` reads an oversize frame past without
buffering it, so ``max_frame_size`` is a real bound on memory; and it answers pings with a
blocking write from the reading thread, where here a ping is an event and the connection owes
only the latest pong (RFC 6455 section 5.5.3), never blocking its reader. The HTTP upgrade is not
websocket-client's either any more (see ``wsync._handshake``): its process-wide cookie jar,
unbounded header lines and errors that quote the response are what a client must not have.

Memory is bounded by one message: fragments are appended to one ``bytearray`` (never a list of
pieces), empty frames cost nothing, an oversize message is read past, and the buffer of unparsed
bytes never holds more than the caller fed since the last event.

Text is validated as RFC 6455 section 8.1 asks: a fragmented text message is checked fragment
by fragment with an incremental UTF-8 decoder, so invalid data fails the connection as soon as
it arrives, not when the message ends.
"""

from __future__ import annotations

import codecs
import os
import struct
from collections.abc import Callable, Sequence
from typing import Final, Literal

__all__ = [
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "Close",
    "Dropped",
    "Event",
    "Parser",
    "Ping",
    "Pong",
    "ProtocolViolation",
    "close_code_allowed",
    "encode_close",
    "encode_frame",
    "encode_text",
    "encode_texts",
]

# RFC 6455 opcodes.
OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005
CLOSE_INVALID_DATA: Final = 1007

#: RFC 6455 section 5.5: control frames carry at most 125 bytes.
MAX_CONTROL_PAYLOAD: Final = 125

_PACK_HEAD7: Final = struct.Struct("!BB").pack
_PACK_HEAD16: Final = struct.Struct("!BBH").pack
_PACK_HEAD64: Final = struct.Struct("!BBQ").pack
_UNPACK16: Final = struct.Struct("!H").unpack_from
_UNPACK64: Final = struct.Struct("!Q").unpack_from
_NEW_DECODER: Final = codecs.getincrementaldecoder("utf-8")
# What the header and mask key of a frame XOR with in encode_texts(): nothing.
_ZEROS_7: Final = bytes(2 + 4)
_ZEROS_16: Final = bytes(4 + 4)
_ZEROS_64: Final = bytes(10 + 4)


def close_code_allowed(code: int) -> bool:
    """Tell whether ``code`` may travel in a close frame (RFC 6455 section 7.4, IANA registry).

    1000-1003 and 1007-1014 are defined for use on the wire; 1004 is reserved, 1005, 1006 and
    1015 must never be sent; 3000-4999 belong to libraries and applications.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# --------------------------------------------------------------------------------------------------
# Events and the error


class ProtocolViolation(Exception):
    """The server broke RFC 6455: the connection must be failed with :attr:`code`.

    ``str()`` says what was wrong, never any payload.

    Attributes:
        code: 1002 (protocol error) or 1007 (invalid UTF-8 in a text message or close reason).
    """

    def __init__(self, reason: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.code = code


class Ping:
    """A ping from the server; it is owed a pong carrying :attr:`payload`."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Pong:
    """A pong from the server (wsync's heartbeat is a protocol message: nothing to do)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """A valid close frame from the server.

    Attributes:
        code: its status code, 1005 when the frame carried none.
        reason: its reason, valid UTF-8 (may be empty); network text: escape before showing it.
    """

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Dropped:
    """A data message over the size limit was dropped (its payload is read past, not held).

    Attributes:
        length: the size of the frame that went over the limit (bytes).
    """

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length


#: What :meth:`Parser.next_event` returns: a whole message, a control event, or None.
Event = str | bytes | Ping | Pong | Close | Dropped


# --------------------------------------------------------------------------------------------------
# Parsing


class Parser:
    """Incremental parser of the frames a server sends: feed bytes, take events.

    Use: :meth:`feed` what the socket gave, then call :meth:`next_event` until it returns None
    (it needs more bytes: read and feed again). After a :class:`Close` event or a
    :class:`ProtocolViolation`, the stream is over: stop parsing. Not thread-safe; no I/O.

    Args:
        max_size: the largest message (bytes, after reassembly) returned; a larger one is read
            past and reported once as :class:`Dropped`.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self._max = max_size
        self._buf = b""  # bytes fed and not parsed yet, from _pos on
        self._pos = 0
        # The payload of the current frame when it spans several feeds (None: not collecting).
        self._payload: bytearray | None = None
        self._want = 0  # bytes of the current frame's payload still to collect
        self._head: tuple[bool, int] = (True, OP_TEXT)  # (fin, opcode) of the frame collected
        self._skipping = False  # reading past a frame of a dropped message
        self._skip = 0  # bytes of it still to read past
        # The fragmented message being assembled: its opcode (0: none), bytes and validator.
        self._frag_op = 0
        self._frag = bytearray()
        self._decoder: codecs.IncrementalDecoder | None = None
        self._dropping = False  # reading past the rest of an oversize fragmented message
        self._fast = max_size >= MAX_CONTROL_PAYLOAD  # no state: the one-frame path applies

    def feed(self, data: bytes) -> None:
        """Add bytes read from the socket (any amount, any split)."""
        if not data:
            return
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def buffered(self) -> int:
        """Bytes fed and not parsed yet (not counting a payload being collected)."""
        return len(self._buf) - self._pos

    def next_event(self) -> Event | None:
        """Parse the next event from the bytes fed; None when more bytes are needed.

        Returns:
            ``str`` (a whole text message), ``bytes`` (a whole binary message), :class:`Ping`,
            :class:`Pong`, :class:`Close`, :class:`Dropped`, or None.

        Raises:
            ProtocolViolation: the server broke RFC 6455; fail the connection with its code.
        """
        if self._fast:
            message = self.next_message()
            if message is not None:
                return message
        return self._next_slow()

    def next_message(self) -> str | bytes | None:
        """The next event if it is a whole data message in one frame; else None, and nothing
        is consumed (:meth:`next_event` then deals with whatever comes next).

        The hot path: an unfragmented text or binary frame of up to 64 KiB (a 7- or 16-bit
        length, unmasked, no reserved bit, within ``max_size``, valid UTF-8 for text), all of
        it fed already, and no message or frame half-read. Never raises.
        """
        if not self._fast:
            return None
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if size - pos < 2:
            return None
        length = buf[pos + 1]  # with the mask bit set: >= 128, not for this path
        start = pos + 2
        if length == 126:
            if size - pos < 4:
                return None
            length = (buf[start] << 8) | buf[start + 1]
            start += 2
            if length > self._max:
                return None
        elif length > 126:
            return None
        end = start + length
        if end > size:
            return None
        first = buf[pos]
        if first == 0x81:
            try:
                text = buf[start:end].decode()
            except UnicodeDecodeError:
                return None  # next_event() fails the connection with 1007
            self._pos = end
            return text
        if first == 0x82:
            self._pos = end
            return buf[start:end]
        return None

    def _next_slow(self) -> Event | None:
        while True:
            if self._skipping:
                if not self._read_past():
                    return None
                self._skipping = False
                if self._head[0]:
                    self._end_dropping()
                continue
            if self._payload is not None:
                payload = self._collect()
                if payload is None:
                    return None
                fin, opcode = self._head
            else:
                header = self._read_header()
                if header is None:
                    return None
                fin, opcode, length = header
                if opcode <= OP_BINARY:
                    verdict = self._check_data(fin, opcode, length)
                    if isinstance(verdict, Dropped):
                        return verdict
                    if verdict:
                        continue  # a frame of a dropped message: read it past
                buf = self._buf
                pos = self._pos
                end = pos + length
                if end > len(buf):
                    # The rest comes in later feeds: collect it (at most max_size bytes, or a
                    # control frame's 125) in one growing buffer.
                    self._payload = bytearray(buf[pos:])
                    self._want = end - len(buf)
                    self._head = (fin, opcode)
                    self._buf = b""
                    self._pos = 0
                    self._fast = False
                    return None
                payload = buf[pos:end]
                self._pos = end
            event = self._frame(fin, opcode, payload)
            if event is not None:
                return event

    def _read_header(self) -> tuple[bool, int, int] | None:
        """Parse one frame header (without consuming it unless whole); check it."""
        buf = self._buf
        pos = self._pos
        have = len(buf) - pos
        if have < 2:
            return None
        first = buf[pos]
        second = buf[pos + 1]
        length = second & 0x7F
        start = pos + 2
        if length == 126:
            if have < 4:
                return None
            length = _UNPACK16(buf, start)[0]
            start += 2
        elif length == 127:
            if have < 10:
                return None
            length = _UNPACK64(buf, start)[0]
            start += 8
            if length >> 63:
                raise ProtocolViolation("64-bit payload length with the most significant bit set")
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        if first & 0x70:
            raise ProtocolViolation("reserved bits set (no extension was negotiated)")
        if second & 0x80:
            raise ProtocolViolation("masked frame from the server")
        if OP_BINARY < opcode < OP_CLOSE or opcode > OP_PONG:
            raise ProtocolViolation(f"reserved opcode {opcode}")
        if opcode >= OP_CLOSE:
            if not fin:
                raise ProtocolViolation("fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolViolation(f"control frame of {length} bytes (at most 125)")
        self._pos = start
        return fin, opcode, length

    def _check_data(self, fin: bool, opcode: int, length: int) -> Dropped | bool:
        """Check a data frame against the fragmentation rules and the size limit.

        Returns :class:`Dropped` when this frame starts dropping a message, True when it is
        to be read past (the rest of a dropped message), False when its payload is to be read.
        """
        if opcode == OP_CONT:
            if not self._frag_op and not self._dropping:
                raise ProtocolViolation("continuation frame without a message to continue")
        elif self._frag_op or self._dropping:
            raise ProtocolViolation("new data message inside a fragmented one")
        if self._dropping:
            self._start_skip(length, fin)
            return True
        if length + len(self._frag) <= self._max:
            return False
        # Oversize: drop the whole message, reading past its frames without holding them.
        self._frag_op = 0
        self._frag = bytearray()
        self._decoder = None
        self._dropping = True
        self._start_skip(length, fin)
        return Dropped(length)

    def _start_skip(self, length: int, fin: bool) -> None:
        """Read the payload of this frame past (``fin``: the dropped message ends with it)."""
        self._skipping = True
        self._skip = length
        self._head = (fin, OP_CONT)
        self._fast = False

    def _end_dropping(self) -> None:
        self._dropping = False
        self._fast = self._max >= MAX_CONTROL_PAYLOAD

    def _read_past(self) -> bool:
        """Drop buffered bytes of the frame being skipped; True when it is all read past."""
        take = min(self._skip, len(self._buf) - self._pos)
        self._pos += take
        self._skip -= take
        return not self._skip

    def _collect(self) -> bytes | bytearray | None:
        """Move buffered bytes into the payload being collected; the payload once complete."""
        payload = self._payload
        assert payload is not None
        buf = self._buf
        pos = self._pos
        take = min(self._want, len(buf) - pos)
        if take:
            payload += buf[pos : pos + take]
            self._pos = pos + take
            self._want -= take
        if self._want:
            return None
        self._payload = None
        self._fast = not self._frag_op and not self._dropping and self._max >= MAX_CONTROL_PAYLOAD
        return payload

    def _frame(self, fin: bool, opcode: int, payload: bytes | bytearray) -> Event | None:
        """Turn one whole, checked frame into an event (None: a fragment was stored)."""
        if opcode in (OP_TEXT, OP_BINARY):
            if fin:
                return _message(opcode, payload)
            self._frag_op = opcode
            self._frag = bytearray(payload)
            self._fast = False
            if opcode == OP_TEXT:
                self._decoder = _NEW_DECODER()
                _validate(self._decoder, payload, False)
            return None
        if opcode == OP_CONT:
            if payload:
                self._frag += payload
                if self._decoder is not None:
                    _validate(self._decoder, payload, False)
            if not fin:
                return None
            opcode = self._frag_op
            data = self._frag
            validator = self._decoder
            self._frag_op = 0
            self._frag = bytearray()
            self._decoder = None
            self._fast = self._max >= MAX_CONTROL_PAYLOAD
            if validator is not None:
                _validate(validator, b"", True)  # a sequence cut short at the end
                return data.decode()
            return bytes(data)
        if opcode == OP_PING:
            return Ping(bytes(payload))
        if opcode == OP_PONG:
            return Pong(bytes(payload))
        return _close(bytes(payload))


def _validate(decoder: codecs.IncrementalDecoder, data: bytes | bytearray, final: bool) -> None:
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError:
        raise ProtocolViolation("text message is not valid UTF-8", CLOSE_INVALID_DATA) from None


def _message(opcode: int, payload: bytes | bytearray) -> str | bytes:
    if opcode == OP_BINARY:
        return bytes(payload)
    try:
        return payload.decode()
    except UnicodeDecodeError:
        # from None: the decode error holds the whole payload.
        raise ProtocolViolation("text message is not valid UTF-8", CLOSE_INVALID_DATA) from None


def _close(payload: bytes) -> Close:
    """Check a close frame's payload (RFC 6455 section 5.5.1) and make its event."""
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolViolation("close frame with a 1-byte payload")
    code: int = _UNPACK16(payload, 0)[0]
    if not close_code_allowed(code):
        raise ProtocolViolation(f"close frame with invalid code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolViolation("close reason is not valid UTF-8", CLOSE_INVALID_DATA) from None
    return Close(code, reason)


# --------------------------------------------------------------------------------------------------
# Serializing


def encode_frame(
    opcode: int, payload: bytes, _urandom: Callable[[int], bytes] = os.urandom
) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2), with a fresh random mask.

    The same bytes as websocket-client's ``ABNF(...).format()``, at a third of its cost
    (measured: 3 us against 9 us for 100 bytes): the XOR runs on one big integer.
    """
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        head = _PACK_HEAD7(first, 0x80 | length)
    elif length < 65536:
        head = _PACK_HEAD16(first, 0xFE, length)
    else:
        head = _PACK_HEAD64(first, 0xFF, length)
    key = _urandom(4)
    if not length:
        return head + key
    mask = int.from_bytes(key * (length >> 2) + key[: length & 3], "little")
    masked = (int.from_bytes(payload, "little") ^ mask).to_bytes(length, "little")
    return head + key + masked


def encode_text(text: str) -> bytes:
    """A masked text frame for ``text``.

    Raises:
        TypeError: ``text`` is not a ``str``.
        ValueError: ``text`` cannot be encoded as UTF-8 (a lone surrogate).
    """
    return encode_frame(OP_TEXT, _utf8(text))  # one frame: cheaper than a batch of one


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8, or the TypeError/ValueError :func:`encode_text` documents."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError("text cannot be encoded as UTF-8 (lone surrogate)") from None


def encode_texts(
    texts: Sequence[str],
    _urandom: Callable[[int], bytes] = os.urandom,
    _from_bytes: Callable[[bytes, Literal["little"]], int] = int.from_bytes,
) -> bytes:
    """Masked text frames for ``texts``, one after the other, as one ``bytes``.

    The same bytes as :func:`encode_text` for each, at about half the cost per frame: one
    ``os.urandom`` call draws every frame's own fresh mask key (4 bytes each, RFC 6455
    section 5.3), and the whole batch is masked with one XOR of two big integers (the
    headers and keys XOR with zeros).

    Raises:
        TypeError: a text is not a ``str``.
        ValueError: a text cannot be encoded as UTF-8 (a lone surrogate).
    """
    keys = _urandom(len(texts) << 2)
    data: list[bytes] = []
    masks: list[bytes] = []
    add_data = data.append
    add_mask = masks.append
    at = 0
    for text in texts:
        payload = _utf8(text)
        length = len(payload)
        key = keys[at : at + 4]
        at += 4
        if length < 126:
            add_data(_PACK_HEAD7(0x81, 0x80 | length))
            add_mask(_ZEROS_7)
        elif length < 65536:
            add_data(_PACK_HEAD16(0x81, 0xFE, length))
            add_mask(_ZEROS_16)
        else:
            add_data(_PACK_HEAD64(0x81, 0xFF, length))
            add_mask(_ZEROS_64)
        add_data(key)
        add_data(payload)
        add_mask(key * (length >> 2))
        add_mask(key[: length & 3])
    frames = b"".join(data)
    mask = _from_bytes(b"".join(masks), "little")
    return (_from_bytes(frames, "little") ^ mask).to_bytes(len(frames), "little")


def encode_close(code: int | None) -> bytes:
    """A masked close frame carrying ``code`` (no reason); None: an empty close frame.

    Raises:
        TypeError: ``code`` is not an int.
        ValueError: ``code`` may not be sent (see :func:`close_code_allowed`).
    """
    if code is None:
        return encode_frame(OP_CLOSE, b"")
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"close code must be an int, got {type(code).__name__}")
    if not close_code_allowed(code):
        raise ValueError(f"close code {code} may not be sent (1000-1003, 1007-1014, 3000-4999)")
    return encode_frame(OP_CLOSE, struct.pack("!H", code))

"""The sans-I/O RFC 6455 codec, with bytes only: one test per rule a client must hold."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Iterable

import pytest

from wsync._frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Dropped,
    Event,
    Parser,
    Ping,
    Pong,
    ProtocolViolation,
    close_code_allowed,
    encode_close,
    encode_frame,
    encode_text,
    encode_texts,
)

LIMIT = 1 << 20


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """A frame as a server (or, with ``mask``, a client) would write it."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 65536:
        head = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack("!Q", n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def events(data: bytes, *, max_size: int = LIMIT, chunk: int | None = None) -> list[Event]:
    """Every event ``data`` makes, fed whole or in chunks of ``chunk`` bytes."""
    parser = Parser(max_size)
    out: list[Event] = []
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        parser.feed(data[start : start + step])
        while (event := parser.next_event()) is not None:
            out.append(event)
    return out


def violation(data: bytes, *, max_size: int = LIMIT) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as caught:
        events(data, max_size=max_size)
    return caught.value


def unmask(data: bytes) -> tuple[int, bool, bytes]:
    """(opcode, fin, payload) of one masked client frame."""
    first, second = data[0], data[1]
    assert second & 0x80, "client frames must be masked"
    n, pos = second & 0x7F, 2
    if n == 126:
        (n,), pos = struct.unpack("!H", data[2:4]), 4
    elif n == 127:
        (n,), pos = struct.unpack("!Q", data[2:10]), 10
    key, body = data[pos : pos + 4], data[pos + 4 :]
    assert len(body) == n
    return first & 0x0F, bool(first & 0x80), bytes(b ^ key[i % 4] for i, b in enumerate(body))


def split_client_frames(data: bytes) -> list[bytes]:
    """The masked client frames one after the other in ``data``, each whole."""
    out = []
    pos = 0
    while pos < len(data):
        n, head = data[pos + 1] & 0x7F, 2
        if n == 126:
            n, head = struct.unpack("!H", data[pos + 2 : pos + 4])[0], 4
        elif n == 127:
            n, head = struct.unpack("!Q", data[pos + 2 : pos + 10])[0], 10
        end = pos + head + 4 + n
        out.append(data[pos:end])
        pos = end
    return out


def peak_bytes(chunks: Iterable[bytes], max_size: int = LIMIT) -> tuple[int, list[Event]]:
    """Feed ``chunks`` (made lazily) and return the peak memory traced, and the events."""
    parser = Parser(max_size)
    out: list[Event] = []
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for chunk in chunks:
            parser.feed(chunk)
            while (event := parser.next_event()) is not None:
                out.append(event)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, out


class TestMessages:
    def test_text_frame_is_a_str(self) -> None:
        """An unfragmented text frame becomes one str."""
        assert events(frame(OP_TEXT, "héllo".encode())) == ["héllo"]

    def test_binary_frame_is_bytes(self) -> None:
        """An unfragmented binary frame becomes bytes."""
        assert events(frame(OP_BINARY, b"\x00\xff")) == [b"\x00\xff"]

    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100_000])
    def test_every_length_encoding(self, size: int) -> None:
        """7-bit, 16-bit and 64-bit payload lengths all parse."""
        assert events(frame(OP_TEXT, b"a" * size)) == ["a" * size]

    def test_16_bit_length_frames_back_to_back(self) -> None:
        """Frames of 126 to 65535 bytes (the one-frame fast path) parse whole or split anywhere."""
        data = b"".join(frame(OP_TEXT, b"%d" % n * n) for n in (126, 200, 300))
        data += frame(OP_BINARY, b"\x00" * 65535) + frame(OP_TEXT, "é".encode() * 100)
        want = [str(n) * n for n in (126, 200, 300)] + [b"\x00" * 65535, "é" * 100]
        for chunk in (None, 1, 3, 129, 4096):
            assert events(data, chunk=chunk) == want

    def test_any_split_of_the_stream_gives_the_same_events(self) -> None:
        """Bytes fed one at a time make the same events as bytes fed at once."""
        data = (
            frame(OP_TEXT, b"one")
            + frame(OP_PING, b"p")
            + frame(OP_TEXT, b"a" * 300, fin=False)
            + frame(OP_CONT, "é".encode(), fin=True)
            + frame(OP_BINARY, b"b" * 70_000)
        )
        whole = events(data)
        assert [type(e) for e in whole] == [str, Ping, str, bytes]
        for chunk in (1, 2, 3, 7, 4096):
            split = events(data, chunk=chunk)
            assert [e if isinstance(e, (str, bytes)) else type(e) for e in split] == [
                e if isinstance(e, (str, bytes)) else type(e) for e in whole
            ]

    def test_fragments_are_reassembled(self) -> None:
        """Text fragments make one message, with a multi-byte character split between them."""
        euro = "€".encode()
        data = (
            frame(OP_TEXT, b"ab" + euro[:1], fin=False)
            + frame(OP_CONT, euro[1:], fin=False)
            + frame(OP_CONT, b"", fin=False)
            + frame(OP_CONT, b"cd")
        )
        assert events(data) == ["ab€cd"]

    def test_control_frames_may_come_between_fragments(self) -> None:
        """A ping inside a fragmented message is an event of its own (RFC 6455 5.4)."""
        data = frame(OP_BINARY, b"a", fin=False) + frame(OP_PING, b"x") + frame(OP_CONT, b"b")
        out = events(data)
        assert isinstance(out[0], Ping) and out[0].payload == b"x"
        assert out[1] == b"ab"

    def test_ping_and_pong_carry_their_payload(self) -> None:
        """Ping and pong events hold the application data of their frame."""
        ping, pong = events(frame(OP_PING, b"hi") + frame(OP_PONG, b"yo"))
        assert isinstance(ping, Ping) and ping.payload == b"hi"
        assert isinstance(pong, Pong) and pong.payload == b"yo"


class TestNextMessage:
    def test_takes_whole_one_frame_messages_at_the_front(self) -> None:
        """next_message() hands out whole data messages of a 7- or 16-bit length, in order."""
        parser = Parser(LIMIT)
        parser.feed(frame(OP_TEXT, b"a") + frame(OP_BINARY, b"b" * 300) + frame(OP_TEXT, b"c"))
        assert [parser.next_message() for _ in range(4)] == ["a", b"b" * 300, "c", None]

    @pytest.mark.parametrize(
        "data",
        [
            frame(OP_PING, b"p"),
            frame(OP_TEXT, b"part", fin=False),
            frame(OP_TEXT, b"x" * 101),  # over max_size
            frame(OP_TEXT, b"\xff"),
            frame(OP_TEXT, b"x" * 300)[:150],  # not all fed yet
            frame(OP_TEXT, b"x" * 300)[:3],  # half a 16-bit length
            frame(OP_TEXT, b"x", mask=b"abcd"),
            frame(OP_TEXT, b"x" * 70_000),
        ],
    )
    def test_leaves_anything_else_to_next_event(self, data: bytes) -> None:
        """Anything but a whole one-frame message is left in place, and next_event() decides."""
        parser = Parser(100)
        parser.feed(data)
        assert parser.next_message() is None
        assert parser.buffered() == len(data)
        fresh = Parser(100)
        fresh.feed(data)
        try:
            want: object = fresh.next_event()
        except ProtocolViolation as exc:
            with pytest.raises(ProtocolViolation) as caught:
                parser.next_event()
            assert caught.value.code == exc.code
        else:
            got = parser.next_event()
            assert type(got) is type(want)

    def test_nothing_while_a_fragmented_message_is_open(self) -> None:
        """Between the fragments of a message, even a whole frame is left to next_event()."""
        parser = Parser(LIMIT)
        parser.feed(frame(OP_TEXT, b"one", fin=False))
        assert parser.next_event() is None  # the fragment is stored
        parser.feed(frame(OP_CONT, b"two"))
        assert parser.next_message() is None
        assert parser.next_event() == "onetwo"


class TestUtf8:
    def test_invalid_text_fails_with_1007(self) -> None:
        """A text message that is not UTF-8 fails the connection with 1007 (RFC 6455 8.1)."""
        error = violation(frame(OP_TEXT, b"ok\xff"))
        assert error.code == 1007
        assert "ok" not in str(error)

    def test_invalid_fragment_fails_before_the_message_ends(self) -> None:
        """Invalid UTF-8 in a fragment fails at that fragment, not at the last one."""
        parser = Parser(LIMIT)
        parser.feed(frame(OP_TEXT, b"fine", fin=False))
        assert parser.next_event() is None
        parser.feed(frame(OP_CONT, b"\xc0\xaf", fin=False))
        with pytest.raises(ProtocolViolation) as caught:
            parser.next_event()
        assert caught.value.code == 1007

    def test_sequence_cut_short_at_the_end_fails(self) -> None:
        """A message ending inside a multi-byte sequence fails with 1007."""
        data = frame(OP_TEXT, b"a", fin=False) + frame(OP_CONT, "€".encode()[:2])
        assert violation(data).code == 1007

    def test_surrogates_encoded_in_utf8_fail(self) -> None:
        """UTF-8 for a surrogate code point (ED A0 80) is invalid."""
        assert violation(frame(OP_TEXT, b"\xed\xa0\x80")).code == 1007

    def test_binary_is_never_checked(self) -> None:
        """Binary messages may hold any bytes."""
        assert events(frame(OP_BINARY, b"\xff\xfe")) == [b"\xff\xfe"]


class TestClose:
    def test_close_with_code_and_reason(self) -> None:
        """A close frame gives its code and UTF-8 reason."""
        (event,) = events(frame(OP_CLOSE, struct.pack("!H", 4001) + "bye é".encode()))
        assert isinstance(event, Close) and (event.code, event.reason) == (4001, "bye é")

    def test_empty_close_means_no_status(self) -> None:
        """A close frame without payload has code 1005 (no status received)."""
        (event,) = events(frame(OP_CLOSE))
        assert isinstance(event, Close) and (event.code, event.reason) == (1005, "")

    def test_close_reason_not_utf8_fails_with_1007(self) -> None:
        """A close reason that is not UTF-8 fails the connection with 1007."""
        assert violation(frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff")).code == 1007

    def test_one_byte_close_payload_is_a_protocol_error(self) -> None:
        """A close payload of one byte fails with 1002."""
        assert violation(frame(OP_CLOSE, b"\x03")).code == 1002

    @pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
    def test_invalid_close_code_is_a_protocol_error(self, code: int) -> None:
        """A close code that may not be sent fails with 1002."""
        assert violation(frame(OP_CLOSE, struct.pack("!H", code))).code == 1002

    @pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
    def test_valid_close_codes_are_accepted(self, code: int) -> None:
        """Every close code a peer may send is accepted."""
        (event,) = events(frame(OP_CLOSE, struct.pack("!H", code)))
        assert isinstance(event, Close) and event.code == code


class TestProtocolErrors:
    @pytest.mark.parametrize("rsv", [1, 2, 4, 7])
    def test_reserved_bits_fail(self, rsv: int) -> None:
        """RSV1-3 set with no extension negotiated fail with 1002."""
        assert violation(frame(OP_TEXT, b"x", rsv=rsv)).code == 1002

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
    def test_reserved_opcodes_fail(self, opcode: int) -> None:
        """Reserved opcodes fail with 1002."""
        assert violation(frame(opcode, b"")).code == 1002

    def test_masked_server_frame_fails(self) -> None:
        """A server must not mask its frames (RFC 6455 5.1)."""
        assert violation(frame(OP_TEXT, b"x", mask=b"abcd")).code == 1002

    @pytest.mark.parametrize("size", [126, 300, 65535])
    def test_masked_server_frame_with_a_16_bit_length_fails(self, size: int) -> None:
        """A masked server frame fails whatever its length encoding."""
        assert violation(frame(OP_TEXT, b"x" * size, mask=b"abcd")).code == 1002

    def test_invalid_utf8_in_a_16_bit_length_frame_fails_with_1007(self) -> None:
        """Text of 126 bytes or more is checked as strictly as short text."""
        assert violation(frame(OP_TEXT, b"a" * 200 + b"\xff")).code == 1007

    def test_fragmented_control_frame_fails(self) -> None:
        """Control frames must not be fragmented."""
        assert violation(frame(OP_PING, b"x", fin=False)).code == 1002

    def test_control_frame_over_125_bytes_fails(self) -> None:
        """Control frames carry at most 125 bytes."""
        assert violation(frame(OP_PONG, b"x" * 126)).code == 1002

    def test_continuation_without_a_start_fails(self) -> None:
        """A continuation frame with no message to continue fails with 1002."""
        assert violation(frame(OP_CONT, b"x")).code == 1002

    def test_new_message_inside_a_fragmented_one_fails(self) -> None:
        """A text frame while a fragmented message is open fails with 1002."""
        assert violation(frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b")).code == 1002

    def test_64_bit_length_with_the_top_bit_set_fails(self) -> None:
        """The most significant bit of a 64-bit length must be 0."""
        data = bytes([0x82, 127]) + struct.pack("!Q", (1 << 63) | 5) + b"hello"
        assert violation(data).code == 1002


class TestSizeLimit:
    def test_oversize_message_is_dropped_and_the_next_arrives(self) -> None:
        """A frame over the limit is reported once, read past, and the next message follows."""
        out = events(frame(OP_TEXT, b"a" * 101) + frame(OP_TEXT, b"next"), max_size=100)
        assert isinstance(out[0], Dropped) and out[0].length == 101
        assert out[1:] == ["next"]

    def test_oversize_fragmented_message_is_dropped_whole(self) -> None:
        """Fragments adding up past the limit drop the message once, whatever follows of it."""
        data = (
            frame(OP_TEXT, b"a" * 60, fin=False)
            + frame(OP_CONT, b"b" * 60, fin=False)
            + frame(OP_CONT, b"c" * 1, fin=False)
            + frame(OP_PING, b"")
            + frame(OP_CONT, b"", fin=True)
            + frame(OP_TEXT, b"next")
        )
        out = events(data, max_size=100, chunk=5)
        assert [type(e) for e in out] == [Dropped, Ping, str]
        assert out[-1] == "next"

    @pytest.mark.parametrize("size", [201, 300, 65535])
    def test_oversize_16_bit_length_frame_is_dropped(self, size: int) -> None:
        """A frame of 126 to 65535 bytes over the limit is dropped, and the next arrives."""
        out = events(frame(OP_TEXT, b"a" * size) + frame(OP_TEXT, b"n" * 200), max_size=200)
        assert isinstance(out[0], Dropped) and out[0].length == size
        assert out[1:] == ["n" * 200]

    def test_limit_below_125_still_applies_to_short_frames(self) -> None:
        """With a limit under 125 bytes, a short frame over it is still dropped."""
        out = events(frame(OP_BINARY, b"x" * 20) + frame(OP_BINARY, b"y" * 10), max_size=10)
        assert isinstance(out[0], Dropped) and out[1] == b"y" * 10

    def test_oversize_payload_is_never_held(self) -> None:
        """A 16 MiB frame over a 1 KiB limit is read past in 64 KiB pieces, not buffered."""
        body = b"z" * 65536

        def stream() -> Iterable[bytes]:
            yield frame(OP_BINARY, length=16 << 20)
            for _ in range(256):
                yield body
            yield frame(OP_TEXT, b"after")

        peak, out = peak_bytes(stream(), max_size=1024)
        assert isinstance(out[0], Dropped) and out[1:] == ["after"]
        assert peak < 256 * 1024, f"peak {peak} bytes"


class TestBoundedMemory:
    def test_empty_continuation_frames_cost_nothing(self) -> None:
        """300,000 empty continuation frames hold no more memory than one message's bytes."""
        chunk = frame(OP_CONT, b"", fin=False) * 10_000

        def stream() -> Iterable[bytes]:
            yield frame(OP_TEXT, b"", fin=False)
            for _ in range(30):
                yield chunk
            yield frame(OP_CONT, b"x")

        peak, out = peak_bytes(stream())
        assert out == ["x"]
        assert peak < 256 * 1024, f"peak {peak} bytes"

    def test_one_byte_fragments_cost_only_their_bytes(self) -> None:
        """256 KiB of text in 1-byte fragments costs about the message, not per fragment."""
        size = 256 * 1024
        part = frame(OP_CONT, b"a", fin=False) * 4096

        def stream() -> Iterable[bytes]:
            yield frame(OP_TEXT, b"a", fin=False)
            for _ in range((size - 2) // 4096):
                yield part
            yield frame(OP_CONT, b"a", fin=False) * ((size - 2) % 4096)
            yield frame(OP_CONT, b"a")

        peak, out = peak_bytes(stream())
        assert out == ["a" * size]
        assert peak < 4 * size, f"peak {peak} bytes for a {size}-byte message"

    def test_unparsed_bytes_are_only_what_was_fed(self) -> None:
        """After every event is taken, only a partial frame header stays buffered."""
        parser = Parser(LIMIT)
        parser.feed(frame(OP_TEXT, b"a") * 1000 + frame(OP_TEXT, b"bcd")[:1])
        while parser.next_event() is not None:
            pass
        assert parser.buffered() == 1
        parser.feed(frame(OP_TEXT, b"bcd")[1:])
        assert parser.next_event() == "bcd"
        assert parser.buffered() == 0


class TestEncode:
    @pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70001])
    def test_client_frames_are_masked_and_round_trip(self, size: int) -> None:
        """Client frames are final, masked, and unmask to the payload, at every length."""
        payload = bytes(i % 251 for i in range(size))
        assert unmask(encode_frame(OP_BINARY, payload)) == (OP_BINARY, True, payload)

    def test_mask_comes_from_the_random_source(self) -> None:
        """The masking key is 4 fresh random bytes (RFC 6455 5.3)."""
        data = encode_frame(OP_TEXT, b"abcd", _urandom=lambda n: b"\x01\x02\x03\x04")
        assert data == bytes([0x81, 0x84, 1, 2, 3, 4, 0x60, 0x60, 0x60, 0x60])

    def test_encode_texts_gives_each_frame_its_own_key(self) -> None:
        """A batch is the frames of each text in order, each masked with its own 4 random bytes."""
        texts = ["", "a", "é" * 62, "b" * 126, "c" * 65535, "d" * 65536, "last"]
        keys = bytes(range(1, 4 * len(texts) + 1))
        data = encode_texts(texts, _urandom=lambda n: keys[:n])
        frames = split_client_frames(data)
        assert [unmask(f) for f in frames] == [(OP_TEXT, True, t.encode()) for t in texts]
        for i, one in enumerate(frames):
            head = 2 if len(one) < 6 + 126 else 4 if len(one) < 8 + 65536 else 10
            assert one[head : head + 4] == keys[4 * i : 4 * i + 4]

    def test_encode_texts_draws_fresh_keys(self) -> None:
        """Two batches of the same texts are masked differently (keys from os.urandom)."""
        texts = ["same text"] * 4
        first = split_client_frames(encode_texts(texts))
        second = split_client_frames(encode_texts(texts))
        assert len({f[2:6] for f in first + second}) == 8
        assert [unmask(f) for f in first] == [unmask(f) for f in second]

    def test_encode_texts_refuses_any_bad_text_whole(self) -> None:
        """One bad text in a batch raises as encode_text does, and nothing is returned."""
        with pytest.raises(TypeError):
            encode_texts(["ok", b"x"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="surrogate"):
            encode_texts(["ok", "\ud800"])
        assert encode_texts([]) == b""

    def test_encode_text_refuses_non_str_and_lone_surrogates(self) -> None:
        """encode_text raises TypeError for bytes and ValueError for a lone surrogate."""
        with pytest.raises(TypeError):
            encode_text(b"x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="surrogate"):
            encode_text("\ud800")
        assert unmask(encode_text("é")) == (OP_TEXT, True, "é".encode())

    @pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
    def test_close_frame_with_an_allowed_code(self, code: int) -> None:
        """encode_close writes the code as two bytes."""
        assert unmask(encode_close(code)) == (OP_CLOSE, True, struct.pack("!H", code))

    @pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000])
    def test_close_codes_that_must_not_be_sent_are_refused(self, code: int) -> None:
        """1004-1006, 1015 and codes outside the ranges are refused with ValueError."""
        assert not close_code_allowed(code)
        with pytest.raises(ValueError):
            encode_close(code)

    def test_close_code_must_be_an_int(self) -> None:
        """A bool or str close code raises TypeError."""
        with pytest.raises(TypeError):
            encode_close(True)
        with pytest.raises(TypeError):
            encode_close("1000")  # type: ignore[arg-type]

    def test_empty_close_frame(self) -> None:
        """encode_close(None) is a close frame with no payload."""
        assert unmask(encode_close(None)) == (OP_CLOSE, True, b"")

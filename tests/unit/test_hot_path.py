"""The hot-path helpers of send(): they must produce exactly what the slow, obvious code does."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from wsync import protocol
from wsync._values import uuid4_text


class TestUuid4Text:
    def test_is_a_version_4_rfc_4122_uuid_in_canonical_form(self) -> None:
        """Every id parses as a UUID4 (RFC 4122 variant) and prints back the same."""
        for _ in range(2000):
            text = uuid4_text()
            parsed = uuid.UUID(text)
            assert parsed.version == 4
            assert parsed.variant == uuid.RFC_4122
            assert str(parsed) == text

    def test_ids_do_not_repeat(self) -> None:
        """100,000 ids are all different."""
        assert len({uuid4_text() for _ in range(100_000)}) == 100_000


class TestNowText:
    def test_matches_format_timestamp_of_now(self) -> None:
        """now_text() is toISOString() of the current time, like format_timestamp(now())."""
        before = protocol.now()
        text = protocol.now_text()
        after = protocol.now()
        parsed = protocol.parse_timestamp(text)
        assert before <= parsed <= after
        assert text == protocol.format_timestamp(parsed)
        assert text.endswith("Z") and len(text) == 24


class TestEncodeMessageNow:
    @given(content=st.text(), message_id=st.text(min_size=1), client_id=st.text(min_size=1))
    def test_same_frame_as_encode(self, content: str, message_id: str, client_id: str) -> None:
        """encode_message_now() decodes to the Message encode() would write, stamped now."""
        text = protocol.encode_message_now(
            client_id=client_id, message_id=message_id, content=content
        )
        frame = protocol.decode(text)
        assert isinstance(frame, protocol.Message)
        assert (frame.client_id, frame.message_id, frame.content) == (
            client_id, message_id, content
        )
        assert text == protocol.encode(frame)
        assert frame.timestamp.tzinfo is timezone.utc
        assert abs((datetime.now(timezone.utc) - frame.timestamp).total_seconds()) < 60


class TestDecodeFastPath:
    def test_timestamp_cache_never_accepts_a_bad_stamp(self) -> None:
        """A response with an empty or bad timestamp is malformed, before and after good ones."""
        import pytest

        from wsync import ProtocolError

        good = '{"type":"response","messageId":"a","content":"b","timestamp":"%s"}'
        for stamp in ["", "nope", "2026-11-27T13:40:30.123Z", "", "2026-11-27T13:40:30"]:
            text = good % stamp
            if stamp.endswith("Z"):
                assert protocol.decode(text).timestamp.year == 2026  # type: ignore[union-attr]
            else:
                with pytest.raises(ProtocolError):
                    protocol.decode(text)

    def test_same_stamp_twice_gives_equal_frames(self) -> None:
        """Two responses with one timestamp text decode to equal frames with equal times."""
        stamp = "2026-01-01T00:00:00.000Z"
        text = f'{{"type":"response","messageId":"a","content":"b","timestamp":"{stamp}"}}'
        first, second = protocol.decode(text), protocol.decode(text)
        assert first == second
        assert first == protocol.Response(
            message_id="a", content="b", timestamp=protocol.parse_timestamp(stamp)
        )

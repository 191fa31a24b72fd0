"""Fuzzing the client's read path: arbitrary frames from a real server (``send_raw``).

Hypothesis builds lists of frames: text and binary, valid and broken JSON, huge and empty,
frames of every type whose fields have the right or a wrong type (or are missing), responses
for unknown ids, confirms at the wrong time, pings and pongs. Each frame carries its own
verdict, worked out here from the protocol's specification (docs/protocol.rst) without asking
wsync: malformed or not, and what a well-formed one must do. After each example the client
must still be CONFIRMED on the same connection, answer an echo, and have counted exactly the
malformed frames in ``stats().malformed``; no exception may escape a thread (the test
config turns an unhandled thread exception into an error) and nothing is logged at ERROR.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers import TIMEOUT
from wsync import Backoff, Client, ServerError, Status
from wsync.testing import ProtocolServer

pytestmark = pytest.mark.timeout(120)

LIMIT = 16 * 1024  # the client's max_frame_size here: huge frames stay cheap


@dataclass(frozen=True)
class Frame:
    """One frame to send, with the verdict the client must reach."""

    data: str | bytes
    why: str  # what it is, for the report
    malformed: bool
    response: bool = False  # a well-formed response (for an id nobody sent)
    ping: bool = False  # a well-formed ping: the client answers pong
    error: bool = False  # a well-formed error frame: on_error is called

    def __repr__(self) -> str:
        shown = self.data[:120]
        return f"Frame({self.why}, malformed={self.malformed}, {shown!r} ({len(self.data)}))"


def _oversize(data: str | bytes) -> bool:
    raw = data.encode() if isinstance(data, str) else data
    return len(raw) > LIMIT


def _finish(data: str | bytes, why: str, verdict: dict[str, bool]) -> Frame:
    """Apply the size rule: a frame over max_frame_size is malformed whatever it holds."""
    if _oversize(data):
        return Frame(data, why + ", oversize", malformed=True)
    return Frame(data, why, **verdict)


# --- values, each with whether it is valid where it goes ---------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
NON_EMPTY = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
WRONG_TYPES = st.sampled_from([7, -1, 1.5, True, False, None, [], ["x"], {}, {"a": 1}])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
GOOD_STAMPS = (
    "2026-11-27T13:40:30.123Z",
    "2026-11-27T13:40:30Z",
    "2026-11-27T13:40:30.123456+02:00",
    "2026-11-27T13:40:30.1-05:30",
    "1999-01-01T00:00:00.000+00:00",
)
BAD_STAMPS = (
    "2026-11-27T13:40:30",  # no offset
    "2026-11-27",
    "yesterday",
    "",
    "2026-02-30T00:00:00Z",  # no such day
    "2026-11-27T25:00:00Z",
    "2026-11-27T13:40:30.123+24:00",
)
MISSING = object()


def _value(kind: str) -> st.SearchStrategy[tuple[Any, bool]]:
    """(value or MISSING, valid) for a field of ``kind``: id, optid, str or ts.

    Three draws in four are valid, so that whole frames are often well-formed.
    """
    if kind == "id":
        good = NON_EMPTY.map(lambda v: (v, True))
        bad = st.one_of(
            st.just(("", False)),
            WRONG_TYPES.map(lambda v: (v, False)),
            st.just((MISSING, False)),
        )
    elif kind == "optid":
        good = st.one_of(
            NON_EMPTY.map(lambda v: (v, True)), st.just((None, True)), st.just((MISSING, True))
        )
        bad = st.one_of(
            st.just(("", False)),
            WRONG_TYPES.filter(lambda v: v is not None).map(lambda v: (v, False)),
        )
    elif kind == "str":
        good = TEXT.map(lambda v: (v, True))
        bad = st.one_of(WRONG_TYPES.map(lambda v: (v, False)), st.just((MISSING, False)))
    else:
        assert kind == "ts"
        good = st.sampled_from(GOOD_STAMPS).map(lambda v: (v, True))
        bad = st.one_of(
            st.sampled_from(BAD_STAMPS).map(lambda v: (v, False)),
            WRONG_TYPES.map(lambda v: (v, False)),
            st.just((MISSING, False)),
        )
    return st.integers(0, 3).flatmap(lambda roll: bad if roll == 0 else good)


FIELDS: dict[str, dict[str, str]] = {
    "response": {"messageId": "id", "content": "str", "timestamp": "ts"},
    "pong": {"timestamp": "ts"},
    "ping": {"timestamp": "ts"},
    "error": {"error": "str", "timestamp": "ts", "messageId": "optid"},
    "connect_confirm": {
        "clientId": "id",
        "conversationId": "id",
        "status": "str",
        "timestamp": "ts",
    },
    "message": {"clientId": "id", "content": "str", "timestamp": "ts", "messageId": "id"},
    "connect": {"clientId": "id", "timestamp": "ts"},
}
# Frames the client acts on while CONFIRMED. A well-formed connect_confirm outside the
# handshake means nothing (counted as malformed); connect and message are frames only a
# client sends (malformed from a server).
ACTED_ON = {"response", "pong", "ping", "error"}
KNOWN_KEYS = {"type", *(k for fields in FIELDS.values() for k in fields)}


@st.composite
def typed_frames(draw: st.DrawFn) -> Frame:
    """A JSON object that looks like a protocol frame, each field right or wrong."""
    tag = draw(st.sampled_from(sorted(FIELDS)))
    obj: dict[str, Any] = {}
    valid = True
    for name, kind in FIELDS[tag].items():
        value, ok = draw(_value(kind))
        valid = valid and ok
        if value is not MISSING:
            obj[name] = value
    type_choice = draw(st.sampled_from(["ok"] * 7 + ["unknown", "wrong", "missing"]))
    if type_choice == "ok":
        obj["type"] = tag
    elif type_choice == "unknown":
        obj["type"] = draw(NON_EMPTY.filter(lambda t: t not in FIELDS))
        valid = False
    elif type_choice == "wrong":
        obj["type"] = draw(WRONG_TYPES)
        valid = False
    else:
        valid = False
    extras = draw(
        st.dictionaries(TEXT.filter(lambda k: k not in KNOWN_KEYS), JSON_VALUES, max_size=3)
    )
    obj.update(extras)  # unknown fields are ignored
    items = list(obj.items())
    order = draw(st.permutations(range(len(items))))
    text = json.dumps(dict(items[i] for i in order), ensure_ascii=draw(st.booleans()))
    pad = draw(st.sampled_from([0, 0, 0, 0, 1, 2]))
    if pad:
        # Around the size limit: pad with an unknown field to LIMIT - 1 .. LIMIT + 1 bytes,
        # or well over it.
        room = LIMIT - len(text.encode()) - len(', "zzpad": ""')
        target = room + draw(st.sampled_from([-1, 0, 1])) if pad == 1 else room + 3 * LIMIT
        if target >= 0:
            text = text[:-1] + (", " if len(obj) else "") + json.dumps({"zzpad": "p" * target})[1:]
    acted = valid and tag in ACTED_ON
    verdict = {
        "malformed": not acted,
        "response": acted and tag == "response",
        "ping": acted and tag == "ping",
        "error": acted and tag == "error",
    }
    return _finish(text, f"{tag} frame ({'valid' if valid else 'invalid'})", verdict)


def _raw(data: str | bytes, why: str) -> Frame:
    return _finish(data, why, {"malformed": True})


RAW_FRAMES = st.one_of(
    TEXT.map(lambda t: _raw(t, "random text")),
    st.binary(max_size=64).map(lambda b: _raw(b, "binary")),
    st.just(_raw("", "empty text")),
    st.just(_raw(b"", "empty binary")),
    JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: _raw(json.dumps(v), "JSON, not an object")
    ),
    st.dictionaries(TEXT.filter(lambda k: k != "type"), JSON_VALUES, max_size=4).map(
        lambda d: _raw(json.dumps(d), "object without type")
    ),
    st.sampled_from(
        [
            "{",
            "}",
            '{"type": "response"',
            '{"type": "pong", "timestamp": "2026-11-27T13:40:30.123Z"} trailing',
            '{"type": "pong", "timestamp": NaN}',
            "[" * 100_000 + "]" * 100_000,  # nested too deeply
            '{"type": "pong", "timestamp": "2026-11-27T13:40:30.123Z", "n": ' + "9" * 5000 + "}",
            "\ufeff{}",
        ]
    ).map(lambda t: _raw(t, "broken JSON")),
    st.sampled_from([LIMIT + 1, 5 * LIMIT]).map(lambda n: _raw("x" * n, "huge text")),
    st.sampled_from([LIMIT + 1, 3 * LIMIT]).map(lambda n: _raw(b"\x00" * n, "huge binary")),
)
FRAMES = st.integers(0, 2).flatmap(lambda roll: RAW_FRAMES if roll == 0 else typed_frames())


# --- the rig: one server, one client, reused across examples ------------------------------


@dataclass
class Rig:
    server: ProtocolServer
    client: Client
    cond: threading.Condition = field(default_factory=threading.Condition)
    errors: list[ServerError] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    echoes: int = 0

    def on_error(self, error: ServerError) -> None:
        with self.cond:
            self.errors.append(error)
            self.cond.notify_all()

    def wait_errors(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.errors) >= n, TIMEOUT)


class _Errors(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def rig(server: ProtocolServer) -> Iterator[Rig]:
    holder: list[Rig] = []
    client = Client(
        server.url,
        client_id="fuzzed",
        on_error=lambda e: holder[0].on_error(e),
        heartbeat_interval=5.0,  # the heartbeat is not under test here: never a factor
        backoff=Backoff(initial=0.01, max_delay=0.05, max_attempts=None),
        max_frame_size=LIMIT,
    )
    rig = Rig(server, client)
    holder.append(rig)
    handler = _Errors(rig.logged)
    logger = logging.getLogger("wsync")
    logger.addHandler(handler)
    try:
        client.connect(timeout=TIMEOUT)
        yield rig
    finally:
        logger.removeHandler(handler)
        client.close()


def _check(rig: Rig, frames: list[Frame]) -> None:
    client, server = rig.client, rig.server
    before = client.stats()
    conns = server.connections_total
    pongs = server.pongs_received
    with rig.cond:
        errors = len(rig.errors)
    for frame in frames:
        assert server.send_raw(frame.data) == 1, f"no open connection to send {frame!r}"
    rig.echoes += 1
    text = f"echo {rig.echoes}"
    assert client.send_and_wait(text, timeout=TIMEOUT).content == text
    after = client.stats()
    expected = sum(f.malformed for f in frames)
    assert after.malformed - before.malformed == expected, (
        f"malformed counted {after.malformed - before.malformed}, expected {expected}: {frames}"
    )
    responses = sum(f.response for f in frames) + 1
    assert after.received - before.received == responses, frames
    assert rig.wait_errors(errors + sum(f.error for f in frames)), frames
    pings = sum(f.ping for f in frames)
    assert server.wait_until(lambda: server.pongs_received >= pongs + pings, TIMEOUT), frames
    with rig.cond:
        assert len(rig.errors) == errors + sum(f.error for f in frames), frames
    assert client.state.status is Status.CONFIRMED, (client.state, frames)
    assert server.connections_total == conns, f"the client reconnected after {frames}"
    assert after.in_flight == 0 and after.queued == 0, (after, frames)
    assert not rig.logged, (rig.logged, frames)


class TestFuzzReadPath:
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(frames=st.lists(FRAMES, min_size=1, max_size=5))
    @example(
        frames=[
            Frame(
                '{"type": "connect_confirm", "clientId": "fuzzed", "conversationId": "c", '
                '"status": "confirmed", "timestamp": "2026-11-27T13:40:30.123Z"}',
                "confirm at the wrong time",
                malformed=True,
            ),
            Frame(
                '{"type": "response", "messageId": "nobody", "content": "", '
                '"timestamp": "2026-11-27T13:40:30.123Z"}',
                "response for an unknown id",
                malformed=False,
                response=True,
            ),
            Frame(
                '{"type": "ping", "timestamp": "2026-11-27T13:40:30.123Z"}',
                "ping",
                malformed=False,
                ping=True,
            ),
            Frame(
                '{"type": "pong", "timestamp": "2026-11-27T13:40:30.123Z"}', "pong", malformed=False
            ),
            Frame(
                '{"type": "error", "error": "e", "messageId": "nobody", '
                '"timestamp": "2026-11-27T13:40:30.123Z"}',
                "error for an unknown id",
                malformed=False,
                error=True,
            ),
        ]
    )
    def test_client_survives_and_counts_every_malformed_frame(
        self, rig: Rig, frames: list[Frame]
    ) -> None:
        """Any frames from the server: still CONFIRMED, echo works, malformed counted exactly."""
        _check(rig, frames)

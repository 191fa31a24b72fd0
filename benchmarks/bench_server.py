"""A minimal, fast wsync protocol server for benchmarks: one process, one asyncio loop.

Not a test server (that is ``wsync.testing.ProtocolServer``, which spends a few threads and a
handful of locks per message): this one only has to be fast enough never to be the bottleneck
of ``benchmarks/run.py``, which starts it in a separate process.

It speaks the wire protocol's happy path (docs/protocol.rst) and nothing more:

- ``connect``  -> ``connect_confirm`` (same clientId, a new conversationId, "confirmed");
- ``ping``     -> ``pong``;
- ``message``  -> ``response`` with the same messageId and the same content (echo);
- WebSocket ping -> pong, close -> close; anything else is ignored.

Two implementations, chosen with ``--impl``:

- ``raw`` (default): an ``asyncio.Protocol`` with its own WebSocket framing (HTTP upgrade,
  unmasking with websockets' C ``apply_mask`` when available). Every frame found in one
  ``data_received`` is answered, and all the answers go out in ONE ``transport.write``: writes
  are batched exactly as much as the client's writes are. Timestamps are computed once per batch.
- ``websockets``: websockets' asyncio server, one ``send`` per response (no batching); kept to
  show, with ``run.py --server websockets``, why ``raw`` is the default.

Control, one command per line on stdin, one answer line on stdout:

- ``stats``  -> JSON: process CPU seconds (``time.process_time()``), wall clock, connections,
  frames in and out, writes;
- ``drop``   -> aborts every connection (TCP reset); answers ``dropped <n> <monotonic time>``
  (CLOCK_MONOTONIC is system-wide on Linux, so the client can subtract it from its own clock);
- ``quit``   -> exits.

At start it prints ``READY <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import ClassVar

try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - the pure-Python fallback
    _c_apply_mask = None

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_escape = json.encoder.encode_basestring_ascii  # str -> quoted ASCII JSON string (C)
_loads = json.loads


def _apply_mask(data: bytes, mask: bytes) -> bytes:
    if _c_apply_mask is not None:
        return _c_apply_mask(data, mask)
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _now_text() -> str:
    dt = datetime.now(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


class Stats:
    conns = 0
    live: ClassVar[set[RawConnection]] = set()
    frames_in = 0
    frames_out = 0
    writes = 0


def _answer(obj: object, stamp: str) -> bytes | None:
    """The text frame answering one decoded client frame, or None."""
    if type(obj) is not dict:
        return None
    kind = obj.get("type")
    if kind == "message":
        text = (
            '{"type":"response","messageId":'
            + _escape(obj.get("messageId", ""))
            + ',"content":'
            + _escape(obj.get("content", ""))
            + ',"timestamp":"'
            + stamp
            + '"}'
        )
    elif kind == "ping":
        text = '{"type":"pong","timestamp":"' + stamp + '"}'
    elif kind == "connect":
        text = (
            '{"type":"connect_confirm","clientId":'
            + _escape(obj.get("clientId", ""))
            + ',"conversationId":"'
            + str(uuid.uuid4())
            + '","status":"confirmed","timestamp":"'
            + stamp
            + '"}'
        )
    else:
        return None
    return _frame(1, text.encode())


class RawConnection(asyncio.Protocol):
    """One client connection: HTTP upgrade, then frames; answers batched per read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.frag: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        Stats.conns += 1
        Stats.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        Stats.live.discard(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self.transport.abort()  # type: ignore[union-attr]
                return
            self._upgrade(bytes(buf[: end + 4]))
            del buf[: end + 4]
            if not buf:
                return
        out: list[bytes] = []
        stamp = None
        pos = 0
        n = len(buf)
        frames = 0
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if n - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            if masked:
                payload = _apply_mask(payload, bytes(buf[pos + head - 4 : pos + head]))
            pos += head + length
            frames += 1
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == 1 or opcode == 0:
                if opcode == 1 and not fin:
                    self.frag = [payload]
                    continue
                if opcode == 0:
                    if self.frag is None:
                        continue
                    self.frag.append(payload)
                    if not fin:
                        continue
                    payload = b"".join(self.frag)
                    self.frag = None
                if stamp is None:
                    stamp = _now_text()
                try:
                    obj = _loads(payload)
                except ValueError:
                    continue
                answer = _answer(obj, stamp)
                if answer is not None:
                    out.append(answer)
            elif opcode == 9:  # ping
                out.append(_frame(10, payload))
            elif opcode == 8:  # close: answer, then close the TCP connection
                out.append(_frame(8, payload[:2]))
                self._write(out)
                self.transport.close()  # type: ignore[union-attr]
                return
        if pos:
            del buf[:pos]
        Stats.frames_in += frames
        if out:
            self._write(out)

    def _write(self, out: list[bytes]) -> None:
        Stats.frames_out += len(out)
        Stats.writes += 1
        self.transport.write(b"".join(out) if len(out) > 1 else out[0])  # type: ignore[union-attr]

    def _upgrade(self, request: bytes) -> None:
        key = b""
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.upgraded = True

    def drop(self) -> None:
        assert self.transport is not None
        self.transport.abort()


async def _websockets_server(port: int) -> tuple[asyncio.AbstractServer, set]:
    from websockets.asyncio.server import serve

    live: set = set()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        Stats.conns += 1
        live.add(ws)
        try:
            async for text in ws:
                Stats.frames_in += 1
                try:
                    obj = _loads(text)
                except ValueError:
                    continue
                answer = _answer(obj, _now_text())
                if answer is not None:
                    # _answer builds a frame; websockets frames it itself: strip our header.
                    payload = answer[2:] if answer[1] < 126 else answer[4:]
                    Stats.frames_out += 1
                    Stats.writes += 1
                    await ws.send(payload.decode())
        except Exception:
            pass
        finally:
            live.discard(ws)

    server = await serve(
        handler, "127.0.0.1", port, compression=None, max_queue=None, ping_interval=None
    )
    return server, live


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    ws_live: set = set()
    if args.impl == "raw":
        server = await loop.create_server(
            RawConnection, "127.0.0.1", args.port, backlog=1024, reuse_address=True
        )
    else:
        server, ws_live = await _websockets_server(args.port)
    port = server.sockets[0].getsockname()[1]
    done = loop.create_future()

    def on_command() -> None:
        line = sys.stdin.readline()
        command = line.strip()
        if not line or command == "quit":
            if not done.done():
                done.set_result(None)
            return
        if command == "stats":
            reply = json.dumps(
                {
                    "cpu": time.process_time(),
                    "wall": time.monotonic(),
                    "conns": Stats.conns,
                    "live": len(Stats.live) + len(ws_live),
                    "frames_in": Stats.frames_in,
                    "frames_out": Stats.frames_out,
                    "writes": Stats.writes,
                }
            )
        elif command == "drop":
            victims = list(Stats.live)
            at = time.monotonic()
            for conn in victims:
                conn.drop()
            for ws in list(ws_live):
                ws.transport.abort()
            reply = f"dropped {len(victims) + len(ws_live)} {at!r}"
        else:
            reply = f"error unknown command {command!r}"
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()

    loop.add_reader(sys.stdin.fileno(), on_command)
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    try:
        await done
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--impl", choices=("raw", "websockets"), default="raw")
    args = parser.parse_args()
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()

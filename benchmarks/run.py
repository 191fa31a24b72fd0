"""wsync benchmarks (issues 6 and 15): wsync side by side with raw websocket-client and websockets.

A report, not a test: it exits non-zero only when a benchmark fails to run, never because a
target is missed. Run from the project root::

    python benchmarks/run.py              # the full run (a few minutes); writes BENCHMARKS.md
    python benchmarks/run.py --quick      # a smoke run (about a minute); writes nothing
    python benchmarks/run.py --n 100000 --reps 7 --output /tmp/b.md
    python benchmarks/run.py --only sequential,import --quick     # a subset, for quick checks

Before/after: every figure goes to JSON with ``--json PATH``; ``--baseline PATH`` (such a JSON
from an earlier run) adds a "before" column to the targets table, and the "no worse than before"
targets are judged against it (``--tolerance``, 10 % by default). ``--wsync DIR`` measures the
``wsync`` package of another checkout (e.g. ``git worktree add /tmp/before <commit>``)::

    python benchmarks/run.py --wsync /tmp/before --json /tmp/before.json --output /tmp/before.md
    python benchmarks/run.py --baseline /tmp/before.json --json /tmp/after.json

What it does:

- starts ONE protocol server (``benchmarks/bench_server.py``, asyncio, its own framing, answers
  batched per read) in a separate process, and asks it for its CPU time around every timed
  window, so the report shows how busy it was (it must never be the bottleneck);
- measures, in the same run, alternating contestants (the starting contestant rotates every
  repetition), each repetition on a fresh connection with a warm-up that is not timed:

  * pipelined throughput: N messages of 100 characters, 64 in flight; wsync with its futures
    (wait for the oldest when 64 are out) vs websocket-client (skip_utf8_validation=True) and
    websockets' sync client, each with a reader thread and a sender keeping 64 in flight
    (a semaphore), the same JSON frames (uuid4 messageId, ISO timestamp), correlated by
    messageId in a dict. A fourth, single-threaded raw-socket client with pre-built frames
    measures the server's ceiling;
  * sequential latency: ``send_and_wait`` vs the same loop by hand (send, recv, json.loads);
  * queue flush: N messages ``send()`` before ``connect()``, timed from CONFIRMED
    (``on_state_change``) to the last response;
  * reconnect: the server resets every connection; time from the reset to CONFIRMED, minus the
    backoff delay, for ``Backoff(initial=0)`` and ``Backoff(initial=0.02)``;
  * memory per queued message (tracemalloc); 1,000 idle connected clients in one process
    (threads with the first alone, then RSS and threads per client and the process's idle
    CPU); idle CPU of one connected client: each in a fresh child process;
  * ``import wsync`` (``benchmarks/import_time.py``, ``python -X importtime`` in fresh
    interpreters, bytecode compiled).

Medians over repetitions; ratios are ratios of medians. Nothing is pinned to a core: client and
server share the machine's cores, as they would on a developer's laptop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# WSYNC_BENCH_PATH: a directory holding the ``wsync`` package to measure (a snapshot, so that
# edits made to the working tree while a run is going on do not mix versions); default: ROOT.
WSYNC_PATH = Path(os.environ.get("WSYNC_BENCH_PATH") or ROOT)
sys.path.insert(0, str(WSYNC_PATH))

import websocket  # noqa: E402 - after the path fix above
import websockets  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

import wsync  # noqa: E402
from wsync import Backoff, Status  # noqa: E402

CONTENT = "x" * 100  # 100 bytes of content, as the issue says
WINDOW = 64
HEARTBEAT = 3600.0  # no heartbeat inside a timed window
SERVER_SCRIPT = Path(__file__).resolve().with_name("bench_server.py")
_escape = json.encoder.encode_basestring_ascii


# ---------------------------------------------------------------------------------------------
# The server process


class Server:
    """The benchmark server in a child process, driven over its stdin/stdout."""

    def __init__(self, impl: str = "raw") -> None:
        self.impl = impl
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--impl", impl],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        self.port = int(line[1])
        self.url = f"ws://127.0.0.1:{self.port}"
        self._lock = threading.Lock()

    def command(self, text: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
            return self.proc.stdout.readline().strip()

    def stats(self) -> dict[str, Any]:
        return json.loads(self.command("stats"))

    def drop(self) -> float:
        """Reset every connection; return the server's CLOCK_MONOTONIC time of the reset."""
        answer = self.command("drop").split()
        if answer[0] != "dropped":
            raise RuntimeError(f"drop failed: {answer}")
        return float(answer[2])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Window:
    """One timed window: wall time, this process's CPU time, the server's CPU time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> Window:
        self.s0 = self.server.stats()
        self.c0 = _cpu()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = _cpu() - self.c0
        s1 = self.server.stats()
        self.server_cpu = s1["cpu"] - self.s0["cpu"]
        self.server_writes = s1["writes"] - self.s0["writes"]
        self.server_frames = s1["frames_out"] - self.s0["frames_out"]


def _cpu() -> float:
    # CLOCK_PROCESS_CPUTIME_ID: every thread of this process, nanosecond resolution
    # (os.times() counts 10 ms ticks, far too coarse for an idle client).
    return time.process_time()


# ---------------------------------------------------------------------------------------------
# The work every raw contestant does by hand (wsync does the same inside)


def _stamp() -> str:
    dt = datetime.now(timezone.utc)
    return dt.isoformat(timespec="milliseconds")[:-6] + "Z"


def _message(client_id: str, message_id: str) -> str:
    return json.dumps(
        {
            "type": "message",
            "clientId": client_id,
            "content": CONTENT,
            "timestamp": _stamp(),
            "messageId": message_id,
        },
        separators=(",", ":"),
    )


def _connect_frame(client_id: str) -> str:
    return json.dumps(
        {"type": "connect", "clientId": client_id, "timestamp": _stamp(), "version": "1.0"},
        separators=(",", ":"),
    )


def _handshake(send: Callable[[str], Any], recv: Callable[[], Any], client_id: str) -> None:
    send(_connect_frame(client_id))
    confirm = json.loads(recv())
    if confirm.get("type") != "connect_confirm" or confirm.get("clientId") != client_id:
        raise RuntimeError(f"bad confirm: {confirm.get('type')}")


class RawPipe:
    """A reader thread and a sender keeping WINDOW in flight, over any send/recv pair."""

    def __init__(self, send: Callable[[str], Any], recv: Callable[[], Any]) -> None:
        self.send = send
        self.recv = recv
        self.client_id = str(uuid.uuid4())
        _handshake(send, recv, self.client_id)

    def run(self, count: int) -> None:
        pending: dict[str, bool] = {}
        slots = threading.Semaphore(WINDOW)
        error: list[BaseException] = []
        send, recv, loads, client_id = self.send, self.recv, json.loads, self.client_id

        def reader() -> None:
            try:
                release = slots.release
                pop = pending.pop
                for _ in range(count):
                    obj = loads(recv())
                    pop(obj["messageId"])
                    release()
            except BaseException as exc:  # reported by the sender
                error.append(exc)
                for _ in range(WINDOW):
                    slots.release()

        thread = threading.Thread(target=reader, name="bench-reader")
        thread.start()
        acquire = slots.acquire
        for _ in range(count):
            acquire()
            if error:
                break
            mid = str(uuid.uuid4())
            pending[mid] = True
            send(_message(client_id, mid))
        thread.join()
        if error:
            raise error[0]
        if pending:
            raise RuntimeError(f"{len(pending)} responses missing")


# ---------------------------------------------------------------------------------------------
# Contestants: pipelined throughput


@contextlib.contextmanager
def wsync_client(url: str, **options: Any) -> Iterator[wsync.Client]:
    client = wsync.Client(url, heartbeat_interval=HEARTBEAT, **options)
    try:
        client.connect(timeout=10)
        yield client
    finally:
        client.close()


def _wsync_pipeline(client: wsync.Client, count: int) -> None:
    window: deque[Any] = deque()
    send = client.send
    popleft, append = window.popleft, window.append
    for _ in range(count):
        if len(window) >= WINDOW:
            popleft().result(30)
        append(send(CONTENT))
    for future in window:
        future.result(30)


def pipe_wsync(server: Server, n: int, warm: int) -> Window:
    with wsync_client(server.url) as client:
        _wsync_pipeline(client, warm)
        with Window(server) as window:
            _wsync_pipeline(client, n)
    return window


def pipe_websocket_client(server: Server, n: int, warm: int) -> Window:
    ws = websocket.create_connection(server.url, skip_utf8_validation=True, enable_multithread=True)
    try:
        pipe = RawPipe(ws.send, ws.recv)
        pipe.run(warm)
        with Window(server) as window:
            pipe.run(n)
    finally:
        ws.close()
    return window


def _websockets_connect(url: str) -> Any:
    return ws_connect(url, compression=None, proxy=None, ping_interval=None, max_size=None)


def pipe_websockets(server: Server, n: int, warm: int) -> Window:
    with _websockets_connect(server.url) as ws:
        pipe = RawPipe(ws.send, ws.recv)
        pipe.run(warm)
        with Window(server) as window:
            pipe.run(n)
    return window


class CeilingClient:
    """A single-threaded raw-socket WebSocket client with pre-built frames: the server's ceiling.

    It does none of the client-side work (no JSON, no ids, no threads), so what it measures is
    how fast the server answers: if that is well above every contestant's rate, the server is
    not what limits them.
    """

    def __init__(self, port: int) -> None:
        import base64
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        self.buf = head.split(b"\r\n\r\n", 1)[1]
        client_id = str(uuid.uuid4())
        self.sock.sendall(self._frame(_connect_frame(client_id)))
        self._responses(1)

    @staticmethod
    def _frame(text: str) -> bytes:
        data = text.encode()
        n = len(data)
        head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
        return head + b"\0\0\0\0" + data  # a zero mask key: the payload is its own masked form

    def _responses(self, want: int) -> int:
        """Read until at least one frame arrived; return how many (at most ``want`` expected)."""
        got = 0
        while not got:
            data = self.sock.recv(262144)
            if not data:
                raise RuntimeError("server closed")
            buf = self.buf + data
            pos, n = 0, len(buf)
            while n - pos >= 2:
                length = buf[pos + 1] & 0x7F
                head = 2
                if length == 126:
                    if n - pos < 4:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                    head = 4
                if n - pos < head + length:
                    break
                pos += head + length
                got += 1
            self.buf = buf[pos:]
        return got

    def run(self, count: int) -> None:
        client_id = str(uuid.uuid4())
        frames = [self._frame(_message(client_id, str(uuid.uuid4()))) for _ in range(count)]
        self.timed(frames)

    def timed(self, frames: list[bytes]) -> None:
        sent = done = 0
        count = len(frames)
        while done < count:
            room = min(WINDOW - (sent - done), count - sent)
            if room > 0:
                self.sock.sendall(b"".join(frames[sent : sent + room]))
                sent += room
            done += self._responses(sent - done)

    def close(self) -> None:
        self.sock.close()


def pipe_ceiling(server: Server, n: int, warm: int) -> Window:
    client = CeilingClient(server.port)
    try:
        client.run(warm)
        cid = str(uuid.uuid4())
        frames = [client._frame(_message(cid, str(uuid.uuid4()))) for _ in range(n)]
        with Window(server) as window:
            client.timed(frames)
    finally:
        client.close()
    return window


# ---------------------------------------------------------------------------------------------
# Contestants: sequential latency


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "p50": ordered[n // 2],
        "p99": ordered[min(n - 1, int(n * 0.99))],
        "mean": sum(ordered) / n,
    }


class SeqWsync:
    """wsync's ``send_and_wait``, one round trip at a time."""

    def __init__(self, server: Server) -> None:
        self.client = wsync.Client(server.url, heartbeat_interval=HEARTBEAT)
        self.client.connect(timeout=10)

    def run(self, n: int) -> list[float]:
        call, clock, samples = self.client.send_and_wait, time.perf_counter, []
        for _ in range(n):
            t0 = clock()
            call(CONTENT, 10)
            samples.append(clock() - t0)
        return samples

    def close(self) -> None:
        self.client.close()


class SeqRaw:
    """The same round trip by hand, in the caller's thread: send, recv, json.loads, check id."""

    def __init__(self, send: Callable[[str], Any], recv: Callable[[], Any], close: Any) -> None:
        self.send, self.recv, self.close = send, recv, close
        self.client_id = str(uuid.uuid4())
        _handshake(send, recv, self.client_id)

    def run(self, n: int) -> list[float]:
        send, recv, loads, clock = self.send, self.recv, json.loads, time.perf_counter
        client_id, samples = self.client_id, []
        for _ in range(n):
            t0 = clock()
            mid = str(uuid.uuid4())
            send(_message(client_id, mid))
            if loads(recv())["messageId"] != mid:
                raise RuntimeError("response out of order")
            samples.append(clock() - t0)
        return samples


def seq_websocket_client(server: Server) -> SeqRaw:
    ws = websocket.create_connection(server.url, skip_utf8_validation=True)
    return SeqRaw(ws.send, ws.recv, ws.close)


def seq_websockets(server: Server) -> SeqRaw:
    ws = _websockets_connect(server.url)
    return SeqRaw(ws.send, ws.recv, ws.close)


class SeqThreadedReference:
    """The least a threaded client can do: send inline, a reader thread resolves a Future.

    Not a contestant with a target: it shows what one thread hop (reader -> caller) costs,
    the floor for any design with a dedicated reader thread, such as wsync's.
    """

    def __init__(self, server: Server) -> None:
        self.ws = websocket.create_connection(
            server.url, skip_utf8_validation=True, enable_multithread=True
        )
        self.client_id = str(uuid.uuid4())
        _handshake(self.ws.send, self.ws.recv, self.client_id)
        self.pending: dict[str, Future[Any]] = {}
        self.thread = threading.Thread(target=self._reader, name="bench-reader", daemon=True)
        self.thread.start()

    def _reader(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                obj = json.loads(self.ws.recv())
                future = self.pending.pop(obj["messageId"], None)
                if future is not None:
                    future.set_result(obj)

    def run(self, n: int) -> list[float]:
        clock, samples, send, pending = time.perf_counter, [], self.ws.send, self.pending
        for _ in range(n):
            t0 = clock()
            mid = str(uuid.uuid4())
            future: Future[Any] = Future()
            pending[mid] = future
            send(_message(self.client_id, mid))
            future.result(10)
            samples.append(clock() - t0)
        return samples

    def close(self) -> None:
        self.ws.abort()
        self.ws.close()
        self.thread.join(5)


# ---------------------------------------------------------------------------------------------
# Queue flush, reconnect


def queue_flush(server: Server, n: int) -> dict[str, float]:
    confirmed_at: list[float] = []

    def on_state(state: wsync.ConnectionState) -> None:
        if state.status is Status.CONFIRMED and not confirmed_at:
            confirmed_at.append(time.perf_counter())

    client = wsync.Client(server.url, heartbeat_interval=HEARTBEAT, on_state_change=on_state)
    try:
        t0 = time.perf_counter()
        futures = [client.send(CONTENT) for _ in range(n)]
        queued = time.perf_counter() - t0
        s0, c0 = server.stats(), _cpu()
        connect_at = time.perf_counter()
        client.connect(wait=False)
        for future in futures:
            future.result(120)
        end = time.perf_counter()
        s1, c1 = server.stats(), _cpu()
    finally:
        client.close()
    elapsed = end - confirmed_at[0]
    return {
        "rate": n / elapsed,
        "seconds": elapsed,
        "from_connect": end - connect_at,
        "send_rate_disconnected": n / queued,
        "server_util": (s1["cpu"] - s0["cpu"]) / (end - connect_at),
        "client_util": (c1 - c0) / (end - connect_at),
    }


def reconnect(server: Server, reps: int, warm: int, initial: float) -> dict[str, Any]:
    lock = threading.Lock()
    seen = threading.Condition(lock)
    events: list[tuple[Status, float]] = []

    def on_state(state: wsync.ConnectionState) -> None:
        with seen:
            events.append((state.status, time.monotonic()))
            seen.notify_all()

    backoff = Backoff(initial=initial, max_attempts=None)
    totals, noticed = [], []
    with wsync_client(server.url, backoff=backoff, on_state_change=on_state) as client:
        for i in range(warm + reps):
            with seen:
                # Everything before this drop is settled (CONFIRMED was the last event).
                seen.wait_for(lambda: events and events[-1][0] is Status.CONFIRMED, 10)
                start = len(events)
            # A response proves the connection: a loss then starts a fresh budget and the
            # next attempt waits delay(1) = initial. (A connection that never proved itself
            # counts as a failed attempt, and the delays would grow from drop to drop.)
            client.send_and_wait("proof", timeout=10)
            dropped_at = server.drop()
            with seen:
                ok = seen.wait_for(
                    lambda start=start: any(s is Status.CONFIRMED for s, _ in events[start:]), 10
                )
                batch = events[start:]
            if not ok:
                raise RuntimeError(f"no CONFIRMED within 10 s after a drop: {batch}")
            if i < warm:
                continue
            confirmed = next(t for s, t in batch if s is Status.CONFIRMED)
            lost = next(t for s, t in batch if s is Status.DISCONNECTED)
            totals.append(confirmed - dropped_at)
            noticed.append(lost - dropped_at)
        assert client.state.status is Status.CONFIRMED
    overheads = [t - initial for t in totals]
    return {
        "initial": initial,
        "total_p50": statistics.median(totals),
        "overhead_p50": statistics.median(overheads),
        "overhead_max": max(overheads),
        "overhead_p90": sorted(overheads)[int(len(overheads) * 0.9)],
        "noticed_p50": statistics.median(noticed),
        "reps": reps,
    }


def fresh_connection_floor(server: Server, reps: int) -> float:
    """A fresh websocket-client connection + wsync handshake, by hand: the floor for reconnect."""
    samples = []
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        ws = websocket.create_connection(server.url, skip_utf8_validation=True)
        _handshake(ws.send, ws.recv, str(uuid.uuid4()))
        samples.append(time.perf_counter() - t0)
        ws.close()
    return statistics.median(samples[2:])


# ---------------------------------------------------------------------------------------------
# Child processes: memory, RSS/threads, idle CPU (each in a clean interpreter)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _os_threads() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def child_memory(url: str, n: int) -> dict[str, Any]:
    import tracemalloc

    client = wsync.Client(url, heartbeat_interval=HEARTBEAT)  # never connected: all queued
    client.send("warm-up " + CONTENT)  # lazily built structures are not per-message cost
    contents = [f"{i:0100d}" for i in range(n)]  # the caller's own strings, made before
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    futures = [client.send(text) for text in contents]
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base - sys.getsizeof(futures)
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    top = []
    for stat in snapshot.statistics("lineno")[:8]:
        frame = stat.traceback[0]
        top.append(
            {
                "where": f"{Path(frame.filename).name}:{frame.lineno}",
                "per_message": stat.size / n,
            }
        )
    # The same, counting the content string as wsync's (the caller dropped its own).
    client2 = wsync.Client(url, heartbeat_interval=HEARTBEAT)
    client2.send("warm-up " + CONTENT)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    futures2 = [client2.send(f"{i:0100d}") for i in range(n)]
    gc.collect()
    with_content = tracemalloc.get_traced_memory()[0] - base - sys.getsizeof(futures2)
    tracemalloc.stop()
    client.close(0.5)
    client2.close(0.5)
    return {
        "per_message": used / n,
        "per_message_with_content": with_content / n,
        "content_size": sys.getsizeof(contents[0]),
        "top": top,
        "n": n,
    }


def _raise_nofile(need: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``need`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _thread_roles() -> dict[str, int]:
    """Live Python threads by name, numbering dropped (``wsync-reader-3.1`` -> ``wsync-reader``)."""
    roles: dict[str, int] = {}
    for thread in threading.enumerate():
        role = re.sub(r"-[\d.]+$", "", thread.name)
        roles[role] = roles.get(role, 0) + 1
    return roles


def _parallel(calls: list[Callable[[], Any]], deadline: float, workers: int = 32) -> None:
    """Run ``calls`` on a short-lived pool (joined before returning); each bounded by ``deadline``.

    Raises the first call's error, or TimeoutError if the pool is still busy at the deadline.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-pool") as pool:
        futures = [pool.submit(call) for call in calls]
        for future in futures:
            future.result(max(0.0, deadline - time.monotonic()))


def child_clients(url: str, n: int, idle_seconds: float) -> dict[str, Any]:
    """``n`` idle connected clients in this process: RSS, OS threads, and the idle CPU of it all.

    The first client connects alone: the threads of a process with one client (shared,
    process-wide threads included) and the RSS it added (imports and lazily built structures
    included) are read then. The other ``n - 1`` connect in parallel from a short-lived pool
    (gone before anything is measured), every connect bounded: RSS per client is theirs
    (marginal: lazy structures and process-wide threads already exist, and no thread reuses
    a stack cached from an exited one), threads per client count every thread the process
    gained since before the first client, divided by ``n``. The idle window (if any) measures
    the whole process's CPU.
    """
    if n < 2:
        raise ValueError("n must be at least 2")
    _raise_nofile(2 * n + 256)
    gc.collect()
    rss_import, threads_import, modules_import = _rss(), _os_threads(), len(sys.modules)
    clients = [wsync.Client(url, heartbeat_interval=HEARTBEAT)]
    t0 = time.monotonic()
    try:
        clients[0].connect(timeout=10)
        time.sleep(0.5)  # a benchmark, not a test: settle after the handshake
        gc.collect()
        rss0, threads0, modules0 = _rss(), _os_threads(), len(sys.modules)
        roles_one = _thread_roles()
        # Made after rss0: a client object is part of what a client costs.
        clients += [wsync.Client(url, heartbeat_interval=HEARTBEAT) for _ in range(n - 1)]
        budget = 30.0 + 0.05 * n
        t0 = time.monotonic()
        _parallel(
            [functools.partial(c.connect, timeout=budget) for c in clients[1:]],
            t0 + budget + 5,
            workers=min(n, 32),
        )
        connect_seconds = time.monotonic() - t0
        time.sleep(0.5)  # settle: handshakes done, nothing in flight
        gc.collect()
        rss1, threads1 = _rss(), _os_threads()
        roles = _thread_roles()
        out: dict[str, Any] = {}
        if idle_seconds > 0:
            tcpu0 = _thread_cpu()
            cpu0 = _cpu()
            time.sleep(idle_seconds)
            cpu = _cpu() - cpu0
            tcpu1 = _thread_cpu()
            out = {
                "idle_seconds": idle_seconds,
                "idle_cpu_ms_per_10s": cpu / idle_seconds * 10 * 1000,
                "idle_wsync_threads_ms_per_10s": _wsync_thread_cpu(tcpu0, tcpu1)
                / idle_seconds
                * 10
                * 1000,
            }
    finally:
        t1 = time.monotonic()
        _parallel([functools.partial(c.close, 2) for c in clients], t1 + 60, workers=min(n, 32))
        close_seconds = time.monotonic() - t1
    return out | {
        "clients": n,
        "connect_seconds": connect_seconds,
        "close_seconds": close_seconds,
        "rss_first_client": rss0 - rss_import,
        "modules_imported_by_first_client": modules0 - modules_import,
        "rss_per_client": (rss1 - rss0) / (n - 1),
        "threads_one_client": threads0 - threads_import,
        "thread_roles_one_client": roles_one,
        "threads_total": threads1,
        "threads_before_clients": threads_import,
        "threads_per_client": (threads1 - threads_import) / n,
        "thread_roles": roles,
    }


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """Name and CPU seconds of every live thread (CLOCK_THREAD_CPUTIME_ID of each), by ident."""
    out = {}
    for thread in threading.enumerate():
        with contextlib.suppress(Exception):
            assert thread.ident is not None
            clock = time.pthread_getcpuclockid(thread.ident)
            out[thread.ident] = (thread.name, time.clock_gettime(clock))
    return out


def _wsync_thread_cpu(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> float:
    """CPU seconds the ``wsync-*`` threads alive at both ends used in between."""
    return sum(
        cpu - before[ident][1]
        for ident, (name, cpu) in after.items()
        if name.startswith("wsync-") and ident in before
    )


def child_idle(url: str, seconds: float) -> dict[str, Any]:
    # The bare process first (the same sleep, no client), then a connected client.
    c0 = _cpu()
    time.sleep(seconds)
    bare = _cpu() - c0
    with wsync_client(url):
        time.sleep(1.0)  # settle after the handshake
        threads0 = _thread_cpu()
        c0 = _cpu()
        time.sleep(seconds)
        cpu = _cpu() - c0
        threads1 = _thread_cpu()
    return {
        "seconds": seconds,
        "cpu_ms_per_10s": cpu / seconds * 10 * 1000,
        "bare_ms_per_10s": bare / seconds * 10 * 1000,
        "wsync_threads_ms_per_10s": _wsync_thread_cpu(threads0, threads1) / seconds * 10 * 1000,
    }


def run_child(kind: str, url: str, *args: float) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--url", url, "--arg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


PEER_MODULES = ("websocket", "websockets.sync.client")


def run_import(runs: int) -> dict[str, Any]:
    """``import wsync`` and its peers, by ``import_time.py`` (or the stand-in) in a subprocess.

    The measured wsync (the snapshot) goes first on PYTHONPATH; bytecode is compiled first and
    PYTHONDONTWRITEBYTECODE is unset for the children (this machine sets it, and an import
    that compiles every module is not what a user's second run pays). The children run in the
    measured wsync's directory: ``python -c`` puts the working directory first on sys.path,
    which from the project root would import the working tree's wsync instead.
    """
    script = HERE / "import_time.py"
    fallback = not script.exists()
    if fallback:
        script = HERE / "_import_time_fallback.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(WSYNC_PATH), env.get("PYTHONPATH")) if p)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(WSYNC_PATH / "wsync")],
        env=env,
        check=True,
        timeout=120,
    )
    where = subprocess.run(  # also writes any missing bytecode of the dependencies
        [sys.executable, "-c", f"import {', '.join(PEER_MODULES)}, wsync; print(wsync.__file__)"],
        env=env,
        cwd=WSYNC_PATH,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(WSYNC_PATH.resolve()):
        raise RuntimeError(f"the import-time children import {where}, not {WSYNC_PATH}")
    result = subprocess.run(
        [sys.executable, str(script), "--runs", str(runs)],
        env=env,
        cwd=WSYNC_PATH,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} failed:\n{result.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data | {"script": script.name, "fallback": fallback}


# ---------------------------------------------------------------------------------------------
# The run


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f} msg/s"


def _us(x: float) -> str:
    return f"{x * 1e6:,.0f} µs"


class Report:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.errors: list[str] = []

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        print(f"--- {name} ...", flush=True)
        try:
            self.results[name] = fn()
        except Exception:
            self.errors.append(f"{name}: {traceback.format_exc()}")
            print(f"ERROR in {name}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            return
        print(f"    done in {time.perf_counter() - t0:.1f} s", flush=True)


def run_pipelined(server: Server, n: int, reps: int, warm: int) -> dict[str, Any]:
    contestants: list[tuple[str, Callable[[Server, int, int], Window]]] = [
        ("wsync", pipe_wsync),
        ("websocket-client", pipe_websocket_client),
        ("websockets sync", pipe_websockets),
        ("raw socket ceiling", pipe_ceiling),
    ]
    runs: dict[str, list[Window]] = {name: [] for name, _ in contestants}
    for rep in range(reps):
        order = contestants[rep % len(contestants) :] + contestants[: rep % len(contestants)]
        for name, fn in order:
            gc.collect()
            window = fn(server, n, warm)
            runs[name].append(window)
            print(
                f"    rep {rep + 1}/{reps} {name:20s} {n / window.wall:9,.0f} msg/s  "
                f"client CPU {window.cpu / window.wall:4.0%}  "
                f"server CPU {window.server_cpu / window.wall:4.0%}",
                flush=True,
            )
    out = {}
    for name, windows in runs.items():
        rates = [n / w.wall for w in windows]
        out[name] = {
            "rate": statistics.median(rates),
            "ratio": {
                other: statistics.median(
                    [n / w.wall / (n / o.wall) for w, o in zip(windows, others, strict=True)]
                )
                for other, others in runs.items()
            },
            "rates": rates,
            "client_cpu_us": statistics.median([w.cpu / n * 1e6 for w in windows]),
            "client_util": statistics.median([w.cpu / w.wall for w in windows]),
            "server_util": statistics.median([w.server_cpu / w.wall for w in windows]),
            "server_cpu_us": statistics.median([w.server_cpu / n * 1e6 for w in windows]),
            "frames_per_write": statistics.median(
                [w.server_frames / max(1, w.server_writes) for w in windows]
            ),
        }
    return out


def run_sequential(server: Server, n: int, reps: int, warm: int) -> dict[str, Any]:
    """Every contestant connected at once; blocks of round trips interleaved, order rotating.

    A repetition is one block per contestant, so a change in the machine's load hits every
    contestant alike; the per-repetition ratios to websocket-client are reported as well.
    """
    makers: list[tuple[str, Callable[[Server], Any]]] = [
        ("wsync", SeqWsync),
        ("websocket-client", seq_websocket_client),
        ("websockets sync", seq_websockets),
        ("reference: websocket-client + reader thread + Future", SeqThreadedReference),
    ]
    opened = []
    try:
        for name, make in makers:
            contestant = make(server)
            opened.append((name, contestant))
            contestant.run(warm)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in opened}
        for rep in range(reps):
            shift = rep % len(opened)
            for name, contestant in opened[shift:] + opened[:shift]:
                runs[name].append(_percentiles(contestant.run(n)))
            print(
                f"    rep {rep + 1}/{reps} p50: "
                + ", ".join(f"{name.split(':')[0]} {_us(runs[name][-1]['p50'])}" for name in runs),
                flush=True,
            )
    finally:
        for _, contestant in opened:
            contestant.close()
    base = runs["websocket-client"]
    return {
        name: {
            key: statistics.median([r[key] for r in stats_list]) for key in ("p50", "p99", "mean")
        }
        | {
            "p50s": [r["p50"] for r in stats_list],
            "ratio_p50": statistics.median(
                [r["p50"] / b["p50"] for r, b in zip(stats_list, base, strict=True)]
            ),
            "ratio_p99": statistics.median(
                [r["p99"] / b["p99"] for r, b in zip(stats_list, base, strict=True)]
            ),
        }
        for name, stats_list in runs.items()
    }


SECTIONS = ("pipelined", "sequential", "flush", "reconnect", "memory", "idle", "import")


def _sections(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(SECTIONS)}"
        )
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wsync benchmarks (issues 6 and 15)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small N, one pass")
    parser.add_argument("--n", type=int, help="pipelined messages per run (default 50,000)")
    parser.add_argument("--reps", type=int, help="repetitions per contestant (default 5)")
    parser.add_argument("--seq-n", type=int, help="round trips per sequential block (1,000)")
    parser.add_argument("--seq-reps", type=int, help="sequential blocks per contestant (20)")
    parser.add_argument("--flush-n", type=int, help="messages queued for the flush (100,000)")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU windows (default 10)")
    parser.add_argument(
        "--clients", type=int, help="idle clients in one process for RSS/threads (default 1,000)"
    )
    parser.add_argument(
        "--import-runs", type=int, help="fresh interpreters per module for import time (10)"
    )
    parser.add_argument("--server", choices=("raw", "websockets"), default="raw")
    parser.add_argument(
        "--only",
        type=_sections,
        help=f"run only these sections, comma-separated ({', '.join(SECTIONS)}); "
        "writes no report unless --output is given",
    )
    parser.add_argument("--json", help="also write every figure as JSON to this file")
    parser.add_argument(
        "--baseline",
        help="a --json file of an earlier run: adds a 'before' column, and the 'no worse than "
        "before' targets are judged against it",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.10,
        help="how much worse than the baseline still counts as 'no worse' (default 0.10 = 10%%)",
    )
    parser.add_argument(
        "--wsync",
        help="measure the wsync package of this checkout (a directory holding wsync/, e.g. a git "
        "worktree of an earlier commit) instead of this one",
    )
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="measure wsync/ in place (default: a copy taken at the start, so that edits made "
        "during the run cannot mix versions)",
    )
    parser.add_argument(
        "--output", help="report file (default: BENCHMARKS.md; --quick or --only: none)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--arg", type=float, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        a = args.arg
        children: dict[str, Callable[[], dict[str, Any]]] = {
            "memory": lambda: child_memory(args.url, int(a[0])),
            "clients": lambda: child_clients(args.url, int(a[0]), a[1]),
            "idle": lambda: child_idle(args.url, a[0]),
        }
        print(json.dumps(children[args.child]()))
        return 0

    quick = args.quick
    only = args.only or list(SECTIONS)
    n = args.n or (5_000 if quick else 50_000)
    reps = args.reps or (2 if quick else 5)
    seq_n = args.seq_n or (300 if quick else 1_000)
    seq_reps = args.seq_reps or (4 if quick else 20)
    flush_n = args.flush_n or (10_000 if quick else 100_000)
    idle_seconds = args.idle_seconds or (2.0 if quick else 10.0)
    clients = args.clients or 1_000
    import_runs = args.import_runs or (3 if quick else 10)
    warm = max(500, n // 10)
    flush_reps = 1 if quick else 3
    reconnect_reps = 5 if quick else 20
    output = args.output or (None if quick or args.only else str(ROOT / "BENCHMARKS.md"))
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    baseline = None
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        if "results" not in baseline:
            parser.error(f"{args.baseline} is not a --json file of run.py")

    if "WSYNC_BENCH_PATH" not in os.environ:
        measured = Path(args.wsync).resolve() if args.wsync else ROOT
        if not (measured / "wsync" / "__init__.py").is_file():
            parser.error(f"no wsync package in {measured}")
        source = _describe_source(measured)
        # Re-run this script on a copy of wsync/ taken now (children inherit the variable);
        # --no-snapshot: on the package in place.
        import shutil
        import tempfile

        snapshot = None if args.no_snapshot else tempfile.mkdtemp(prefix="wsync-bench-")
        if snapshot:
            shutil.copytree(
                measured / "wsync",
                Path(snapshot) / "wsync",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        env = dict(
            os.environ, WSYNC_BENCH_PATH=snapshot or str(measured), WSYNC_BENCH_SOURCE=source
        )
        forwarded = sys.argv[1:] if argv is None else argv
        try:
            return subprocess.call([sys.executable, __file__, *forwarded], env=env)
        finally:
            if snapshot:
                shutil.rmtree(snapshot, ignore_errors=True)
    source = os.environ.get("WSYNC_BENCH_SOURCE") or _describe_source(WSYNC_PATH)
    started = time.perf_counter()
    load_before = os.getloadavg()
    if clients < 2:
        parser.error("--clients must be at least 2")
    _raise_nofile(2 * clients + 256)  # inherited by the server and the children
    report = Report()
    server = Server(args.server)
    try:
        print(f"server ({args.server}) on {server.url}; N={n}, reps={reps}; {source}", flush=True)
        if "pipelined" in only:
            report.section("pipelined", lambda: run_pipelined(server, n, reps, warm))
        if "sequential" in only:
            report.section(
                "sequential", lambda: run_sequential(server, seq_n, seq_reps, max(200, seq_n))
            )

        def flush() -> dict[str, Any]:
            runs = []
            for rep in range(flush_reps):
                gc.collect()
                result = queue_flush(server, flush_n)
                print(
                    f"    rep {rep + 1}/{flush_reps} {_fmt_rate(result['rate'])} "
                    f"({result['seconds']:.2f} s; send() while disconnected "
                    f"{_fmt_rate(result['send_rate_disconnected'])})",
                    flush=True,
                )
                runs.append(result)
            return {key: statistics.median([r[key] for r in runs]) for key in runs[0]} | {
                "rates": [r["rate"] for r in runs]
            }

        if "flush" in only:
            report.section("queue flush", flush)

        def reconnects() -> dict[str, Any]:
            out = {"floor": fresh_connection_floor(server, reconnect_reps)}
            for initial in (0.0, 0.02):
                result = reconnect(server, reconnect_reps, 2, initial)
                print(
                    f"    initial={initial:g}: drop->CONFIRMED p50 "
                    f"{result['total_p50'] * 1e3:.2f} ms,"
                    f" overhead p50 {result['overhead_p50'] * 1e3:.2f} ms"
                    f" (max {result['overhead_max'] * 1e3:.2f} ms); loss noticed after"
                    f" {result['noticed_p50'] * 1e3:.2f} ms",
                    flush=True,
                )
                out[f"initial={initial:g}"] = result
            return out

        if "reconnect" in only:
            report.section("reconnect", reconnects)
        if "memory" in only:
            report.section("memory", lambda: run_child("memory", server.url, 10_000))

        def many_clients() -> dict[str, Any]:
            result = run_child("clients", server.url, clients, idle_seconds)
            print(
                f"    {clients:,} clients: connected in {result['connect_seconds']:.1f} s, "
                f"{result['rss_per_client'] / 1024:.1f} KiB RSS and "
                f"{result['threads_per_client']:.2f} threads per client "
                f"({result['threads_one_client']} with one client), idle CPU "
                f"{result['idle_cpu_ms_per_10s']:.2f} ms / 10 s",
                flush=True,
            )
            return result

        if "idle" in only:
            report.section("idle clients", many_clients)
            report.section("idle cpu", lambda: run_child("idle", server.url, idle_seconds))
    finally:
        server.stop()
    if "import" in only:
        report.section("import", lambda: run_import(import_runs))
    elapsed = time.perf_counter() - started
    info = {
        "command": command,
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "load": (load_before, os.getloadavg()),
        "quick": quick,
        "only": args.only,
        "elapsed": elapsed,
        "n": n,
        "reps": reps,
        "seq_n": seq_n,
        "seq_reps": seq_reps,
        "flush_n": flush_n,
        "clients": clients,
        "idle_seconds": idle_seconds,
        "import_runs": import_runs,
        "server_impl": args.server,
        "source": source,
        "versions": _versions(),
        "tolerance": args.tolerance,
        "baseline_path": args.baseline,
    }
    rows = _target_rows(report.results, baseline, args.tolerance)
    text = render(report, rows, baseline, **info)
    print()
    print(text)
    if output:
        Path(output).write_text(text)
        print(f"written to {output}")
    if args.json:
        document = {
            "info": info,
            "figures": _figures(report.results),
            "targets": [dict(zip(ROW_KEYS, row, strict=True)) for row in rows],
            "results": report.results,
            "errors": report.errors,
        }
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
        print(f"figures written to {args.json}")
    if report.errors:
        print(f"{len(report.errors)} benchmark(s) failed", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# The report


def _describe_source(path: Path) -> str:
    """Which wsync is measured: the commit of ``path``, and whether its wsync/ differs from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--", "wsync"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted changes in wsync/" if dirty else "")


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    return {
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "wsync": wsync.__version__,
        "websocket-client": websocket.__version__,
        "websockets": websockets.__version__,
        "attrs": _version("attrs"),
        "cattrs": _version("cattrs"),
    }


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _figures(r: dict[str, Any]) -> dict[str, float]:
    """Every headline figure of a run, flat, named with its unit (also the JSON's "figures")."""
    f: dict[str, float] = {}
    pipe = r.get("pipelined")
    if pipe:
        for name in ("wsync", "websockets sync", "websocket-client"):
            f[f"pipelined {name} msg/s"] = pipe[name]["rate"]
            f[f"pipelined {name} client CPU us/msg"] = pipe[name]["client_cpu_us"]
        f["pipelined wsync / websockets sync"] = pipe["wsync"]["ratio"]["websockets sync"]
        f["pipelined wsync / websocket-client"] = pipe["wsync"]["ratio"]["websocket-client"]
    seq = r.get("sequential")
    if seq:
        for name in ("wsync", "websocket-client", "websockets sync"):
            f[f"sequential {name} p50 us"] = seq[name]["p50"] * 1e6
            f[f"sequential {name} p99 us"] = seq[name]["p99"] * 1e6
        f["sequential wsync p50 / websocket-client p50"] = seq["wsync"]["ratio_p50"]
        if "ratio_p99" in seq["wsync"]:
            f["sequential wsync p99 / websocket-client p99"] = seq["wsync"]["ratio_p99"]
    flush = r.get("queue flush")
    if flush:
        f["queue flush msg/s"] = flush["rate"]
    for key, v in (r.get("reconnect") or {}).items():
        if key.startswith("initial="):
            f[f"reconnect overhead p50 ms, {key}"] = v["overhead_p50"] * 1e3
    mem = r.get("memory")
    if mem:
        f["memory per queued message B"] = mem["per_message_with_content"]
    many = r.get("idle clients")
    if many:
        f["idle clients"] = many["clients"]
        f["idle client RSS KiB, many clients"] = many["rss_per_client"] / 1024
        f["idle client RSS KiB, first client"] = many["rss_first_client"] / 1024
        f["idle client threads, 1 client"] = many["threads_one_client"]
        f["idle client threads, many clients"] = many["threads_per_client"]
        f["idle clients: threads in the process"] = many["threads_total"]
        f["idle clients: process idle CPU ms/10s"] = many["idle_cpu_ms_per_10s"]
        f["idle clients: connect s"] = many["connect_seconds"]
    idle = r.get("idle cpu")
    if idle:
        f["idle CPU ms/10s, 1 client"] = idle["cpu_ms_per_10s"]
    imp = r.get("import")
    if imp:
        for name in ("wsync", "websocket-client", "websockets sync"):
            f[f"import {name} ms"] = imp[name]
    return f


ROW_KEYS = ("metric", "before", "measured", "target", "ratio", "verdict")
Row = tuple[str, "str | None", str, str, str, str]


def _target_rows(r: dict[str, Any], baseline: dict[str, Any] | None, tolerance: float) -> list[Row]:
    """(metric, before, measured, target, ratio, verdict) for every target of issues 6 and 15.

    ``before`` is None without a baseline. "No worse than before" targets are judged against
    the baseline with ``tolerance`` (plus an absolute slack for figures so small that a
    fraction of them is below the machine's noise); without one, against issue 6's limits.
    """
    f = _figures(r)
    b = _figures(baseline["results"]) if baseline else {}
    rows: list[Row] = []

    def before(key: str, fmt: Callable[[float], str], ratio_key: str | None) -> str | None:
        if baseline is None:
            return None
        if key not in b:
            return "—"
        return fmt(b[key]) + (f" ({b[ratio_key]:.2f}x)" if ratio_key and ratio_key in b else "")

    def add(
        metric: str,
        key: str,
        fmt: Callable[[float], str],
        target: str,
        ratio: str,
        verdict: str,
        ratio_key: str | None = None,
    ) -> None:
        rows.append((metric, before(key, fmt, ratio_key), fmt(f[key]), target, ratio, verdict))

    def relative(
        metric: str, key: str, fmt: Callable[[float], str], ratio_key: str, peer: str, limit: float
    ) -> None:
        """A target relative to a peer measured in the same run (``limit`` > 1: at least)."""
        if key not in f or ratio_key not in f:
            return
        ratio, higher = f[ratio_key], limit > 1
        add(
            metric,
            key,
            fmt,
            f"{'>=' if higher else '<='} {limit:.1f}x {peer} ({fmt(f[peer_key[peer]])})",
            f"{ratio:.2f}x",
            _verdict(ratio >= limit if higher else ratio <= limit),
            ratio_key,
        )

    def absolute(metric: str, key: str, fmt: Callable[[float], str], limit: float) -> None:
        if key in f:
            v = f[key]
            add(metric, key, fmt, f"<= {fmt(limit)}", f"{v / limit:.2f}x", _verdict(v <= limit))

    def no_worse(
        metric: str,
        key: str,
        fmt: Callable[[float], str],
        *,
        higher: bool = False,
        slack: float = 0.0,
        fallback: tuple[str, float, float] | None = None,
    ) -> None:
        """No worse than the baseline; without one, ``fallback`` or none.

        ``fallback``: (target text, limit, what the ratio column divides by).
        """
        if key not in f:
            return
        v = f[key]
        if key in b:
            limit = b[key] * (1 - tolerance) - slack if higher else b[key] * (1 + tolerance) + slack
            allowed = f"{tolerance:.0%}" + (f" or {fmt(slack)}" if slack else "")
            target = f"no worse than before ({allowed}): {'>=' if higher else '<='} {fmt(limit)}"
            add(
                metric,
                key,
                fmt,
                target,
                f"{v / b[key]:.2f}x before",
                _verdict(v >= limit if higher else v <= limit),
            )
        elif fallback:
            text, limit, unit = fallback
            ok = v >= limit if higher else v <= limit
            add(metric, key, fmt, text, f"{v / unit:.2f}x", _verdict(ok))
        else:
            add(metric, key, fmt, "no worse than before (needs --baseline)", "—", "written down")

    peer_key = {
        "websocket-client p50": "sequential websocket-client p50 us",
        "websocket-client p99": "sequential websocket-client p99 us",
        "websockets sync": "pipelined websockets sync msg/s",
        "websocket-client": "pipelined websocket-client msg/s",
    }

    def us(x: float) -> str:
        return f"{x:,.0f} µs"

    def us1(x: float) -> str:
        return f"{x:,.1f} µs"

    def ms(x: float) -> str:
        return f"{x:,.2f} ms"

    def kib(x: float) -> str:
        return f"{x:,.1f} KiB"

    def count(x: float) -> str:
        return f"{x:,.2f}"

    rate = _fmt_rate
    relative(
        "sequential send_and_wait p50",
        "sequential wsync p50 us",
        us,
        "sequential wsync p50 / websocket-client p50",
        "websocket-client p50",
        1.0,
    )
    relative(
        "sequential send_and_wait p99",
        "sequential wsync p99 us",
        us,
        "sequential wsync p99 / websocket-client p99",
        "websocket-client p99",
        1.0,
    )
    for peer in ("websockets sync", "websocket-client"):
        relative(
            f"pipelined throughput vs {peer}",
            "pipelined wsync msg/s",
            rate,
            f"pipelined wsync / {peer}",
            peer,
            1.5,
        )
    if "pipelined wsync client CPU us/msg" in f:
        peer_cpu = f["pipelined websockets sync client CPU us/msg"]
        no_worse(
            f"client CPU per pipelined message, every thread (websockets sync: {us1(peer_cpu)})",
            "pipelined wsync client CPU us/msg",
            us1,
        )
    n = int(f.get("idle clients", 0))
    absolute(
        f"RSS per idle connected client ({n:,} in one process)",
        "idle client RSS KiB, many clients",
        kib,
        40,
    )
    absolute(
        "threads per idle connected client, a single client",
        "idle client threads, 1 client",
        count,
        2,
    )
    absolute(
        f"threads per idle connected client, {n:,} clients (process-wide threads shared)",
        "idle client threads, many clients",
        count,
        2,
    )
    no_worse(
        f"idle CPU of the process with {n:,} idle clients",
        "idle clients: process idle CPU ms/10s",
        lambda x: f"{x:,.2f} ms / 10 s",
        slack=0.5,
    )
    if "import wsync ms" in f:
        absolute("`import wsync`", "import wsync ms", lambda x: f"{x:,.0f} ms", 50)
    pipelined = f.get("pipelined wsync msg/s")
    no_worse(
        "queue flush, CONFIRMED -> last response",
        "queue flush msg/s",
        rate,
        higher=True,
        fallback=(f">= 0.9x wsync pipelined ({rate(pipelined)})", 0.9 * pipelined, pipelined)
        if pipelined
        else None,
    )
    for key in sorted(k for k in f if k.startswith("reconnect overhead p50 ms, ")):
        initial = key.rsplit(", ", 1)[1]
        no_worse(
            f"reconnect overhead p50, Backoff({initial})",
            key,
            ms,
            slack=0.3,
            fallback=("< 5 ms beyond the backoff delay", 5.0, 5.0),
        )
    no_worse(
        "memory per queued message",
        "memory per queued message B",
        lambda x: f"{x:,.0f} B",
        fallback=("<= 2 KiB (100-byte content, future included)", 2048, 2048),
    )
    no_worse(
        "idle CPU of one connected client (whole process)",
        "idle CPU ms/10s, 1 client",
        lambda x: f"{x:.3f} ms / 10 s",
        slack=0.25,
        fallback=("<= 1 ms / 10 s besides heartbeats", 1.0, 1.0),
    )
    return rows


def render(report: Report, rows: list[Row], baseline: dict[str, Any] | None, **info: Any) -> str:
    r = report.results
    load0, load1 = info["load"][0][0], info["load"][1][0]
    cores = os.cpu_count() or 1
    busy = max(load0, load1) > cores
    ver = info["versions"]
    lines = [
        "# wsync benchmarks",
        "",
        "Generated by `benchmarks/run.py` (issues 6 and 15); do not edit by hand, re-run it. A",
        "report, not a test: a missed target does not fail the run. Numbers from another machine",
        "do not transfer; compare the ratios, which are measured side by side in the same run.",
        "",
        f"- command: `{info['command'].strip()}`"
        + (" (smoke run: small N, not a result)" if info["quick"] else "")
        + (" (a subset of the sections)" if info["only"] else ""),
        f"- date: {info['date']}; the run took {info['elapsed']:.0f} s",
        f"- machine: {cores} cores (nproc {len(os.sched_getaffinity(0))}), {_cpu_model()}, "
        f"{platform.system()} {platform.release()}; load average (1 min) {load0:.2f} before, "
        f"{load1:.2f} after"
        + (": **other work shared the machine, expect noise**" if busy else ""),
        f"- wsync measured: {info['source']} (a copy taken when the run started)",
        f"- Python {ver['python']}; wsync {ver['wsync']}, websocket-client "
        f"{ver['websocket-client']}, websockets {ver['websockets']}, attrs {ver['attrs']}, "
        f"cattrs {ver['cattrs']}",
        f"- server: `benchmarks/bench_server.py --impl {info['server_impl']}` in its own process, "
        "loopback",
        f"- sizes: {info['n']:,} pipelined messages x {info['reps']} repetitions; "
        f"{info['seq_reps']} blocks of {info['seq_n']:,} sequential round trips; a flush of "
        f"{info['flush_n']:,}; {info['clients']:,} idle clients in one process; idle windows "
        f"{info['idle_seconds']:g} s; import time over {info['import_runs']} fresh interpreters "
        "per module",
    ]
    if baseline is not None:
        bi = baseline.get("info", {})
        lines.append(
            f"- before: {bi.get('source', '?')}, run {bi.get('date', '?')} "
            f"(`{str(bi.get('command', '?')).strip()}`), from `{info['baseline_path']}`; "
            f'"no worse than before" allows {info["tolerance"]:.0%} (plus the slack the target '
            "names for figures below the machine's noise)"
        )
    lines += ["", "## Targets", ""]
    if baseline is not None:
        lines += [
            "Before: the same figure from the baseline run (for a ratio target, its ratio in "
            "brackets).",
            "",
            "| metric | before | measured | target | ratio | verdict |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {m} | {bf} | {x} | {t} | {q} | {d} |" for m, bf, x, t, q, d in rows]
    else:
        lines += [
            "| metric | measured | target | ratio | verdict |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {m} | {x} | {t} | {q} | {d} |" for m, _, x, t, q, d in rows]
    pipe = r.get("pipelined")
    if pipe:
        lines += [
            "",
            "## Pipelined throughput (100-byte content, 64 in flight)",
            "",
            "Median over the repetitions, then every run. CPU per message: every thread of the",
            "process; CPU %: share of one core while timed (client process, server process).",
            "Frames per server write: responses the server wrote per write, which is how many",
            "client frames each of its reads found, so it shows how much the client batches.",
            "",
            "| client | msg/s | vs websocket-client | runs | client CPU/msg | client CPU "
            "| server CPU/msg | server CPU | frames per server write |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, v in pipe.items():
            lines.append(
                f"| {name} | {v['rate']:,.0f} | {v['ratio']['websocket-client']:.2f}x "
                f"| {', '.join(f'{x:,.0f}' for x in v['rates'])} "
                f"| {v['client_cpu_us']:.1f} µs | {v['client_util']:.0%} "
                f"| {v['server_cpu_us']:.1f} µs | {v['server_util']:.0%} "
                f"| {v['frames_per_write']:.1f} |"
            )
        contestants = {k: v for k, v in pipe.items() if k != "raw socket ceiling"}
        ceiling = pipe["raw socket ceiling"]["rate"]
        fastest = max(v["rate"] for v in contestants.values())
        busiest = max(v["server_util"] for v in contestants.values())
        lines += [
            "",
            f"The server is not the bottleneck: it used at most {busiest:.0%} of a core while a "
            f"contestant was timed, and a client that does no client-side work (one thread, "
            f"pre-built frames, the same window of 64) gets {ceiling:,.0f} msg/s out of it, "
            f"{ceiling / fastest:.1f}x the fastest contestant.",
        ]
    seq = r.get("sequential")
    if seq:
        lines += [
            "",
            "## Sequential round trips (send one message, wait for its response)",
            "",
            "All four connected at once; each repetition runs one block of round trips per",
            "contestant, in rotating order. p50/p99/mean: medians over the blocks. The reference",
            "row is not a contestant: the least a design with a reader thread can do (the caller",
            "sends, a reader thread resolves a `Future`: one thread hop).",
            "",
            "| client | p50 | p99 | mean | p50 / websocket-client p50 "
            "| p99 / websocket-client p99 | p50 of each block |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, v in seq.items():
            lines.append(
                f"| {name} | {_us(v['p50'])} | {_us(v['p99'])} | {_us(v['mean'])} "
                f"| {v['ratio_p50']:.2f}x | {v['ratio_p99']:.2f}x "
                f"| {', '.join(f'{x * 1e6:.0f}' for x in v['p50s'])} |"
            )
    flush = r.get("queue flush")
    if flush:
        lines += [
            "",
            "## Queue flush",
            "",
            f"{info['flush_n']:,} messages `send()` while disconnected, then `connect()`: "
            f"{_fmt_rate(flush['rate'])} from CONFIRMED (`on_state_change`) to the last response "
            f"(runs: {', '.join(f'{x:,.0f}' for x in flush['rates'])}); "
            f"{flush['from_connect']:.2f} s from `connect()`. `send()` itself ran at "
            f"{_fmt_rate(flush['send_rate_disconnected'])} while disconnected. Client CPU "
            f"{flush['client_util']:.0%}, server CPU {flush['server_util']:.0%} of a core.",
        ]
    rec = r.get("reconnect")
    if rec:
        lines += [
            "",
            "## Reconnect",
            "",
            "The server resets every connection (TCP RST); measured from the reset (the server's",
            "CLOCK_MONOTONIC, the same clock as the client's on Linux) to the CONFIRMED",
            "`on_state_change` callback, minus the backoff delay. For scale: a fresh",
            "websocket-client connection plus the wsync handshake, by hand, takes "
            f"{rec['floor'] * 1e3:.2f} ms (p50).",
            "",
            "| backoff | reset -> CONFIRMED p50 | overhead p50 | p90 | max "
            "| loss noticed after (p50) | drops |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, v in rec.items():
            if key.startswith("initial="):
                lines.append(
                    f"| Backoff({key}) | {v['total_p50'] * 1e3:.2f} ms "
                    f"| {v['overhead_p50'] * 1e3:.2f} ms | {v['overhead_p90'] * 1e3:.2f} ms "
                    f"| {v['overhead_max'] * 1e3:.2f} ms | {v['noticed_p50'] * 1e3:.2f} ms "
                    f"| {v['reps']} |"
                )
    mem, idle = r.get("memory"), r.get("idle cpu")
    many = r.get("idle clients")
    if mem or many or idle:
        lines += ["", "## Memory, threads, idle CPU", ""]
    if mem:
        if abs(mem["per_message_with_content"] - mem["per_message"]) < 8:
            held = (
                f"{mem['per_message_with_content']:,.0f} B per message, whether or not the caller "
                "keeps its own 100-character content string (wsync keeps none: the content "
                "lives in the encoded frame)"
            )
        else:
            held = (
                f"{mem['per_message_with_content']:,.0f} B per message when wsync holds the only "
                f"reference to its 100-character content ({mem['content_size']} B as a `str`), "
                f"{mem['per_message']:,.0f} B when the caller keeps its own"
            )
        lines += [
            f"tracemalloc, {mem['n']:,} messages queued while disconnected: {held}; the "
            "benchmark's own list of futures is not counted. Largest allocation sites, bytes "
            "per message:",
            "",
            "| where | bytes |",
            "| --- | --- |",
        ]
        lines += [f"| {t['where']} | {t['per_message']:.0f} |" for t in mem["top"]]
        lines.append("")
    if many:
        n = many["clients"]
        lines += [
            f"{n:,} idle connected clients in one process. The first connects alone: with it the "
            f"process has {many['threads_one_client']} OS threads more than before (threads by "
            f"name: {_roles(many['thread_roles_one_client'])}), and "
            f"{many['rss_first_client'] / 1024:,.1f} KiB more RSS (its connect imported "
            f"{many.get('modules_imported_by_first_client', '?')} more modules; lazily built "
            "structures and the new threads' malloc arenas count too). "
            f"The other {n - 1:,} connect in parallel from a pool of 32 "
            f"short-lived threads ({many['connect_seconds']:.1f} s; closing all took "
            f"{many['close_seconds']:.1f} s): {many['rss_per_client'] / 1024:.1f} KiB RSS each "
            f"(marginal), and {many['threads_per_client']:.2f} OS threads per client counting "
            f"every thread the process gained, {many['threads_total']:,} OS threads in the "
            f"process (threads by name: {_roles(many['thread_roles'])}). Idle CPU of the whole "
            f"process over {many['idle_seconds']:g} s: {many['idle_cpu_ms_per_10s']:.2f} ms per "
            f"10 s, of which the `wsync-*` threads used "
            f"{many['idle_wsync_threads_ms_per_10s']:.2f} ms (per-thread CPU clocks).",
            "",
        ]
    if idle:
        lines += [
            f"Idle CPU, one connected client (heartbeat_interval={HEARTBEAT:g} s) over "
            f"{idle['seconds']:g} s: {idle['cpu_ms_per_10s']:.3f} ms per 10 s for the whole "
            "process (its sleeping main thread included), of which the client's own `wsync-*` "
            f"threads used {idle['wsync_threads_ms_per_10s']:.3f} ms (per-thread CPU clocks); "
            f"the same process before the client: {idle['bare_ms_per_10s']:.3f} ms per 10 s.",
        ]
    imp = r.get("import")
    if imp:
        lines += [
            "",
            "## Import time",
            "",
            f"`python -X importtime -c 'import X'` in fresh interpreters, median of "
            f"{imp['runs']} (`benchmarks/{imp['script']}`), the measured wsync first on "
            "`PYTHONPATH`; bytecode compiled first and `PYTHONDONTWRITEBYTECODE` unset for those "
            "interpreters (a machine that sets it would otherwise compile every module on every "
            "import, which is not what a user's script pays).",
            "",
            "| module | import time |",
            "| --- | --- |",
            f"| `import wsync` | {imp['wsync']:.1f} ms |",
            f"| `import websocket` (websocket-client) | {imp['websocket-client']:.1f} ms |",
            f"| `import websockets.sync.client` | {imp['websockets sync']:.1f} ms |",
        ]
        if imp.get("top"):
            lines += [
                "",
                "Largest cumulative times inside `import wsync`:",
                "",
                "| module | cumulative |",
                "| --- | --- |",
            ]
            lines += [f"| `{name}` | {ms:.1f} ms |" for name, ms in imp["top"][:12]]
    if report.errors:
        lines += ["", "## Errors", ""] + [f"```\n{e}\n```" for e in report.errors]
    missed = Path(__file__).with_name("missed.md")
    if missed.exists():
        lines += ["", *missed.read_text().rstrip().splitlines()]
    lines += [
        "",
        "## Method",
        "",
        "- One server process for the whole run (`benchmarks/bench_server.py`: asyncio, its own",
        "  WebSocket framing, every frame of one read answered in one write).",
        "- Pipelined: each repetition opens a fresh connection and runs a warm-up that is not",
        "  timed; the contestant that goes first rotates every repetition. Sequential: every",
        "  contestant connected and warmed up first, then blocks interleaved. Medians are",
        "  reported and every run is listed, none dropped. A ratio is the median of the ratios",
        "  within each repetition (contestants measured minutes apart are never compared), so a",
        "  change in the machine's load cancels out. Nothing is pinned: client and server share",
        "  the cores.",
        "- Every raw contestant does the work wsync does: it builds the same JSON `message` frame",
        "  (uuid4 messageId, ISO timestamp), parses each response with `json.loads` and finds",
        "  its message by messageId. Pipelined, a reader thread and a sender keep 64 in flight",
        "  (a semaphore); wsync keeps 64 futures in flight and waits on the oldest.",
        "- CPU: `time.process_time()` of each process (all threads, ns resolution).",
        "- Memory, RSS/threads and idle CPU each run in a fresh interpreter (`--child`); the",
        "  many idle clients connect in parallel, every connect bounded, in a process whose",
        "  RLIMIT_NOFILE is raised to fit them.",
        "- Import time: `benchmarks/import_time.py` (`python -X importtime`), bytecode compiled.",
        "- Before/after: `--json PATH` writes every figure; `--baseline PATH` (such a file from an",
        '  earlier run) fills the "before" column and judges the "no worse than before"',
        "  targets against it, with the tolerance given above.",
        "- Where the time goes: `python benchmarks/profile_wsync.py` (yappi, every thread).",
    ]
    return "\n".join(lines) + "\n"


def _roles(roles: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(roles.items())) or "none"


def _version(name: str) -> str:
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())

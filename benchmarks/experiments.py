"""Prototypes of proposed optimisations, measured against the current code: how much each buys.

A report, not a test, and not how wsync should be changed: each prototype is a monkeypatch
applied in a child process (nothing under ``wsync/`` is edited), just enough to measure the
idea. The proposed patches themselves are written up in the benchmark report. Run from the
project root::

    python benchmarks/experiments.py                       # every prototype, 3 repetitions
    python benchmarks/experiments.py --variants baseline,inline-write --reps 5

Each variant runs in a fresh interpreter, variants alternate within every repetition, all
against one ``bench_server.py`` process. Jobs: run.py's pipelined job (64 futures in flight)
and its sequential job (``send_and_wait``). Reported: medians of msg/s, CPU per message (the
whole client process) and sequential p50.

Variants:

- ``futures``: ``MessageFuture`` without redundant lock round trips: ``result()`` returns at
  once when finished, ``done()``/``running()`` read the state without the condition,
  ``try_set_result_fast`` sets the result in the one acquisition it already makes.
- ``lean-actions``: the machine emits ``OnResponse`` only with an ``on_response`` callback and
  ``Forget`` only with a durable outbox (today: two attrs objects per response, then dropped).
- ``pooled-random``: message ids and frame mask keys cut from one ``os.urandom(4096)``
  (still the OS CSPRNG), instead of one ``getrandom`` system call (and GIL release) each.
- ``decode``: the response fast path builds ``Response`` without re-running its validators
  (the fast path checked the types already) and reuses the last parsed timestamp.
- ``stamp-cache``: the outgoing timestamp text is formatted once per millisecond, and the
  ``message`` text is built from a per-client prefix (today: ``datetime.now()``, ``replace``,
  ``isoformat`` and a validity check per message).
- ``lazy-condition``: ``MessageFuture`` makes its ``threading.Condition`` on first use
  (memory: ~1 KiB of the ~2.3 KiB per queued message).
- ``orjson``: ``orjson.loads`` for incoming frames (``pip install --target DIR orjson``,
  ``--extra-path DIR``).
- ``inline-write``: ``send()`` writes the frame itself (non-blocking ``send``, the rest left to
  the writer) when nothing else is in flight or being written: no thread hop on the way out.
- ``inline-idle-only``: for an engine that has its own send fast path (``send_inline``): take
  it only when nothing is in flight, so that pipelined sends are batched by the writer.
- ``all``: every variant above but ``orjson`` (``inline-write`` and ``inline-idle-only`` apply
  to whichever engine they fit).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

VARIANTS = (
    "baseline",
    "futures",
    "lean-actions",
    "pooled-random",
    "decode",
    "stamp-cache",
    "lazy-condition",
    "inline-write",
    "inline-idle-only",
    "all",
)


# ---------------------------------------------------------------------------------------------
# The prototypes


def _framing() -> Any:
    """The module that defines the Transport wsync uses (and its _encode_frame, _utf8)."""
    from wsync import _transport

    return sys.modules[_transport.Transport.__module__]


def patch_futures() -> None:
    from concurrent.futures import _base

    from wsync._futures import MessageFuture

    finished, done_states = (
        _base.FINISHED,
        (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _base.FINISHED),
    )
    running_state = _base.RUNNING
    base_result = _base.Future.result

    def result(self: Any, timeout: float | None = None) -> Any:
        if self._state == finished and self._exception is None:
            return self._result  # set before _state, under the GIL: safe without the lock
        return base_result(self, timeout)

    def done(self: Any) -> bool:
        return self._state in done_states

    def running(self: Any) -> bool:
        return self._state == running_state

    def try_set_result_fast(self: Any, value: Any) -> bool:
        cond = self._condition
        with cond:
            if self._state in done_states:
                return True
            if self._done_callbacks:
                return False
            self._result = value
            self._state = finished
            for waiter in self._waiters:
                waiter.add_result(self)
            cond.notify_all()
        return True

    MessageFuture.result = result
    MessageFuture.done = done
    MessageFuture.running = running
    MessageFuture.try_set_result_fast = try_set_result_fast


def patch_lean_actions() -> None:
    from wsync import _engine, _machine

    EntryState, Forget, Resolve, OnResponse = (
        _machine.EntryState,
        _machine.Forget,
        _machine.Resolve,
        _machine.OnResponse,
    )

    def _on_response(self: Any, frame: Any, actions: list[Any]) -> None:
        self.received += 1
        if self.want_on_response:
            actions.append(OnResponse(frame))
        entry = self.pending.pop(frame.message_id, None)
        if entry is None:
            return
        if entry.state is EntryState.QUEUED:
            self.queued -= 1
        else:
            self.in_flight -= 1
        entry.state = EntryState.DONE
        actions.append(Resolve(entry, frame))
        if self.durable:
            actions.append(Forget((entry.message_id,)))
        if not self.pending:
            self.wake_waiters = True

    _machine.Machine._on_response = _on_response
    _machine.Machine.want_on_response = True
    _machine.Machine.durable = True
    original_init = _engine.Engine.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        has = getattr(self, "_has_on_response", None)  # the engine's attribute has moved before
        self._machine.want_on_response = (
            has if has is not None else getattr(self, "_on_response", None) is not None
        )
        self._machine.durable = self._durable

    _engine.Engine.__init__ = __init__


class _Pool:
    """Random bytes cut from one os.urandom(4096): thread-safe (deque ops are atomic)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: collections.deque[bytes] = collections.deque()

    def take(self) -> bytes:
        try:
            return self.items.popleft()
        except IndexError:
            size = self.size
            data = os.urandom(4096)
            self.items.extend(data[i : i + size] for i in range(size, 4096 - size + 1, size))
            return data[:size]


def patch_pooled_random() -> None:
    from wsync import _engine

    _transport = _framing()
    ids, keys = _Pool(16), _Pool(4)
    mask, bits = (1 << 128) - 1 ^ (0xF000 << 64) ^ (0xC000 << 48), (0x4000 << 64) | (0x8000 << 48)

    class _UUID:
        @staticmethod
        def uuid4() -> str:
            h = "%032x" % ((int.from_bytes(ids.take(), "big") & mask) | bits)
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    _engine.uuid = _UUID  # Engine.send: str(uuid.uuid4()); str() of a str is itself
    encode = _transport._encode_frame
    names = encode.__code__.co_varnames[: encode.__code__.co_argcount]
    if "_urandom" in names:
        defaults = list(encode.__defaults__ or ())
        defaults[-1] = lambda n: keys.take()
        encode.__defaults__ = tuple(defaults)
    else:  # pragma: no cover - the transport changed: say so rather than measure nothing
        print("pooled-random: _encode_frame has no _urandom parameter; ids only", file=sys.stderr)


def patch_decode() -> None:
    from wsync import protocol

    Response, parse = protocol.Response, protocol.parse_timestamp
    new, setattr_ = object.__new__, object.__setattr__
    last: list[Any] = [None, None]

    def _decode_fast(obj: dict[str, Any]) -> Any:
        tag = obj.get("type")
        stamp = obj.get("timestamp")
        if type(stamp) is not str:
            return None
        try:
            if stamp == last[0]:
                when = last[1]
            else:
                when = parse(stamp)
                last[0], last[1] = stamp, when
            if tag == "response":
                message_id = obj.get("messageId")
                content = obj.get("content")
                if type(message_id) is str and message_id and type(content) is str:
                    frame = new(Response)  # checked above: what the validators would check
                    setattr_(frame, "message_id", message_id)
                    setattr_(frame, "content", content)
                    setattr_(frame, "timestamp", when)
                    return frame
            elif tag == "pong":
                return protocol.Pong(timestamp=when)
        except ValueError:
            pass
        return None

    protocol._decode_fast = _decode_fast


def patch_stamp_cache() -> None:
    from wsync import _engine, protocol
    from wsync._futures import MessageFuture
    from wsync._machine import Entry

    escape = protocol._escape
    last: list[Any] = [-1, ""]
    time_ns = time.time_ns

    def _new_entry(self: Any, message_id: str, content: str) -> Any:
        ms = time_ns() // 1_000_000
        if ms != last[0]:
            stamp = protocol.format_timestamp(protocol.now())
            last[0], last[1] = ms, stamp
        else:
            stamp = last[1]
        prefix = self.__dict__.get("_prefix")
        if prefix is None:
            prefix = self._prefix = '{"type":"message","clientId":' + escape(self.client_id)
        if not message_id or type(message_id) is not str:
            return original(self, message_id, content)
        text = (
            f'{prefix},"content":{escape(content)},"timestamp":"{stamp}",'
            f'"messageId":{escape(message_id)}}}'
        )
        return Entry(message_id, content, text, MessageFuture(message_id, self._cancelled))

    original = _engine.Engine._new_entry
    _engine.Engine._new_entry = _new_entry


def patch_lazy_condition() -> None:
    from concurrent.futures import _base

    from wsync._futures import MessageFuture

    pending, running, finished = _base.PENDING, _base.RUNNING, _base.FINISHED
    cancelled, notified = _base.CANCELLED, _base.CANCELLED_AND_NOTIFIED
    done_states = (cancelled, notified, finished)
    create = threading.Lock()  # one per process: makes a future's Condition exactly once
    base = _base.Future

    def __init__(self: Any, message_id: str, on_cancel: Any = None) -> None:
        # Future.__init__ minus the Condition, made on first use: by a waiter, a
        # done-callback, cancel(). A future nobody waits on never gets one.
        self._state = pending
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []
        self.message_id = message_id
        self._on_cancel = on_cancel

    def _condition(self: Any) -> Any:
        cond = self.__dict__.get("_cond")
        if cond is None:
            with create:
                cond = self.__dict__.get("_cond")
                if cond is None:
                    cond = self.__dict__["_cond"] = threading.Condition()
        return cond

    def set_running_or_notify_cancel(self: Any) -> bool:
        if "_cond" not in self.__dict__:
            with create:
                if "_cond" not in self.__dict__:  # no Condition: no waiter, no callback
                    if self._state == pending:
                        self._state = running
                        return True
                    if self._state == cancelled:
                        self._state = notified
                        return False
                    raise RuntimeError("Future in unexpected state")
        return base.set_running_or_notify_cancel(self)

    def try_set_result_fast(self: Any, value: Any) -> bool:
        if "_cond" not in self.__dict__:
            with create:
                if "_cond" not in self.__dict__:  # no Condition: no waiter, no callback
                    if self._state not in done_states:
                        self._result = value
                        self._state = finished
                    return True
        cond = self._condition
        with cond:
            if self._state in done_states:
                return True
            if self._done_callbacks:
                return False
            self._result = value
            self._state = finished
            for waiter in self._waiters:
                waiter.add_result(self)
            cond.notify_all()
        return True

    MessageFuture.__init__ = __init__
    MessageFuture._condition = property(_condition)
    MessageFuture.set_running_or_notify_cancel = set_running_or_notify_cancel
    MessageFuture.try_set_result_fast = try_set_result_fast


def patch_orjson() -> None:
    import orjson

    from wsync import protocol

    loads, fallback = orjson.loads, protocol._loads

    def _loads(text: str) -> Any:
        try:
            return loads(text)
        except ValueError:
            return fallback(text)

    protocol._loads = _loads


def patch_inline_write() -> None:
    from wsync import _engine

    framing = _framing()
    TransportClosed, _encode_frame, _utf8 = (
        framing.TransportClosed,
        framing._encode_frame,
        framing._utf8,
    )
    Engine = _engine.Engine
    if hasattr(Engine, "_write_inline"):
        print("inline-write: the engine has its own send fast path; not patched", file=sys.stderr)
        return
    original_send = Engine.send
    original_write = Engine._write
    original_writer_loop = Engine._writer_loop
    confirmed = _engine.Status.CONFIRMED

    def send(self: Any, content: str, message_id: str | None) -> Any:
        if self._durable:
            return original_send(self, content, message_id)
        mid = str(_engine.uuid.uuid4()) if message_id is None else message_id
        entry = self._new_entry(mid, content)
        machine = self._machine
        with self._lock:
            self._check_can_send(mid)
            machine.send(entry)
            if not machine.wake_writer:
                return entry.future
            machine.wake_writer = False
            generation = machine.generation
            transport = self._transports.get(generation)
            if (
                getattr(self, "_busy", False)
                or getattr(self, "_leftover", None)
                or transport is None
                or machine.status is not confirmed
                or machine.in_flight
                or machine.controls
                or machine._bucket is not None
                or len(machine._to_write) != 1
            ):
                self._writer_cv.notify()
                return entry.future
            _, entries = machine.take_writes(generation, self._clock())
            self._busy = True
        try:
            _write_inline(self, generation, transport, entries)
        finally:
            with self._lock:
                self._busy = False
                if machine.has_writes() or getattr(self, "_leftover", None):
                    self._writer_cv.notify()
        return entry.future

    def _write_inline(self: Any, generation: int, transport: Any, entries: list[Any]) -> None:
        written, skipped, texts = [], [], []
        for entry in entries:
            future = entry.future
            if future.running():
                ok = True
            else:
                try:
                    ok = future.set_running_or_notify_cancel()
                except RuntimeError:
                    ok = False
            (written if ok else skipped).append(entry)
            if ok:
                texts.append(entry.text)
        data = b"".join([_encode_frame(1, _utf8(text)) for text in texts])
        error = None
        sent = 0
        with transport._send_lock:
            if transport._closed_reason is not None or transport._close_sent:
                error = TransportClosed(transport._closed_reason or "close frame already sent")
            elif data:
                try:
                    sent = transport._sock._sock.send(data, socket.MSG_DONTWAIT)  # ws:// only
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    error = transport._lost(exc)
        with self._lock:
            if error is None and sent < len(data):
                self._leftover = (generation, transport, data[sent:])  # the writer sends it first
            later = self._apply(self._machine.writes_done(generation, written, skipped))
            if error is not None:
                lost = _engine.ConnectError(f"connection lost while writing: {error}")
                later += self._apply(
                    self._machine.on_connection_lost(generation, lost, self._clock())
                )
        self._carry_out(later)

    def _writer_loop(self: Any) -> None:
        # The original loop, with two more rules: wait while send() writes inline, and
        # write a leftover of an inline write before anything else.
        machine = self._machine
        while True:
            with self._lock:
                while True:
                    if self._closing:
                        transports = list(self._closing_transports)
                        break
                    if getattr(self, "_busy", False):
                        self._writer_cv.wait()
                        continue
                    leftover = getattr(self, "_leftover", None)
                    if leftover is not None:
                        self._leftover = None
                        self._busy = True
                        break
                    if machine.has_writes():
                        now = self._clock()
                        if not machine.controls:
                            next_at = machine.next_write_at(now)
                            if next_at is not None and next_at > now:
                                self._writer_cv.wait(next_at - now)
                                continue
                        generation = machine.generation
                        controls, entries = machine.take_writes(generation, now)
                        transport = self._transports.get(generation)
                        self._busy = True
                        break
                    self._writer_cv.wait()
            if self._closing:
                for each in transports:
                    each.send_close()
                return
            try:
                if leftover is not None:
                    _, transport, data = leftover
                    with contextlib.suppress(TransportClosed):  # the reader sees the loss too
                        transport._write(data)
                else:
                    original_write(self, generation, transport, controls, entries)
            finally:
                with self._lock:
                    self._busy = False

    assert original_writer_loop is not None
    Engine.send = send
    Engine._writer_loop = _writer_loop


def patch_inline_idle_only() -> None:
    from wsync import _machine

    Machine = _machine.Machine
    if not hasattr(Machine, "send_inline"):
        print("inline-idle-only: no send fast path in this engine; not patched", file=sys.stderr)
        return
    original = Machine.send_inline

    def send_inline(self: Any, entry: Any, now: float) -> bool:
        if self.in_flight:  # messages in flight: leave it to the writer, which batches
            self.send(entry)
            return False
        return original(self, entry, now)

    Machine.send_inline = send_inline


PATCHES = {
    "futures": patch_futures,
    "lean-actions": patch_lean_actions,
    "pooled-random": patch_pooled_random,
    "decode": patch_decode,
    "stamp-cache": patch_stamp_cache,
    "lazy-condition": patch_lazy_condition,
    "orjson": patch_orjson,
    "inline-write": patch_inline_write,
    "inline-idle-only": patch_inline_idle_only,
}


def apply(variant: str) -> None:
    if variant == "baseline":
        return
    names = [p for p in PATCHES if p != "orjson"] if variant == "all" else variant.split("+")
    for name in names:
        PATCHES[name]()


# ---------------------------------------------------------------------------------------------
# Child: one variant, both jobs


def child(url: str, variant: str, n: int, seq_n: int) -> dict[str, Any]:
    apply(variant)
    out: dict[str, Any] = {}
    with bench.wsync_client(url) as client:
        bench._wsync_pipeline(client, max(500, n // 10))
        c0, t0 = time.process_time(), time.perf_counter()
        bench._wsync_pipeline(client, n)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out["rate"] = n / wall
        out["cpu_us"] = cpu / n * 1e6
        call = bench.CONTENT
        for _ in range(max(200, seq_n // 10)):
            client.send_and_wait(call, 10)
        samples = []
        c0 = time.process_time()
        for _ in range(seq_n):
            t = time.perf_counter()
            client.send_and_wait(call, 10)
            samples.append(time.perf_counter() - t)
        out["seq_cpu_us"] = (time.process_time() - c0) / seq_n * 1e6
        samples.sort()
        out["p50"] = samples[len(samples) // 2]
        out["p99"] = samples[int(len(samples) * 0.99)]
    return out


def micro(variant: str, n: int) -> dict[str, float]:
    """Per-message CPU of each stage, one thread, no sockets: the same code for every variant.

    send: ``Client.send`` while disconnected (id, timestamp, frame text, entry, future,
    machine). writer: ``Engine._write`` of batches of 64 to a transport that frames them
    but has no socket. reader: ``decode`` + machine + ``_apply`` of one response (what the
    reader does after ``recv``). result: ``future.result()`` of a finished future.
    Best of 5, microseconds per message.
    """
    apply(variant)
    import wsync
    from wsync import protocol
    from wsync._values import Status

    _transport = _framing()

    class FramingTransport:
        def send_texts(self, texts: list[str]) -> None:
            b"".join([_transport._encode_frame(1, _transport._utf8(t)) for t in texts])

    def one_round() -> dict[str, float]:
        client = wsync.Client("ws://127.0.0.1:9", heartbeat_interval=HEARTBEAT_MICRO)
        engine = client._engine
        machine = engine._machine
        t0 = time.perf_counter()
        futures = [client.send(bench.CONTENT) for _ in range(n)]
        send = time.perf_counter() - t0
        # Pretend the connection of generation 1 is confirmed; entries go to the writer.
        machine.generation, machine._conn_open = 1, True
        machine.status = Status.CONFIRMED
        machine._to_write = collections.deque(machine.pending.values())
        transport = FramingTransport()
        t0 = time.perf_counter()
        while True:
            with engine._lock:
                _, entries = machine.take_writes(1, engine._clock(), 64)
            if not entries:
                break
            engine._write(1, transport, [], entries)
        write = time.perf_counter() - t0
        stamp = protocol.format_timestamp(protocol.now())
        texts = [
            f'{{"type":"response","messageId":"{f.message_id}","content":"{bench.CONTENT}",'
            f'"timestamp":"{stamp}"}}'
            for f in futures
        ]
        decode, clock = protocol.decode, engine._clock
        t0 = time.perf_counter()
        for text in texts:
            frame = decode(text)
            with engine._lock:
                engine._apply(machine.on_frame(1, frame, clock()))
        read = time.perf_counter() - t0
        t0 = time.perf_counter()
        for future in futures:
            future.result()
        result = time.perf_counter() - t0
        machine._conn_open = False
        machine.status = Status.DISCONNECTED
        client.close(0.1)
        return {
            "send": send / n * 1e6,
            "writer": write / n * 1e6,
            "reader": read / n * 1e6,
            "result": result / n * 1e6,
        }

    rounds = [one_round() for _ in range(5)]
    best = {k: min(r[k] for r in rounds) for k in rounds[0]}
    best["total"] = sum(best.values())
    return best


HEARTBEAT_MICRO = 3600.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--seq-n", type=int, default=3_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--extra-path", help="a directory to put on sys.path (orjson)")
    parser.add_argument(
        "--micro", action="store_true", help="per-stage CPU, one thread, no sockets, instead"
    )
    parser.add_argument(
        "--commits",
        help="compare commits instead of patches: comma-separated git revisions (read with "
        "`git archive`, nothing in the checkout changes); the first is the baseline",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.extra_path:
        sys.path.insert(0, args.extra_path)
    if args.child:
        if args.micro:
            print(json.dumps(micro(args.child, 10_000)))
        else:
            print(json.dumps(child(args.url, args.child, args.n, args.seq_n)))
        return 0
    if args.micro:
        return run_micro(args)
    if args.commits:
        return run_commits(args)
    if "WSYNC_BENCH_PATH" not in os.environ:
        # Every child measures one copy of wsync/, taken now: the working tree may change
        # while the variants run, and baseline and variant must run the same code.
        import shutil
        import tempfile

        snapshot = tempfile.mkdtemp(prefix="wsync-exp-")
        shutil.copytree(bench.WSYNC_PATH / "wsync", Path(snapshot) / "wsync")
        os.environ["WSYNC_BENCH_PATH"] = snapshot
        try:
            return main()
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
    variants = args.variants.split(",")
    server = bench.Server()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    failed = False
    try:
        for rep in range(args.reps):
            order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
            for variant in order:
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--url",
                    server.url,
                    "--n",
                    str(args.n),
                    "--seq-n",
                    str(args.seq_n),
                ]
                if args.extra_path:
                    command += ["--extra-path", args.extra_path]
                proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
                if proc.returncode:
                    print(f"{variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    failed = True
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results[variant].append(r)
                print(
                    f"rep {rep + 1} {variant:16s} {r['rate']:8,.0f} msg/s {r['cpu_us']:6.1f} µs "
                    f"CPU/msg | seq p50 {r['p50'] * 1e6:6.0f} µs, CPU {r['seq_cpu_us']:6.1f} µs",
                    flush=True,
                )
    finally:
        server.stop()
    med = {
        v: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        for v, rs in results.items()
        if rs
    }
    base = results.get("baseline") or []

    def paired(v: str, key: str) -> str:
        # The median of per-repetition ratios: variants of one repetition ran minutes apart at
        # most, so a change in the machine's load cancels out.
        pairs = [x[key] / b[key] for x, b in zip(results[v], base, strict=False)]
        return f"{statistics.median(pairs):.2f}x" if pairs and len(results[v]) == len(base) else ""

    print(
        f"\nload average {os.getloadavg()[0]:.2f}; medians of {args.reps} runs; ratios: median "
        "of the per-repetition ratios to baseline\n"
    )
    print(
        "| variant | pipelined msg/s | ratio | CPU/msg | ratio | seq p50 | ratio "
        "| seq CPU/msg | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for v, m in med.items():
        print(
            f"| {v} | {m['rate']:,.0f} | {paired(v, 'rate')} | {m['cpu_us']:.1f} µs "
            f"| {paired(v, 'cpu_us')} | {m['p50'] * 1e6:.0f} µs | {paired(v, 'p50')} "
            f"| {m['seq_cpu_us']:.1f} µs | {paired(v, 'seq_cpu_us')} |"
        )
    return 1 if failed else 0


def run_commits(args: argparse.Namespace) -> int:
    """Each revision's wsync/ extracted to a directory; children alternate between them."""
    import shutil
    import tempfile

    revisions = args.commits.split(",")
    root = tempfile.mkdtemp(prefix="wsync-commits-")
    trees = {}
    try:
        for rev in revisions:
            tree = Path(root) / rev.replace("/", "_").replace("~", "-")
            tree.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(bench.ROOT), "archive", "--format=tar", rev, "wsync"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            trees[rev] = str(tree)
        server = bench.Server()
        results: dict[str, list[dict[str, Any]]] = {rev: [] for rev in revisions}
        try:
            for rep in range(args.reps):
                for rev in revisions[rep % len(revisions) :] + revisions[: rep % len(revisions)]:
                    command = [
                        sys.executable,
                        __file__,
                        "--child",
                        "baseline",
                        "--url",
                        server.url,
                        "--n",
                        str(args.n),
                        "--seq-n",
                        str(args.seq_n),
                    ]
                    env = dict(os.environ, WSYNC_BENCH_PATH=trees[rev])
                    proc = subprocess.run(
                        command, capture_output=True, text=True, timeout=600, env=env
                    )
                    if proc.returncode:
                        print(f"{rev}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                        return 1
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    results[rev].append(r)
                    print(
                        f"rep {rep + 1} {rev:12s} {r['rate']:8,.0f} msg/s {r['cpu_us']:6.1f} µs "
                        f"CPU/msg | seq p50 {r['p50'] * 1e6:6.0f} µs, CPU "
                        f"{r['seq_cpu_us']:6.1f} µs",
                        flush=True,
                    )
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = results[revisions[0]]
    print(
        f"\nload average {os.getloadavg()[0]:.2f}; medians of {args.reps} runs; ratios: median "
        f"of the per-repetition ratios to {revisions[0]}\n"
    )
    print("| revision | pipelined msg/s | ratio | CPU/msg | seq p50 | ratio | seq CPU/msg |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rev, rs in results.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}

        def ratio(key: str, rs: list[dict[str, Any]] = rs) -> str:
            pairs = [x[key] / b[key] for x, b in zip(rs, base, strict=True)]
            return f"{statistics.median(pairs):.2f}x"

        print(
            f"| {rev} | {med['rate']:,.0f} | {ratio('rate')} | {med['cpu_us']:.1f} µs "
            f"| {med['p50'] * 1e6:.0f} µs | {ratio('p50')} | {med['seq_cpu_us']:.1f} µs |"
        )
    return 0


def run_micro(args: argparse.Namespace) -> int:
    if "WSYNC_BENCH_PATH" not in os.environ:
        import shutil
        import tempfile

        snapshot = tempfile.mkdtemp(prefix="wsync-exp-")
        shutil.copytree(bench.WSYNC_PATH / "wsync", Path(snapshot) / "wsync")
        os.environ["WSYNC_BENCH_PATH"] = snapshot
        try:
            return run_micro(args)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
    variants = args.variants.split(",")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for rep in range(args.reps):
        for variant in variants[rep % len(variants) :] + variants[: rep % len(variants)]:
            command = [sys.executable, __file__, "--child", variant, "--micro"]
            if args.extra_path:
                command += ["--extra-path", args.extra_path]
            proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if proc.returncode:
                print(f"{variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = {v: {k: min(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
    stages = ("send", "writer", "reader", "result", "total")
    print("\nper-message CPU by stage, one thread, no sockets (µs; best of all runs)\n")
    print("| variant | " + " | ".join(stages) + " | total vs baseline |")
    print("| --- " * (len(stages) + 2) + "|")
    for v, b in best.items():
        ratio = b["total"] / best["baseline"]["total"] if "baseline" in best else float("nan")
        print(f"| {v} | " + " | ".join(f"{b[k]:.2f}" for k in stages) + f" | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where wsync's time goes per message: yappi (every thread, CPU clock) on the benchmark jobs.

A report, not a test. Run from the project root (needs ``pip install yappi``)::

    python benchmarks/profile_wsync.py                  # pipelined and sequential, 20,000 each
    python benchmarks/profile_wsync.py --job sequential --n 5000 --top 40

It starts ``benchmarks/bench_server.py`` in a separate process (so only the client is
profiled), runs the same jobs as ``run.py`` (warm-up first, not profiled), and prints, per
thread and per function, the CPU time per message (``tottime``: time in the function itself;
``per call``), plus a summary by area (engine, machine, protocol, transport, futures, ...).
The profiler (builtins included) inflates CPU time several times over, small calls most; the
job is run once without it first, and the areas are also shown scaled to that figure.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

import wsync

try:
    import yappi
except ImportError:  # pragma: no cover
    sys.exit("profile_wsync.py needs yappi: pip install yappi")

AREAS = [
    ("wsync/_engine.py", "wsync engine"),
    ("wsync/_workers.py", "wsync workers (reader, writer loops)"),
    ("wsync/_machine.py", "wsync machine"),
    ("wsync/_ledger.py", "wsync ledger"),
    ("wsync/protocol.py", "wsync protocol (encode/decode)"),
    ("wsync/_values.py", "wsync values (ids)"),
    ("wsync/_connection.py", "wsync transport (socket I/O)"),
    ("wsync/_frames.py", "wsync frames (parse, mask)"),
    ("wsync/_futures.py", "wsync futures"),
    ("wsync/_dispatch.py", "wsync dispatch"),
    ("wsync/_client.py", "wsync client facade"),
    ("wsync/", "wsync (other modules)"),
    ("websocket/", "websocket-client"),
    ("concurrent/futures", "concurrent.futures"),
    ("threading.py", "threading (locks, conditions)"),
    ("enum.py", "enum"),
    ("uuid.py", "uuid"),
    ("json/", "json"),
    ("attr", "attrs"),
]


BUILTIN_AREAS = [
    (("sendall", "recv", "send'", "recv_into", "urandom"), "C: socket I/O, urandom"),
    (("acquire", "release", "_thread.", "wait"), "C: locks (acquire, release, wait)"),
    (("scan", "encode_basestring", "loads", "dumps"), "C: json"),
]


def area(module: str, name: str) -> str:
    for needle, label in AREAS:
        if needle in module:
            return label
    if "run.py" in module:
        return "benchmark loop"
    for needles, label in BUILTIN_AREAS:
        if any(needle in name for needle in needles):
            return label
    return "C: other builtins (len, isinstance, datetime, bytes, ...)"


def job_pipelined(client: wsync.Client, n: int) -> None:
    bench._wsync_pipeline(client, n)


def job_sequential(client: wsync.Client, n: int) -> None:
    call = client.send_and_wait
    for _ in range(n):
        call(bench.CONTENT, 10)


def profile(job: str, n: int, top: int, server: bench.Server) -> None:
    fn = job_pipelined if job == "pipelined" else job_sequential
    with bench.wsync_client(server.url) as client:
        fn(client, max(500, n // 10))  # warm-up, not profiled
        # The same job without the profiler, for scale: the profile's µs are inflated.
        c0, t0 = time.process_time(), time.perf_counter()
        fn(client, n)
        plain_cpu, plain_wall = time.process_time() - c0, time.perf_counter() - t0
        yappi.clear_stats()
        yappi.set_clock_type("cpu")
        yappi.set_context_name_callback(lambda: threading.current_thread().name)
        t0 = time.perf_counter()
        yappi.start(builtins=True, profile_threads=True)
        fn(client, n)
        yappi.stop()
        wall = time.perf_counter() - t0
        contexts = list(yappi.get_thread_stats())
        stats = yappi.get_func_stats()
        per_thread = {
            ctx.id: list(yappi.get_func_stats(filter={"ctx_id": ctx.id})) for ctx in contexts
        }
    print(
        f"\n=== {job}: {n:,} messages, {wall:.2f} s wall under the profiler "
        f"({n / wall:,.0f} msg/s) ==="
    )
    print(
        f"without the profiler: {n / plain_wall:,.0f} msg/s, "
        f"{plain_cpu / n * 1e6:.1f} µs client CPU per message (every thread)"
    )
    print("\nCPU per message by thread (µs):")
    for ctx in sorted(contexts, key=lambda c: -c.ttot):
        print(f"  {ctx.name:22s} {ctx.ttot / n * 1e6:8.2f}")
    by_area: dict[str, float] = defaultdict(float)
    rows = []
    for s in stats:
        by_area[area(s.module, s.name)] += s.tsub
        rows.append(s)
    total = sum(by_area.values())
    scale = plain_cpu / total if total else 0.0
    print(
        f"\nCPU per message by area (tottime, µs; total {total / n * 1e6:.1f}; the last "
        f"column scaled to the {plain_cpu / n * 1e6:.1f} µs measured without the profiler):"
    )
    for name, t in sorted(by_area.items(), key=lambda kv: -kv[1]):
        print(f"  {name:50s} {t / n * 1e6:8.2f}  {t / total:5.1%}  {t * scale / n * 1e6:6.2f}")
    # Per thread, the top functions by own time.
    names = {ctx.id: ctx.name for ctx in contexts}
    for ctx_id, funcs in per_thread.items():
        name = names[ctx_id]
        funcs.sort(key=lambda s: -s.tsub)
        thread_total = sum(s.tsub for s in funcs)
        if thread_total / n < 1e-6:
            continue
        print(f"\n-- thread {name}: {thread_total / n * 1e6:.1f} µs/msg own time; top {top} --")
        print(f"  {'µs/msg':>7} {'calls/msg':>9}  function")
        for s in funcs[:top]:
            where = f"{Path(s.module).name}:{s.lineno}" if s.lineno else Path(s.module).name
            print(f"  {s.tsub / n * 1e6:7.2f} {s.ncall / n:9.2f}  {s.name} ({where})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("pipelined", "sequential", "both"), default="both")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    server = bench.Server()
    try:
        jobs = ["pipelined", "sequential"] if args.job == "both" else [args.job]
        for job in jobs:
            profile(job, args.n if job == "pipelined" else max(1, args.n // 4), args.top, server)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""send() throughput through a Client: in-memory outbox vs SQLiteOutbox (FULL and NORMAL).

A report, not a test. Run from the project root::

    python benchmarks/outbox_send_bench.py            # 10,000 sends each, 1 and 8 threads
    python benchmarks/outbox_send_bench.py --n 2000   # quicker

The client is never connected, so every message stays queued and the figure is the cost of
``send()`` itself: for SQLiteOutbox, a committed row before ``send()`` returns (concurrent
senders share commits). Each row is the median of --reps runs, each on a fresh file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsync

CONTENT = "x" * 100


def run(kind: str, n: int, threads: int, folder: Path) -> float:
    outbox = None
    if kind != "memory":
        path = folder / f"{kind}-{time.monotonic_ns()}.sqlite"
        outbox = wsync.SQLiteOutbox(path, synchronous=kind)
    client = wsync.Client("ws://127.0.0.1:9", client_id="bench", outbox=outbox)
    per_thread = n // threads

    def work() -> None:
        for _ in range(per_thread):
            client.send(CONTENT)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    client.close()
    return per_thread * threads / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        for threads in (1, 8):
            for kind in ("memory", "NORMAL", "FULL"):
                rates = [run(kind, args.n, threads, folder) for _ in range(args.reps)]
                rows.append((kind, threads, statistics.median(rates)))
    memory = {t: r for k, t, r in rows if k == "memory"}
    print(f"{args.n:,} sends of 100 characters, median of {args.reps}")
    print("| outbox | threads | send()/s | µs per send | vs in-memory |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, threads, rate in rows:
        label = "in-memory" if kind == "memory" else f"SQLiteOutbox({kind})"
        ratio = rate / memory[threads]
        print(f"| {label} | {threads} | {rate:,.0f} | {1e6 / rate:,.1f} | {ratio:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

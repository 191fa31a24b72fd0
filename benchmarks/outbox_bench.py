"""Measure SQLiteOutbox throughput: adds (sequential and 8 threads), discards, delivery counts.

A report, not a test. Run from the project root::

    python benchmarks/outbox_bench.py            # 10,000 messages per scenario
    python benchmarks/outbox_bench.py --quick    # 1,000: a smoke run
    python benchmarks/outbox_bench.py --dir /path/on/the/disk/you/care/about --repeat 5

Each scenario uses a fresh file in a temporary directory (under ``--dir`` if given: the
numbers are about that disk's fsync). Contents are 200 characters, ids are UUID4 strings,
as the client makes them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsync._sqlite_outbox import SQLiteOutbox

CONTENT = "x" * 200
THREADS = 8

# Count add transactions, to show group commit at work whatever the disk's noise.
_commits = 0
_original_commit = SQLiteOutbox._commit


def _counting_commit(self: SQLiteOutbox, batch: Any) -> None:
    global _commits
    _commits += 1
    _original_commit(self, batch)


SQLiteOutbox._commit = _counting_commit  # type: ignore[method-assign]  # benchmark-only probe


def _fresh(directory: Path, synchronous: str) -> SQLiteOutbox:
    box = SQLiteOutbox(directory / f"{uuid.uuid4()}.sqlite", synchronous=synchronous)
    box.claim("bench")
    return box


def sequential_adds(directory: Path, n: int, synchronous: str) -> float:
    box = _fresh(directory, synchronous)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    start = time.perf_counter()
    for message_id in ids:
        box.add(message_id, CONTENT)
    elapsed = time.perf_counter() - start
    box.release()
    return elapsed


def threaded_adds(directory: Path, n: int, synchronous: str, *, serialized: bool) -> float:
    """n adds spread over THREADS threads; serialized: behind one outer lock (no group commit)."""
    box = _fresh(directory, synchronous)
    per_thread = n // THREADS
    outer = threading.Lock()
    barrier = threading.Barrier(THREADS + 1)

    def run() -> None:
        ids = [str(uuid.uuid4()) for _ in range(per_thread)]
        barrier.wait()
        for message_id in ids:
            if serialized:
                with outer:
                    box.add(message_id, CONTENT)
            else:
                box.add(message_id, CONTENT)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    box.release()
    return elapsed


def discards(directory: Path, n: int, batch: int, *, relaxed: bool) -> float:
    box = _fresh(directory, "FULL")
    box._relaxed_discards = relaxed  # benchmark-only switch, see SQLiteOutbox
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for message_id in ids:
        box.add(message_id, CONTENT)
    start = time.perf_counter()
    for i in range(0, n, batch):
        box.discard(ids[i : i + batch])
    elapsed = time.perf_counter() - start
    box.release()
    return elapsed


def delivery_counts(directory: Path, n: int, batch: int) -> float:
    box = _fresh(directory, "FULL")
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for message_id in ids:
        box.add(message_id, CONTENT)
    start = time.perf_counter()
    for i in range(0, n, batch):
        box.count_deliveries(ids[i : i + batch])
    elapsed = time.perf_counter() - start
    box.release()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 messages instead of 10,000")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per scenario; the median is shown (3)"
    )
    args = parser.parse_args(argv)
    n = 1_000 if args.quick else 10_000
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)

    scenarios: list[tuple[str, Callable[[Path], float]]] = [
        ("add, 1 thread, FULL", lambda d: sequential_adds(d, n, "FULL")),
        ("add, 1 thread, NORMAL", lambda d: sequential_adds(d, n, "NORMAL")),
        (
            f"add, {THREADS} threads, FULL (group commit)",
            lambda d: threaded_adds(d, n, "FULL", serialized=False),
        ),
        (
            f"add, {THREADS} threads, NORMAL (group commit)",
            lambda d: threaded_adds(d, n, "NORMAL", serialized=False),
        ),
        (
            f"add, {THREADS} threads behind one lock, FULL",
            lambda d: threaded_adds(d, n, "FULL", serialized=True),
        ),
        ("discard, batches of 1, FULL, relaxed", lambda d: discards(d, n, 1, relaxed=True)),
        ("discard, batches of 1, FULL, fsync'ed", lambda d: discards(d, n, 1, relaxed=False)),
        ("discard, batches of 100, FULL, relaxed", lambda d: discards(d, n, 100, relaxed=True)),
        ("count_deliveries, batches of 1, FULL", lambda d: delivery_counts(d, n, 1)),
        ("count_deliveries, batches of 100, FULL", lambda d: delivery_counts(d, n, 100)),
    ]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="wsync-outbox-bench-") as tmp:
        directory = Path(tmp)
        print(
            f"{n} messages per scenario, {len(CONTENT)}-character contents, "
            f"median of {repeat} runs, in {directory}"
        )
        print(f"{'scenario':<46} {'messages/s':>12} {'us/message':>11} {'adds/commit':>12}")
        global _commits
        for name, scenario in scenarios:
            _commits = 0
            elapsed = statistics.median(scenario(directory) for _ in range(repeat))
            per_commit = f"{n * repeat / _commits:.2f}" if name.startswith("add") else ""
            print(f"{name:<46} {n / elapsed:>12,.0f} {elapsed / n * 1e6:>11.1f} {per_commit:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

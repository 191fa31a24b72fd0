"""Import time of ``wsync`` side by side with websocket-client and websockets' sync client.

A report, not a test. Run from the project root::

    python benchmarks/import_time.py            # 15 fresh interpreters per contestant
    python benchmarks/import_time.py --runs 31

What it does: compiles wsync's bytecode first (an editable install with
``PYTHONDONTWRITEBYTECODE`` set would otherwise recompile wsync on every import, which no
installed wheel does), then starts ``python -X importtime -c "import X"`` ``--runs`` times per
contestant with that variable unset, the contestants interleaved so that a noisy neighbour
hits them alike. A contestant's figure is the cumulative time of its top-level line(s) of the
``-X importtime`` report (for ``websockets.sync.client``: ``websockets``, ``websockets.sync``
and ``websockets.sync.client``, the packages Python imports first), in milliseconds; the
report shows the median, and the median self time of wsync's own line. ``top`` lists the
modules under ``import wsync`` with the largest median cumulative time.

The last line of stdout is JSON::

    {"wsync": ms, "websocket-client": ms, "websockets sync": ms, "runs": N,
     "top": [[module, cumulative_ms], ...]}
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# WSYNC_BENCH_PATH: a directory holding the ``wsync`` package to measure (as in run.py).
WSYNC_PATH = Path(os.environ.get("WSYNC_BENCH_PATH") or ROOT)

# (key in the JSON, module to import)
CONTESTANTS: tuple[tuple[str, str], ...] = (
    ("wsync", "wsync"),
    ("websocket-client", "websocket"),
    ("websockets sync", "websockets.sync.client"),
)
TOP = 12


def _parse(report: str) -> list[tuple[int, str, float, float]]:
    """The ``-X importtime`` lines as (depth, module, self ms, cumulative ms), in order."""
    rows = []
    for line in report.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        head, cumulative_us, name = line.split("|", 2)
        self_us = head.rsplit(":", 1)[1]
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((depth, name.strip(), float(self_us) / 1000, float(cumulative_us) / 1000))
    return rows


def measure_once(module: str) -> tuple[float, float, dict[str, float]]:
    """One fresh interpreter importing ``module``: (cumulative ms, self ms, {module: cum ms}).

    The cumulative figure sums the top-level lines of ``module`` and of its parent packages;
    the dictionary holds every module imported under them, with its cumulative time.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WSYNC_PATH), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=env,
        cwd=WSYNC_PATH,  # ``-c`` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    parts = module.split(".")
    wanted = {".".join(parts[: i + 1]) for i in range(len(parts))}
    rows = _parse(result.stderr)
    # The report lists a module after its children: the lines of one top-level import are the
    # run of deeper lines just before its depth-0 line.
    cumulative = 0.0
    self_ms = 0.0
    inner: dict[str, float] = {}
    pending: list[tuple[str, float]] = []
    for depth, name, own, cum in rows:
        if depth == 0:
            if name in wanted:
                cumulative += cum
                if name == module:
                    self_ms = own
                for child, child_cum in pending:
                    inner[child] = inner.get(child, 0.0) + child_cum
            pending = []
        else:
            pending.append((name, cum))
    return cumulative, self_ms, inner


def main(argv: list[str] | None = None) -> int:
    """Measure, print a table, and print the JSON figures on the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per contestant")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    compileall.compile_dir(str(WSYNC_PATH / "wsync"), quiet=1)
    for _, module in CONTESTANTS:  # warm the disk cache and any bytecode, untimed
        measure_once(module)

    cumulative: dict[str, list[float]] = {key: [] for key, _ in CONTESTANTS}
    wsync_self: list[float] = []
    inner_runs: list[dict[str, float]] = []
    for run in range(args.runs):
        order = CONTESTANTS[run % len(CONTESTANTS) :] + CONTESTANTS[: run % len(CONTESTANTS)]
        for key, module in order:
            cum, own, inner = measure_once(module)
            cumulative[key].append(cum)
            if key == "wsync":
                wsync_self.append(own)
                inner_runs.append(inner)

    names = {name for inner in inner_runs for name in inner}
    medians = {name: statistics.median([inner.get(name, 0.0) for inner in inner_runs])
               for name in names}
    top = sorted(medians.items(), key=lambda item: -item[1])[:TOP]

    print(f"import time, median of {args.runs} fresh interpreters (-X importtime, cumulative):")
    for key, module in CONTESTANTS:
        values = cumulative[key]
        print(
            f"  {key:<18} import {module:<24} {statistics.median(values):7.1f} ms"
            f"  (min {min(values):.1f}, max {max(values):.1f})"
        )
    print(f"  wsync self time (its own line): {statistics.median(wsync_self):.2f} ms")
    print("heaviest modules under import wsync (median cumulative ms):")
    for name, ms in top:
        print(f"  {ms:7.2f}  {name}")
    figures = {key: round(statistics.median(cumulative[key]), 2) for key, _ in CONTESTANTS}
    print(
        json.dumps(
            {
                **figures,
                "runs": args.runs,
                "top": [[name, round(ms, 2)] for name, ms in top],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

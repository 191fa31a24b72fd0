"""Import time of wsync and its peers: run.py's stand-in while import_time.py is absent.

Its one job: print, as the last stdout line, the JSON that ``benchmarks/import_time.py`` prints
(``{"wsync": ms, "websocket-client": ms, "websockets sync": ms, "runs": N, "top": [[module,
cumulative_ms], ...]}``), measured with ``python -X importtime`` in fresh interpreters (the
median over the runs of the top-level import's cumulative time). It imports whatever ``wsync``
the interpreter finds first (run.py puts its snapshot first on ``PYTHONPATH``) and must not touch
the package or write anything but bytecode caches. Bytecode must be compiled for a fair figure:
run.py compiles the snapshot and unsets PYTHONDONTWRITEBYTECODE before calling this.

    python benchmarks/_import_time_fallback.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# name in the JSON -> the statement a script using it runs
SUBJECTS = {
    "wsync": "wsync",
    "websocket-client": "websocket",
    "websockets sync": "websockets.sync.client",
}


def _importtime(module: str) -> dict[str, float]:
    """Cumulative import time (ms) of every module imported by ``import module``, fresh process."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out: dict[str, float] = {}
    lines = result.stderr.splitlines()
    # Startup's own imports end with ``site``; only what follows is the ``-c`` statement's.
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith("| site")]
    for line in lines[starts[-1] + 1 if starts else 0 :]:
        # "import time:       self [us] |  cumulative | imported package"
        if not line.startswith("import time:") or "[us]" in line:
            continue
        fields = line[len("import time:") :].split("|")
        if len(fields) != 3:
            continue
        name = fields[2].strip()
        out[name] = max(out.get(name, 0.0), int(fields[1]) / 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per module")
    args = parser.parse_args(argv)
    report: dict[str, object] = {}
    top: list[list[object]] = []
    for name, module in SUBJECTS.items():
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=60)  # warm
        runs = [_importtime(module) for _ in range(args.runs)]
        totals = [run.get(module, 0.0) for run in runs]
        report[name] = round(statistics.median(totals), 2)
        if name == "wsync":
            median_run = sorted(runs, key=lambda run: run.get(module, 0.0))[len(runs) // 2]
            ranked = sorted(median_run.items(), key=lambda item: -item[1])
            top = [[mod, round(ms, 2)] for mod, ms in ranked if mod != module][:15]
    report["runs"] = args.runs
    report["top"] = top
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

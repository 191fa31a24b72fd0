#!/usr/bin/env bash
# RFC 6455 conformance: Autobahn|Testsuite's fuzzing server against wsync's own connection layer.
#
#   bash compliance/autobahn/run.sh
#
# 1. Installs wstest (autobahntestsuite 25.10.1, Python 2.7 only) into compliance/autobahn/.venv27
#    the first time, from pyenv's Python 2.7.18 (idempotent: skipped when wstest is there).
# 2. Starts `wstest -m fuzzingserver` on 127.0.0.1:$AUTOBAHN_PORT (default 9001) with every client
#    case except 12.* and 13.* (permessage-deflate, which wsync does not offer).
# 3. Runs client.py with $WSYNC_PYTHON (default: the repository's .venv/bin/python, else python3),
#    which echoes every case through wsync's Connector + Transport and asks for the reports.
# 4. Reads reports/clients/index.json and exits non-zero unless every case's behaviour is OK,
#    NON-STRICT or INFORMATIONAL.
# Bounded in time ($AUTOBAHN_TIME_LIMIT seconds for the cases, default 900); wstest is always
# stopped on the way out.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv27"
port="${AUTOBAHN_PORT:-9001}"
limit="${AUTOBAHN_TIME_LIMIT:-900}"
python="${WSYNC_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

if ! "$python" -c "import attrs, cattrs" 2>/dev/null; then
  echo "autobahn: $python lacks wsync's dependencies: create .venv as README says, or set WSYNC_PYTHON"
  exit 2
fi

if [ ! -x "$venv/bin/wstest" ]; then
  echo "autobahn: installing autobahntestsuite 25.10.1 into $venv"
  # pyenv may be installed but not on PATH (a non-login shell): look in its usual home too.
  pyenv_root="$( (command -v pyenv >/dev/null 2>&1 && pyenv root) || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
  py27="$pyenv_root/versions/2.7.18/bin/python"
  "$py27" -m pip install -q virtualenv
  "$py27" -m virtualenv -q "$venv"
  "$venv/bin/pip" install -q autobahntestsuite==25.10.1
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

rm -rf "$here/reports/clients"
mkdir -p "$here/reports/clients"
cat > "$work/fuzzingserver.json" <<JSON
{
  "url": "ws://127.0.0.1:$port",
  "outdir": "$here/reports/clients",
  "cases": ["*"],
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {}
}
JSON

(cd "$work" && exec "$venv/bin/wstest" -m fuzzingserver -s "$work/fuzzingserver.json") \
  > "$work/wstest.log" 2>&1 &
server_pid=$!

echo "autobahn: running the cases with $python"
rc=0
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" timeout --kill-after=10 "$limit" \
  "$python" "$here/client.py" "ws://127.0.0.1:$port" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "autobahn: the client failed (exit $rc); wstest's log:"
  tail -n 30 "$work/wstest.log"
  exit 1
fi

"$python" - "$here/reports/clients/index.json" <<'PY'
import collections, json, sys

with open(sys.argv[1]) as f:
    index = json.load(f)
passing = {"OK", "NON-STRICT", "INFORMATIONAL"}
counts = collections.Counter()
close_counts = collections.Counter()
bad = []
for agent, cases in index.items():
    for case, result in sorted(cases.items()):
        counts[result["behavior"]] += 1
        close_counts[result["behaviorClose"]] += 1
        if result["behavior"] not in passing:
            bad.append(f"{case}: {result['behavior']} (close: {result['behaviorClose']})")
total = sum(counts.values())
print(f"autobahn: {total} cases: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
print("autobahn: close behaviour: " + ", ".join(f"{n} {k}" for k, n in sorted(close_counts.items())))
for line in bad:
    print(f"autobahn: {line}")
sys.exit(1 if bad or not total else 0)
PY

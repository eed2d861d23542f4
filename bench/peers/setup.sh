#!/usr/bin/env bash
# Create (or reuse) bench/.venv-peers with the pinned peer libraries from requirements.txt.
# Kept apart from the project's .venv on purpose: dbos, procrastinate and pgqueuer pull
# their own SQLAlchemy/psycopg versions, which must not leak into the test environment.
# Idempotent: when the venv exists and every pin matches, nothing is installed.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${PEERS_VENV:-$HERE/../.venv-peers}"
PYTHON="${PYTHON:-python3}"
REQ="$HERE/requirements.txt"

# True when every "name==version" pin in requirements.txt is what the venv has.
pins_ok() {
  "$VENV/bin/python" - "$REQ" <<'PY' 2>/dev/null
import re, sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", line).groups()
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

if [ -x "$VENV/bin/python" ] && pins_ok; then
  echo "peers venv ok: $VENV"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating peers venv: $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# pip's output goes to a log shown only on failure (this machine's pip config adds
# noisy "location is ignored" warnings for its local indexes).
LOG="$(mktemp)"
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" >"$LOG" 2>&1; then
  cat "$LOG" >&2; rm -f "$LOG"; echo "peers venv: pip install failed" >&2; exit 1
fi
rm -f "$LOG"
pins_ok || { echo "peers venv: pinned versions not installed as asked" >&2; exit 1; }
echo "peers venv ready: $VENV"

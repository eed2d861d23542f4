#!/usr/bin/env bash
# Peer half of `make bench`: the raw PostgreSQL ceiling (pgbench) and the competitors
# (procrastinate, pgqueuer, DBOS), one after another, one repetition each, each in its
# own database peer_<name>, each writing bench/results/<name>.json.
#
#   bash bench/peers/run_all.sh [--quick] [peer ...]     # peers: pgbench procrastinate pgqueuer dbos
#
# Full run ~5-6 min on a 2-core VM; --quick (tiny sizes) ~1 min, for smoke tests.
# Every peer runs under a hard time limit: its own deadline (saves what it measured and
# records the error), then `timeout` as a backstop. A failing peer prints a "!!" line,
# its JSON carries "error", and the remaining peers still run. Exit status is 0 even
# then (the figures are informative; set PEERS_STRICT=1 to fail on any peer error).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
RESULTS="$HERE/../results"
PY="$HERE/../.venv-peers/bin/python"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"

QUICK=""
PEERS=()
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK="--quick" ;;
    pgbench | procrastinate | pgqueuer | dbos) PEERS+=("$arg") ;;
    *) echo "usage: $0 [--quick] [pgbench|procrastinate|pgqueuer|dbos ...]" >&2; exit 2 ;;
  esac
done
[ ${#PEERS[@]} -eq 0 ] && PEERS=(pgbench procrastinate pgqueuer dbos)

# Whole-script budget per peer in seconds (full, quick); the script stops itself then,
# `timeout` kills it 30 s later if it could not.
budget() {
  case "$1" in
    pgbench) [ -n "$QUICK" ] && echo 60 || echo 150 ;;
    procrastinate | pgqueuer) [ -n "$QUICK" ] && echo 60 || echo 180 ;;
    dbos) [ -n "$QUICK" ] && echo 90 || echo 300 ;;
  esac
}

start=$SECONDS
# The figures assume an otherwise idle machine (client and server share the cores).
load="$(cut -d' ' -f1 /proc/loadavg)"
if awk -v l="$load" 'BEGIN { exit !(l > 1.0) }'; then
  echo "!! load average is $load before the peers start: other work will skew their figures"
fi
failed=()
mkdir -p "$RESULTS"

if ! bash "$HERE/setup.sh"; then
  for peer in "${PEERS[@]}"; do
    python3 "$HERE/peerutil.py" fail "$peer" "peers venv setup failed (bench/peers/setup.sh)"
  done
  [ -n "${PEERS_STRICT:-}" ] && exit 1
  exit 0
fi

for peer in "${PEERS[@]}"; do
  limit=$(budget "$peer")
  rm -f "$RESULTS/$peer.json"
  t0=$SECONDS
  errlog="$(mktemp)"
  # stderr is shown live and kept, so a silent death can be explained in the JSON.
  { timeout --kill-after=10 $((limit + 30)) "$PY" "$HERE/peer_$peer.py" $QUICK --budget "$limit" \
    2>&1 1>&3 | tee "$errlog" >&2; } 3>&1
  rc=${PIPESTATUS[0]}
  if [ ! -s "$RESULTS/$peer.json" ]; then
    # Died before writing anything (import error, database down, or killed by `timeout`).
    why="$(grep -E '^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception)\b' "$errlog" | tail -n 1)"
    [ -n "$why" ] || why="$(grep -v '^\s*$' "$errlog" | tail -n 1)"
    case $rc in 124 | 137) why="killed by the backstop timeout ($((limit + 30)) s)" ;; esac
    python3 "$HERE/peerutil.py" fail "$peer" "exited $rc after $((SECONDS - t0)) s without results: $why"
  fi
  rm -f "$errlog"
  if [ $rc -ne 0 ]; then
    failed+=("$peer")
    echo "!! peer $peer FAILED (exit $rc); see bench/results/$peer.json; continuing"
  fi
done

echo
echo "== peer figures (bench/results/<peer>.json)${QUICK:+, QUICK sizes}"
python3 "$HERE/peerutil.py" summary "${PEERS[@]}"
echo "== peers done in $((SECONDS - start)) s${failed[*]:+; FAILED: ${failed[*]}}"
if [ ${#failed[@]} -gt 0 ] && [ -n "${PEERS_STRICT:-}" ]; then
  exit 1
fi
exit 0

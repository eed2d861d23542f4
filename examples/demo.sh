#!/usr/bin/env bash
# `make demo`: the embedded SQLite database, a batch of orders, two worker processes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
fuseline="${FUSELINE:-$here/../.venv/bin/fuseline}"
demo="$here/../.demo"
rm -rf "$demo" && mkdir -p "$demo" && cd "$demo"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step fuseline db upgrade
"$fuseline" db upgrade

step "fuseline submit orders:orders --input order_id=N --input items=M   # x8"
ids=()
for n in 1 2 3 4 5 6 7 8; do
    ids+=("$("$fuseline" submit orders:orders --input order_id=$n --input items=$((n % 7)))")
done
printf '%s\n' "${ids[@]}"

step fuseline worker run orders:orders --concurrency 2 --burst
"$fuseline" worker run orders:orders --concurrency 2 --burst

step fuseline instances list
"$fuseline" instances list

step "fuseline instances show ${ids[0]}"
"$fuseline" instances show "${ids[0]}"

#!/usr/bin/env bash
# Start `broker serve` (1, then 2 workers) on a fresh database, wait for /readyz, run bench/login_bench.py,
# stop the server. Run by hand; not part of the test suite.
#
#   bench/run.sh [--db sqlite|postgres] [--workers "1 2"] [--threads N] [--port 8765] [-- login_bench.py args...]
#   bench/run.sh --db postgres -- --tenants 10000 --concurrency 1,8,32 --duration 30
#
# Redis: REDIS_URL (default redis://127.0.0.1:6379/14; that database is flushed first).
# PostgreSQL: PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/test) is used to create and
# afterwards drop a throwaway database broker_bench_<pid>.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
# the README's venv (.venv in the checkout), else PYTHON, else a venv next to the checkout, else python3
PY="${PYTHON:-}"
for candidate in "$ROOT/.venv/bin/python" "$ROOT/../venv/bin/python"; do
  [ -n "$PY" ] || { [ -x "$candidate" ] && PY="$candidate"; }
done
[ -n "$PY" ] || PY="$(command -v python3)"
BROKER="$(dirname "$PY")/broker"
[ -x "$BROKER" ] || BROKER="$PY -m broker"
DB=sqlite
WORKERS="1 2"
THREADS=""
PORT=8765
while [ $# -gt 0 ]; do
  case "$1" in
    --db) DB="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (bench args go after --)" >&2; exit 2 ;;
  esac
done

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/14}"
export BROKER_PUBLIC_URL="http://127.0.0.1:$PORT"
export BROKER_ENV=dev   # production refuses http:// public URLs; dev also migrates the fresh database
export BROKER_DEV_IDP=false   # no development IdP and demo page: measure what production runs
export BROKER_SECRET_KEY="bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
export BROKER_BOOTSTRAP_ADMIN_KEY="bench-admin-key-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export BROKER_LOG_LEVEL="${BROKER_LOG_LEVEL:-INFO}"
WORK="$(mktemp -d /tmp/broker-bench.XXXXXX)"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/test}"
PG_DB="broker_bench_$$"
SERVER=""

cleanup() {
  if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then kill -TERM "$SERVER"; wait "$SERVER" || true; fi
  if [ "$DB" = postgres ]; then psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fresh_database() {
  if [ "$DB" = postgres ]; then
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
    export DATABASE_URL="${PG_ADMIN_URL%/*}/$PG_DB"
  else
    rm -f "$WORK/broker.db"
    export DATABASE_URL="sqlite:///$WORK/broker.db"
  fi
  "$PY" -c "import redis, os; redis.Redis.from_url(os.environ['REDIS_URL']).flushdb()"
}

for workers in $WORKERS; do
  fresh_database
  echo "== broker serve --workers $workers${THREADS:+ --threads $THREADS} ($DB, $REDIS_URL) ==" >&2
  $BROKER serve --host 127.0.0.1 --port "$PORT" --workers "$workers" ${THREADS:+--threads "$THREADS"} >"$WORK/server-$workers.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 100); do
    curl -fsS "$BROKER_PUBLIC_URL/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server-$workers.log" >&2; exit 1; }
    sleep 0.2
  done
  curl -fsS "$BROKER_PUBLIC_URL/readyz" >/dev/null
  "$PY" "$HERE/login_bench.py" --url "$BROKER_PUBLIC_URL" --admin-key "$BROKER_BOOTSTRAP_ADMIN_KEY" \
    --server-pid "$SERVER" "$@" || echo "login_bench.py exited $? (see errors above; server log follows)" >&2
  kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=""
  grep -E '"level": ?"(ERROR|CRITICAL)"|Traceback' "$WORK/server-$workers.log" | head -5 >&2 || true
done

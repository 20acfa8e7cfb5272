#!/usr/bin/env bash
# Start a local S3 endpoint (moto's server, pinned, from PyPI) with bucket `tansu`, for a tansu
# broker with persistent storage (KAFKA_STORAGE=s3://tansu/, see .ci/kafka.sh).
# moto keeps everything in memory: it must outlive any broker restart that relies on it.
# Idempotent: a second run finds it answering, (re)creates nothing and exits 0.
#
# Env knobs:
#   THALAMUS_TOOLS   dir for the log and pid                  (default ~/.cache/thalamus)
#   MOTO_ADDR        host:port to listen on                   (default 127.0.0.1:19000)
#   MOTO_WAIT_SECS   readiness timeout                        (default 60)
set -euo pipefail

TOOLS="${THALAMUS_TOOLS:-${HOME:-/root}/.cache/thalamus}"
ADDR="${MOTO_ADDR:-127.0.0.1:19000}"
WAIT="${MOTO_WAIT_SECS:-60}"
HOST="${ADDR%:*}" PORT="${ADDR##*:}"
URL="http://$ADDR"
MOTO_VERSION="5.2.1"
LOG="$TOOLS/moto-$PORT.log" PIDFILE="$TOOLS/moto-$PORT.pid"

die() { echo "moto: ERROR: $*" >&2; exit 1; }

# True when something accepts TCP connections on HOST:PORT.
port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# True when an S3 ListBuckets round-trips (moto answers 200 without checking credentials).
s3_ok() { curl -fsS -o /dev/null --max-time 5 "$URL/" 2>/dev/null; }

# --- install (only if the pinned version is missing) ---------------------------------------
have="$(python3 -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true)"
if [[ "$have" != "$MOTO_VERSION" ]] || ! python3 -c 'import flask, flask_cors' 2>/dev/null; then
  python3 -m pip install -q "moto[server]==$MOTO_VERSION" || die "pip install moto[server]==$MOTO_VERSION failed"
fi

# --- start (only if nothing listens yet) --------------------------------------------------
if ! port_open; then
  mkdir -p "$TOOLS"
  # setsid+nohup: the server outlives this script and its session (CI step).
  nohup setsid python3 -m moto.server -H "$HOST" -p "$PORT" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
fi

# --- wait until it answers ----------------------------------------------------------------
deadline=$((SECONDS + WAIT))
until s3_ok; do
  if [[ -f "$PIDFILE" ]] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null && ! port_open; then
    tail -n 20 "$LOG" >&2 || true; die "moto exited; log: $LOG"
  fi
  (( SECONDS < deadline )) || die "no S3 answer on $ADDR after ${WAIT}s; log: $LOG"
  sleep 0.2
done

# --- bucket `tansu` (PUT on an existing bucket is fine in us-east-1) ----------------------
curl -fsS -o /dev/null --max-time 5 -X PUT "$URL/tansu" || die "could not create bucket tansu"
echo "moto: $MOTO_VERSION on $ADDR, bucket tansu (log $LOG)"

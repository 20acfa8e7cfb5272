#!/usr/bin/env bash
# A real-browser check of the operator surface: start `thalamus run` (the debug binary) on a
# fresh SQLite store with two VLA datasets and an unreachable Workspaces (so Ingestions back
# off and the page shows several states), open the page in headless Chromium (installed from
# the distribution's packages where missing), follow a model link, and save screenshots.
#
#   bash .ci/browser.sh [OUT_DIR]     # default target/screenshots
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-target/screenshots}")
bin=$(realpath target/debug/thalamus)
[ -x "$bin" ] || { echo "browser: build first (cargo build --locked)" >&2; exit 1; }

if ! command -v chromium >/dev/null; then
  echo "browser: installing chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$out" "$work/sdm"
for name in 24A-001.sb1.eb1 '24A-<b>002.sb1.eb1'; do
  mkdir -p "$work/sdm/$name"
  echo '<MainTable/>' > "$work/sdm/$name/Main.xml"
  touch "$work/sdm/$name/DONE"
done
cat > "$work/config.yaml" <<EOF
database: {url: "sqlite://$work/thalamus.db"}
model_deps: "$PWD/model-deps.json"
sources:
  vla: {path: "$work/sdm", bdf_path: null, marker_file: DONE, poll_seconds: 1, settle_seconds: 1}
  vlba: {enabled: false}
workspaces: {url: "http://127.0.0.1:9/workspaces", timeout_seconds: 2}
api: {listen: "127.0.0.1:0", refresh_seconds: 0}
EOF
(cd "$work" && exec "$bin" --config config.yaml run 2> "$work/log") &
pid=$!

base=
for _ in $(seq 1 100); do
  base=$(grep -o 'operator surface at http://[0-9.:]*' "$work/log" | head -n1 | sed 's/.* at //') || true
  [ -n "$base" ] && break
  sleep 0.2
done
[ -n "$base" ] || { echo "browser: no operator surface:"; cat "$work/log"; exit 1; } >&2
# Until both Ingestions have failed once (Workspaces is unreachable).
for _ in $(seq 1 150); do
  curl -sf "$base/api/v1/models?kind=Ingestion&state=backoff" | grep -q '24A-<b>002' && break
  sleep 0.2
done

chrome() { chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "$@" 2>/dev/null; }
shot() { # name width height url
  chrome --window-size="$2,$3" --screenshot="$out/$1.png" "$4" >/dev/null
  [ -s "$out/$1.png" ] || { echo "browser: no screenshot of $4" >&2; exit 1; }
}

shot overview 1280 800 "$base/"
shot models 1280 800 "$base/models?kind=Ingestion"
dom=$(chrome --dump-dom "$base/models?kind=Ingestion")
grep -q 'class="st backoff"' <<<"$dom" || { echo "browser: no backoff badge in $dom" >&2; exit 1; }
if grep -q '<b>002' <<<"$dom"; then echo "browser: a key was not escaped" >&2; exit 1; fi
link=$(grep -o 'href="/models/Ingestion/[^"]*"' <<<"$dom" | head -n1 | sed 's/^href="//; s/"$//')
[ -n "$link" ] || { echo "browser: no model link in $dom" >&2; exit 1; }
model=$(chrome --dump-dom "$base$link")
grep -q 'History' <<<"$model" && grep -q 'Last error' <<<"$model" \
  || { echo "browser: the model page lacks its history: $model" >&2; exit 1; }
shot model 1280 1000 "$base$link"
shot phone 412 915 "$base/"
echo "browser: page, model link and screenshots ok ($out)"

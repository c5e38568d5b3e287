#!/usr/bin/env bash
# Screenshot a page of the built book with headless Chromium (Debian: apt-get install chromium).
#   scripts/screenshot.sh PAGE OUT.png [WIDTHxHEIGHT]
#   e.g. scripts/screenshot.sh book/recap.html /tmp/recap.png 1280x1600
# Serves _build/html on a free port of 127.0.0.1 for the shot, then stops the server.
# The virtual time budget lets MathJax finish typesetting before the shot.
set -euo pipefail
page=${1:?usage: $0 PAGE OUT.png [WIDTHxHEIGHT]}
out=${2:?usage: $0 PAGE OUT.png [WIDTHxHEIGHT]}
size=${3:-1280x1600}
root="$(cd "$(dirname "$0")/.." && pwd)"
html="${HTML_DIR:-$root/_build/html}"
[ -f "$html/${page%%#*}" ] || { echo "no such page: $html/$page (run make book)" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
profile=$(mktemp -d)
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$html" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$profile"' EXIT
for _ in $(seq 50); do  # wait for the server
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.1
done

mkdir -p "$(dirname "$out")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --virtual-time-budget=15000 \
    --screenshot="$out_abs" --window-size="${size/x/,}" \
    "http://127.0.0.1:$port/$page" 2>/dev/null
[ -s "$out_abs" ] || { echo "no screenshot written" >&2; exit 1; }
echo "$out_abs"

#!/usr/bin/env bash
# Measures `wick serve` on this machine with the real EfficientNet-Lite0 package (or any package
# in BENCH_MODEL_DIR, e.g. a YOLOv8 detector): cold start to the first /ping 200, idle RSS,
# /invocations latency and throughput with 1, 4 and 16 clients (hey, on loopback), and peak RSS
# under load. Results go to stdout as markdown; a run where any response is not a 200 fails.
#
# Usage: [BENCH_MODEL_DIR=DIR] scripts/bench-serve.sh [WICK_BINARY] [IMAGE]
#   needs: hey (apt-get install hey), curl; the package from scripts/fetch-efficientnet-lite0.sh
set -euo pipefail
repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wick=${1:-${CARGO_TARGET_DIR:-$repo_dir/target}/release/wick}
image=${2:-$repo_dir/../shared/fixtures/chelsea.jpg}
model_dir=${BENCH_MODEL_DIR:-$("$repo_dir/scripts/fetch-efficientnet-lite0.sh")}
port=${BENCH_PORT:-18099}
url=http://127.0.0.1:$port

start_ns=$(date +%s%N)
SAGEMAKER_BIND_TO_PORT=$port RUST_LOG=warn "$wick" serve --model-dir "$model_dir" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
until [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/ping") == 200 ]]; do sleep 0.005; done
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
rss_kb() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status"; }
idle_rss_mb=$(( $(rss_kb VmRSS) / 1024 ))

echo "| measure | value |"
echo "|---|---|"
echo "| cold start to /ping 200 | ${ready_ms} ms |"
echo "| RSS idle | ${idle_rss_mb} MB |"
answer=$(curl -s -H 'Content-Type: image/jpeg' --data-binary @"$image" "$url/invocations")
echo "| answer (first 120 bytes) | \`${answer:0:120}\` |"
post=(-m POST -T image/jpeg -D "$image")
failed=0
hey -n 20 -c 1 "${post[@]}" "$url/invocations" >/dev/null   # warm-up
for clients in 1 4 16; do
    requests=$(( clients == 1 ? 200 : 50 * clients ))
    out=$(hey -n "$requests" -c "$clients" "${post[@]}" "$url/invocations")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '/ 50% in/ {print $3 * 1000}' <<<"$out")
    p99=$(awk '/ 99% in/ {print $3 * 1000}' <<<"$out")
    codes=$(awk '/Status code distribution/ {f=1; next} f && NF {printf "%s ", $0}' <<<"$out")
    echo "| $clients client(s), $requests requests | ${rps} req/s, p50 ${p50} ms, p99 ${p99} ms, status: ${codes}|"
    ok=$(awk '/Status code distribution/ {f=1; next} f && /\[200\]/ {print $2}' <<<"$out")
    [[ ${ok:-0} == "$requests" ]] || failed=1
done
echo "| peak RSS under load (VmHWM) | $(( $(rss_kb VmHWM) / 1024 )) MB |"
if [[ $failed != 0 ]]; then
    echo "error: some responses were not 200 (status lines above)" >&2
    exit 1
fi

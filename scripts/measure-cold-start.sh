#!/usr/bin/env bash
# Cold start of the wick image, for docs/performance.md "Container image": builds the `prebuilt`
# image from a wick binary with podman (local_test/podman.sh), then RUNS times measures the
# wall time from `podman run` to the first `GET /ping` 200 with the ImageNet EfficientNet-Lite0
# package (scripts/fetch-efficientnet-lite0.sh) at /opt/ml/model, the container locked down as
# in local_test/container_test.sh (read-only root, tmpfs /tmp, user 65534, 1 GB). /ping is
# polled every 10 ms. Prints each run, the median, the image size and each layer's size, then
# removes the containers and the image it made.
#
# Usage: scripts/measure-cold-start.sh [RUNS]   (default 5; needs root, podman, runc, curl)
#   WICK_BIN   binary to package (default: target/release/wick, or $CARGO_TARGET_DIR's)
#   WICK_PODMAN_DIR, WICK_PODMAN_STORAGE_DRIVER: see local_test/podman.sh
set -euo pipefail
repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR/../local_test
source "$repo_dir/local_test/lib.sh"
# shellcheck source-path=SCRIPTDIR/../local_test
source "$repo_dir/local_test/podman.sh"

runs=${1:-5}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/measure-cold-start.sh [RUNS]" >&2; exit 1; }
tag="cold-start-$$"
image="localhost/wick:$tag"
step() { echo "== $*" >&2; }
fail() {
    echo "error: $*" >&2
    exit 1
}

podman_configure
binary=$(wick_bin) || fail "no wick binary (cargo build --release, or set WICK_BIN)"
lite0=$("$repo_dir/scripts/fetch-efficientnet-lite0.sh") || fail "could not fetch EfficientNet-Lite0"
build_copy="$repo_dir/dist/wick-$tag"
cleanup() {
    local ids
    ids=$(podman ps -aq --filter "label=wick-cold-start=$tag" 2>/dev/null || true)
    if [[ -n "$ids" ]]; then
        # shellcheck disable=SC2086 # one id per word
        podman rm -f $ids >/dev/null 2>&1 || true
    fi
    podman rmi -f "$image" >/dev/null 2>&1 || true
    podman image prune -f >/dev/null 2>&1 || true
    rm -f "$build_copy"
    rmdir "$repo_dir/dist" 2>/dev/null || true
}
trap cleanup EXIT

podman_debian_base
step "building $image from $binary"
podman_build_prebuilt "$binary" "$image" "$build_copy" "$tag"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

times_ms=()
for run in $(seq 1 "$runs"); do
    name="wick-$tag-$run"
    started_ns=$(date +%s%N)
    podman run -d --name "$name" --label "wick-cold-start=$tag" --network host \
        --read-only --tmpfs /tmp --user 65534:65534 --memory 1g \
        -e "SAGEMAKER_BIND_TO_PORT=$port" -v "$lite0:/opt/ml/model:ro" "$image" serve >/dev/null
    until [[ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ping" || true)" == 200 ]]; do
        (($(date +%s%N) - started_ns < 60000000000)) || { podman logs "$name" >&2; fail "no /ping 200 within 60 s"; }
        sleep 0.01
    done
    elapsed_ms=$((($(date +%s%N) - started_ns) / 1000000))
    times_ms+=("$elapsed_ms")
    echo "run $run: $elapsed_ms ms from podman run to /ping 200"
    podman rm -f "$name" >/dev/null
done

median_ms=$(printf '%s\n' "${times_ms[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo "cold start, median of $runs: $median_ms ms (runs: ${times_ms[*]} ms)"
echo "image: $(podman_image_mb "$image") MB; layers (MB, oldest first):"
podman_layer_sizes "$image"

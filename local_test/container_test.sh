#!/usr/bin/env bash
# End-to-end test of the runtime image the way SageMaker runs it, with podman instead of a
# Docker engine (recipe: ../shared/docs/infra.md §2): builds the `prebuilt` target from a wick
# binary, checks the image (root user, nothing under /opt/ml, serve/train executable, the
# SageMaker label, unknown command fails), then with local_test/test_dir mounted at /opt/ml:
# `train` writes a model, `serve` answers /ping 200 and predict.sh classifies a cat photo,
# and `podman stop` ends the server through SIGTERM with exit code 0 in under 30 s.
# Removes the containers, image and build copy it created. Not part of .ci/run.
#
# Usage: local_test/container_test.sh
#   WICK_BIN       binary to package (default: target/release/wick, or $CARGO_TARGET_DIR's)
#   WICK_PODMAN_DIR scratch dir for podman's config, storage and the Debian base
#                   (default /var/tmp/wick-podman; the base is made once with debootstrap)
#   WICK_TEST_PORT host port for the server (default 18080; host networking only)
# Needs root, podman, runc, debootstrap (apt-get install -y podman buildah runc debootstrap).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

scratch=${WICK_PODMAN_DIR:-/var/tmp/wick-podman}
port=${WICK_TEST_PORT:-18080}
image="localhost/wick:container-test-$$"
name="wick-container-test-$$"
base=docker.io/library/debian:bookworm-slim
binary=$(wick_bin)

step() { printf '\n== %s\n' "$*" >&2; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# podman with runc, explicit ulimits and everything in the scratch folder.
mkdir -p "$scratch/tmp" "$scratch/networks" "$scratch/run" "$scratch/root"
cat >"$scratch/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$scratch/events.log"
runtime = "runc"
tmp_dir = "$scratch/tmp"
[network]
network_config_dir = "$scratch/networks"
CONF
cat >"$scratch/storage.conf" <<CONF
[storage]
driver = "overlay"
runroot = "$scratch/run"
graphroot = "$scratch/root"
CONF
export CONTAINERS_CONF="$scratch/containers.conf" CONTAINERS_STORAGE_CONF="$scratch/storage.conf"

build_copy="$repo_dir/dist/wick-container-test-$$"
cleanup() {
    podman rm -f "$name" >/dev/null 2>&1 || true
    podman rmi -f "$image" >/dev/null 2>&1 || true
    rm -f "$build_copy"
    rmdir "$repo_dir/dist" 2>/dev/null || true
}
trap cleanup EXIT

# No registry here: make the Debian base locally, trimmed like the official slim image.
if ! podman image exists "$base"; then
    step "making $base with debootstrap (once)"
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    rootfs="$scratch/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >&2
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
    rm -rf "$rootfs"
fi

step "building $image from $binary"
mkdir -p "$repo_dir/dist"
cp "$binary" "$build_copy"
# Symbols are ~20% of the binary and useless in the image.
if command -v strip >/dev/null; then strip "$build_copy"; fi
podman build --pull=never --network host --target prebuilt \
    --build-arg "WICK_BINARY=dist/$(basename "$build_copy")" -t "$image" "$repo_dir" >&2
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"

step "image checks"
user=$(podman inspect -f '{{.Config.User}}' "$image")
[[ -z "$user" || "$user" == root || "$user" == 0 ]] || fail "runs as user '$user', not root"
label=$(podman inspect -f '{{index .Config.Labels "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"}}' "$image")
[[ "$label" == true ]] || fail "accept-bind-to-port label is '$label'"
opt_ml=$(podman run --rm --network host --entrypoint sh "$image" -c 'ls -A /opt/ml 2>/dev/null || true')
[[ -z "$opt_ml" ]] || fail "the image has files under /opt/ml: $opt_ml"
podman run --rm --network host --entrypoint sh "$image" -c \
    'test -x /usr/local/bin/serve && test -x /usr/local/bin/train && command -v serve && command -v train' >&2 \
    || fail "serve/train are not executables on PATH"
if podman run --rm --network host "$image" bogus >/dev/null 2>&1; then
    fail "an unknown command exited 0"
fi
echo "ok: root, label, empty /opt/ml, serve/train on PATH, unknown command fails" >&2

step "train (docker run -v test_dir:/opt/ml IMAGE train)"
if [[ ! -d "$test_dir/input/data/training" || ! -d "$test_dir/input/data/model" ]]; then
    "$local_test_dir/make_test_dir.sh" >/dev/null
fi
rm -rf "$test_dir/model" "$test_dir/output" "$test_dir/checkpoints"
mkdir -p "$test_dir/model" "$test_dir/output"
podman run --rm --network host -v "$test_dir:/opt/ml" "$image" train >&2
[[ -s "$test_dir/model/config.json" ]] || fail "train wrote no model"
echo "ok: model written to $test_dir/model" >&2

step "serve (docker run -v test_dir:/opt/ml IMAGE serve) on 127.0.0.1:$port"
podman run -d --name "$name" --network host -e "SAGEMAKER_BIND_TO_PORT=$port" \
    -v "$test_dir:/opt/ml" "$image" serve >/dev/null
status=000
for _ in $(seq 1 240); do
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ping" || true)
    [[ "$status" == 200 ]] && break
    sleep 0.5
done
[[ "$status" == 200 ]] || { podman logs "$name" >&2; fail "/ping never answered 200 (last: $status)"; }
echo "ok: /ping 200" >&2
payload="$local_test_dir/payload.jpg"
[[ -f "$payload" ]] || payload="$local_test_dir/payload.png"
answer=$(SAGEMAKER_BIND_TO_PORT=$port "$local_test_dir/predict.sh" "$payload" image/jpeg)
echo "$answer"
[[ "$answer" == '[{"label":"cat"'* ]] || fail "the cat photo was not classified as cat"

step "stop (SIGTERM)"
start=$SECONDS
podman stop -t 30 "$name" >/dev/null
elapsed=$((SECONDS - start))
code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
[[ "$code" == 0 ]] || { podman logs "$name" >&2; fail "serve exited $code after SIGTERM"; }
((elapsed < 30)) || fail "stop took ${elapsed}s"
echo "ok: exit code 0 after ${elapsed}s" >&2
echo "PASS" >&2

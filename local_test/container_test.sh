#!/usr/bin/env bash
# End-to-end test of the runtime image the way SageMaker runs it, with podman instead of a
# Docker engine (recipe: ../shared/docs/infra.md §2: root, runc, explicit ulimits, host
# networking only, a Debian base made with debootstrap because no registry can be reached).
# Builds the `prebuilt` target from a wick binary, checks the image (root user, nothing under
# /opt/ml, serve/train executable on PATH, the SageMaker label, an unknown command fails, size),
# then with local_test/test_dir mounted at /opt/ml: `IMAGE train` writes a model and prints the
# metric lines, `IMAGE serve` answers /ping 200 and predict.sh classifies a cat photo as "cat",
# and `podman stop` ends the server through SIGTERM promptly with exit code 0.
# Removes the containers, images, build copy and test_dir outputs it created; keeps the
# Debian base (image and tarball) in the scratch dir for the next run.
# The last line on stdout is the result: "container test: passed ..." or "... FAILED: reason".
#
# Usage: local_test/container_test.sh
#   WICK_BIN                  binary to package (default: target/release/wick, or
#                             $CARGO_TARGET_DIR's)
#   WICK_PODMAN_DIR           scratch dir for podman's config, storage and the Debian base
#                             (default /var/tmp/wick-podman)
#   WICK_PODMAN_STORAGE_DRIVER overlay or vfs (default: overlay when this kernel can mount it
#                             here, else vfs)
#   WICK_TEST_PORT            host port for the server (default: a free one; host networking)
#   WICK_MAX_IMAGE_MB         the image must be smaller, in MB of 10^6 bytes (default 100, the
#                             target; it is 96.5 MB, see docs/performance.md "Container image")
# Needs root, podman, runc, debootstrap, curl (apt-get install -y podman buildah runc
# debootstrap curl); .ci/container installs them.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

scratch=${WICK_PODMAN_DIR:-/var/tmp/wick-podman}
max_image_mb=${WICK_MAX_IMAGE_MB:-100}
tag="container-test-$$"
image="localhost/wick:$tag"
base=docker.io/library/debian:bookworm-slim
started=$SECONDS

step() { printf '\n== [%ss] %s\n' "$((SECONDS - started))" "$*" >&2; }
fail() {
    echo "container test: FAILED: $*"
    exit 1
}
# Runs a command with a deadline so a hung engine fails the test instead of the CI job.
bounded() { # SECONDS COMMAND...
    local secs=$1
    shift
    timeout --kill-after=10 "$secs" "$@"
}

[[ $EUID == 0 ]] || fail "needs root (podman runs the image as SageMaker does, as root; debootstrap)"
for tool in podman runc debootstrap curl timeout mount tar; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install -y podman buildah runc debootstrap curl)"
done
binary=$(wick_bin) || fail "no wick binary (cargo build --release, or set WICK_BIN)"

# Overlay needs kernel support and a backing filesystem that can carry an upper dir (not
# overlayfs itself on older kernels, as when /var/tmp is a container's root). Probe exactly
# that here; vfs always works, it only copies layers instead of sharing them.
storage_driver() {
    local probe="$scratch/overlay-probe"
    rm -rf "$probe"
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        echo overlay
    else
        echo vfs
    fi
    rm -rf "$probe"
}
mkdir -p "$scratch"
driver=${WICK_PODMAN_STORAGE_DRIVER:-$(storage_driver)}

# podman with runc (crun refuses hybrid cgroup hierarchies), cgroupfs (no systemd needed; runc
# drives cgroups v1, hybrid and v2 alike), explicit ulimits (podman's defaults need
# CAP_SYS_RESOURCE) and all state in the scratch dir; one graph root per driver, as a storage
# cannot change driver.
mkdir -p "$scratch/tmp" "$scratch/networks" "$scratch/run-$driver" "$scratch/root-$driver"
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
driver = "$driver"
runroot = "$scratch/run-$driver"
graphroot = "$scratch/root-$driver"
CONF
export CONTAINERS_CONF="$scratch/containers.conf" CONTAINERS_STORAGE_CONF="$scratch/storage.conf"

# What this run creates, so that cleanup removes exactly that.
build_copy="$repo_dir/dist/wick-$tag"
created_paths=()
for sub in model output checkpoints input/data; do
    [[ -e "$test_dir/$sub" ]] || created_paths+=("$test_dir/$sub")
done
for payload_file in "$local_test_dir/payload.jpg" "$local_test_dir/payload.png"; do
    [[ -e "$payload_file" ]] || created_paths+=("$payload_file")
done
cleanup() {
    local ids
    ids=$(podman ps -aq --filter "label=wick-container-test=$tag" 2>/dev/null || true)
    if [[ -n "$ids" ]]; then
        # shellcheck disable=SC2086 # one id per word
        podman rm -f $ids >/dev/null 2>&1 || true
    fi
    podman rmi -f "$image" >/dev/null 2>&1 || true
    # Intermediate stage images of this build (the scratch storage is this test's own).
    podman image prune -f >/dev/null 2>&1 || true
    rm -f "$build_copy" "$scratch/events.log"
    rmdir "$repo_dir/dist" 2>/dev/null || true
    rm -rf "${created_paths[@]}"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# No registry here: make the Debian base once, trimmed like the official slim image, and keep
# it as a tarball so a new storage (or driver) only re-imports it.
base_tar="$scratch/debian-bookworm-minbase.tar"
if ! podman image exists "$base" 2>/dev/null; then
    if [[ ! -s "$base_tar" ]]; then
        step "making $base with debootstrap (once; cached as $base_tar)"
        mirror=""
        if grep -qs '^ID=debian' /etc/os-release; then
            mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
            [[ -n "$mirror" ]] || mirror=$(awk '$1 == "deb" && $3 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
        fi
        mirror=${mirror:-http://deb.debian.org/debian}
        keyring=()
        [[ -s /usr/share/keyrings/debian-archive-keyring.gpg ]] &&
            keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
        rootfs="$scratch/rootfs"
        rm -rf "$rootfs"
        bounded 1200 debootstrap ${keyring[@]+"${keyring[@]}"} --variant=minbase bookworm "$rootfs" "$mirror" \
            >"$scratch/debootstrap.log" 2>&1 ||
            { tail -n 20 "$scratch/debootstrap.log" >&2; fail "debootstrap bookworm from $mirror failed (log: $scratch/debootstrap.log)"; }
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        tar -C "$rootfs" -cf "$base_tar.part" .
        mv "$base_tar.part" "$base_tar"
        rm -rf "$rootfs"
    fi
    step "importing $base ($driver storage)"
    bounded 300 podman import "$base_tar" "$base" >/dev/null || fail "podman import of $base_tar failed"
fi

step "engine check: podman run --network host $base ($driver storage, runc)"
engine_out=$(bounded 120 podman run --rm --network host --label "wick-container-test=$tag" "$base" true 2>&1) ||
    fail "podman cannot run a container here (storage $driver, runtime runc, cgroupfs): $engine_out"

step "building $image from $binary"
mkdir -p "$repo_dir/dist"
cp "$binary" "$build_copy"
# The release profile strips already; this covers binaries built otherwise.
if command -v strip >/dev/null; then strip "$build_copy"; fi
bounded 900 podman build --pull=never --network host --target prebuilt \
    --build-arg "WICK_BINARY=dist/$(basename "$build_copy")" --build-arg "REVISION=$tag" \
    -t "$image" "$repo_dir" >&2 ||
    fail "podman build failed (a binary built on a newer glibc than Debian 12's 2.36 cannot run in the image: build on Debian 12)"
image_bytes=$(podman image inspect -f '{{.Size}}' "$image")
image_mb=$(awk -v b="$image_bytes" 'BEGIN { printf "%.1f", b / 1e6 }')
binary_mb=$(awk -v b="$(stat -c %s "$build_copy")" 'BEGIN { printf "%.1f", b / 1e6 }')
echo "image $image: $image_mb MB (binary $binary_mb MB)" >&2

step "image checks"
user=$(podman image inspect -f '{{.Config.User}}' "$image")
[[ -z "$user" || "$user" == root || "$user" == 0 ]] || fail "the image runs as user '$user', not root"
label=$(podman image inspect -f '{{index .Config.Labels "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"}}' "$image")
[[ "$label" == true ]] || fail "accept-bind-to-port label is '$label', not true"
awk -v mb="$image_mb" -v max="$max_image_mb" 'BEGIN { exit !(mb < max) }' ||
    fail "the image is $image_mb MB, not under $max_image_mb MB"
run_checked() { podman run --rm --network host --label "wick-container-test=$tag" "$@"; }
opt_ml=$(run_checked --entrypoint sh "$image" -c 'ls -A /opt/ml 2>/dev/null || true')
[[ -z "$opt_ml" ]] || fail "the image has files under /opt/ml: $opt_ml"
run_checked --entrypoint sh "$image" -c \
    'test -x /usr/local/bin/serve && test -x /usr/local/bin/train && command -v serve && command -v train' >&2 ||
    fail "serve/train are not executables on PATH"
run_checked --entrypoint serve "$image" --help >/dev/null || fail "--entrypoint serve does not start wick serve"
if run_checked "$image" bogus >/dev/null 2>&1; then
    fail "an unknown command exited 0"
fi
echo "ok: root, label, under $max_image_mb MB, empty /opt/ml, serve/train on PATH and runnable, unknown command fails" >&2

step "train: podman run -v test_dir:/opt/ml IMAGE train"
if [[ ! -d "$test_dir/input/data/training" || ! -d "$test_dir/input/data/model" ]]; then
    bounded 600 "$local_test_dir/make_test_dir.sh" >/dev/null || fail "make_test_dir.sh could not build the training data"
fi
rm -rf "$test_dir/model" "$test_dir/output" "$test_dir/checkpoints"
mkdir -p "$test_dir/model" "$test_dir/output"
train_log="$scratch/train-$tag.log"
bounded 900 podman run --rm --network host --label "wick-container-test=$tag" \
    -v "$test_dir:/opt/ml" "$image" train >"$train_log" ||
    { cat "$train_log" >&2; rm -f "$train_log"; fail "train exited non-zero"; }
epoch_lines=$(grep -cE '^epoch=[0-9]+; train_loss=[0-9.]+; train_accuracy=[0-9.]+;' "$train_log" || true)
tail -n 2 "$train_log" >&2
rm -f "$train_log"
((epoch_lines > 0)) || fail "train printed no metric lines (epoch=N; train_loss=...) on stdout"
[[ -s "$test_dir/model/config.json" && -s "$test_dir/model/model.safetensors" ]] ||
    fail "train wrote no model package (config.json + model.safetensors) to /opt/ml/model"
[[ -s "$test_dir/output/data/metrics.json" ]] || fail "train wrote no output/data/metrics.json"
echo "ok: model written, $epoch_lines metric lines on stdout" >&2

port=${WICK_TEST_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 18080)}
name="wick-$tag"
step "serve: podman run -v test_dir:/opt/ml IMAGE serve on 127.0.0.1:$port"
podman run -d --name "$name" --network host --label "wick-container-test=$tag" \
    -e "SAGEMAKER_BIND_TO_PORT=$port" -v "$test_dir:/opt/ml" "$image" serve >/dev/null ||
    fail "podman run IMAGE serve failed"
status=000
for _ in $(seq 1 240); do
    status=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ping" || true)
    [[ "$status" == 200 ]] && break
    if [[ "$(podman inspect -f '{{.State.Running}}' "$name")" != true ]]; then
        podman logs "$name" >&2
        fail "serve exited before /ping answered 200"
    fi
    sleep 0.5
done
[[ "$status" == 200 ]] || { podman logs "$name" >&2; fail "/ping never answered 200 in 120 s (last: $status)"; }
echo "ok: /ping 200" >&2
payload="$local_test_dir/payload.jpg"
[[ -f "$payload" ]] || payload="$local_test_dir/payload.png"
answer=$(SAGEMAKER_BIND_TO_PORT=$port bounded 60 "$local_test_dir/predict.sh" "$payload" image/jpeg) ||
    fail "predict.sh failed: $answer"
echo "$answer" >&2
[[ "$answer" == '[{"label":"cat"'* ]] || fail "the cat photo was not classified as cat: $answer"
echo "ok: predict.sh answers cat" >&2

step "stop: podman stop (SIGTERM, SIGKILL after 30 s)"
stop_started=$(date +%s%N)
bounded 60 podman stop -t 30 "$name" >/dev/null || fail "podman stop failed"
stop_ms=$((($(date +%s%N) - stop_started) / 1000000))
code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
logs=$(podman logs "$name" 2>&1)
[[ "$code" == 0 ]] || { echo "$logs" >&2; fail "serve exited with code $code after SIGTERM"; }
grep -q 'shutting down' <<<"$logs" || { echo "$logs" >&2; fail "serve did not log its SIGTERM shutdown"; }
((stop_ms < 10000)) || fail "stop took $stop_ms ms (no request in flight: expected well under 10 s)"
echo "ok: exit code 0 after SIGTERM, $stop_ms ms" >&2

echo "container test: passed in $((SECONDS - started)) s (image $image_mb MB, binary $binary_mb MB, $driver storage, SIGTERM stop $stop_ms ms)"

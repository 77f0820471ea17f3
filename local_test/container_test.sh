#!/usr/bin/env bash
# End-to-end test of the image the way locked-down platforms run it, with podman instead of a
# Docker engine (local_test/podman.sh). Builds the Dockerfile's `prebuilt` target from a wick
# binary and checks the image: under the size limit (printed, with each layer), holding only
# wick, its loader and libraries, the CA bundle and the `serve`/`train` links (no shell),
# nothing under /opt/ml, root as SageMaker expects, the SageMaker label, `--entrypoint serve`
# runs `wick serve`, an unknown command fails. Then each case runs the image locked down:
# read-only root, a tmpfs on /tmp, user 65534:65534, 1 GB of memory (nothing can be written
# outside $TMPDIR and /opt/ml, so a write elsewhere fails the case):
#   train          `IMAGE train` on a copy of local_test/test_dir at /opt/ml, owned by that user:
#                  a model package, metrics.json and the metric lines on stdout
#   serve-trained  `IMAGE serve` of that model (read-only mount): predict.sh answers "cat"
#   serve-lite0    the ImageNet EfficientNet-Lite0 package (scripts/fetch-efficientnet-lite0.sh)
#                  at /opt/ml/model: the cat photo is an ImageNet cat
#   serve-deeplab  a DeepLabV3+ ResNet-34 package, synthetic weights (examples/synthetic_package.rs):
#                  a PNG label map of the photo's size
#   s3             `serve --model-uri s3://models/lite0/model.tar.gz` from a real S3 server on
#                  127.0.0.1 (s3s-fs, examples/s3_server.rs; SigV4 checked): unpacked under /tmp,
#                  answers the cat photo
# Every serve case ends with `podman stop`: SIGTERM, exit code 0 within seconds.
# Removes the containers, images and files it created; keeps the Debian base (image and
# tarball) in the scratch dir for the next run.
# The last line on stdout is the result: "container test: passed ..." or "... FAILED: reason".
#
# Usage: local_test/container_test.sh
#   WICK_BIN            binary to package (default: target/release/wick, or $CARGO_TARGET_DIR's)
#   WICK_TEST_PORT      host port for the server (default: a free one; host networking)
#   WICK_EXAMPLES_DIR   where the built examples synthetic_package and s3_server are (default:
#                       cargo builds them, debug profile, into $CARGO_TARGET_DIR or target/)
#   WICK_MAX_IMAGE_MB   the image must be smaller, in MB of 10^6 bytes (default 30; see
#                       docs/performance.md "Container image")
#   WICK_PODMAN_DIR, WICK_PODMAN_STORAGE_DRIVER: see local_test/podman.sh
# Needs root, podman, runc, debootstrap, curl, python3 and cargo (unless WICK_EXAMPLES_DIR);
# .ci/container installs the system packages.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR
source "$local_test_dir/podman.sh"

max_image_mb=${WICK_MAX_IMAGE_MB:-30}
tag="container-test-$$"
image="localhost/wick:$tag"
started=$SECONDS

step() { printf '\n== [%ss] %s\n' "$((SECONDS - started))" "$*" >&2; }
fail() {
    echo "container test: FAILED: $*"
    exit 1
}

podman_configure
binary=$(wick_bin) || fail "no wick binary (cargo build --release, or set WICK_BIN)"

# What this run creates, so that cleanup removes exactly that.
build_copy="$repo_dir/dist/wick-$tag"
work="$scratch/work-$tag"
s3_pid=""
created_paths=("$work")
[[ -e "$test_dir/input/data" ]] || created_paths+=("$test_dir/input/data")
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
    [[ -z "$s3_pid" ]] || kill "$s3_pid" 2>/dev/null || true
    rm -f "$build_copy" "$scratch/events.log"
    rmdir "$repo_dir/dist" 2>/dev/null || true
    rm -rf "${created_paths[@]}"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
mkdir -p "$work"

step "inputs: the training data, the EfficientNet-Lite0 package, the examples"
if [[ ! -d "$test_dir/input/data/training" || ! -d "$test_dir/input/data/model" ]]; then
    bounded 600 "$local_test_dir/make_test_dir.sh" >/dev/null || fail "make_test_dir.sh could not build the training data"
fi
lite0=$(bounded 600 "$repo_dir/scripts/fetch-efficientnet-lite0.sh") ||
    fail "scripts/fetch-efficientnet-lite0.sh could not build the EfficientNet-Lite0 package"
payload="$local_test_dir/payload.jpg"
[[ -f "$payload" ]] || payload="$local_test_dir/payload.png"
if [[ -n "${WICK_EXAMPLES_DIR:-}" ]]; then
    examples=$WICK_EXAMPLES_DIR
else
    command -v cargo >/dev/null || fail "cargo is needed to build examples/synthetic_package.rs and examples/s3_server.rs"
    (cd "$repo_dir" && bounded 1800 cargo build --quiet --locked --example synthetic_package --example s3_server) >&2 ||
        fail "cargo build --example synthetic_package --example s3_server failed"
    examples="${CARGO_TARGET_DIR:-$repo_dir/target}/debug/examples"
fi
for example in synthetic_package s3_server; do
    [[ -x "$examples/$example" ]] || fail "no $example in $examples"
done

podman_debian_base
step "engine check: podman run --network host $debian_base ($driver storage, runc)"
engine_out=$(bounded 120 podman run --rm --network host --label "wick-container-test=$tag" "$debian_base" true 2>&1) ||
    fail "podman cannot run a container here (storage $driver, runtime runc, cgroupfs): $engine_out"

step "building $image from $binary"
podman_build_prebuilt "$binary" "$image" "$build_copy" "$tag"
image_mb=$(podman_image_mb "$image")
binary_mb=$(awk -v b="$(stat -c %s "$build_copy")" 'BEGIN { printf "%.1f", b / 1e6 }')
layers=$(podman_layer_sizes "$image")
echo "image $image: $image_mb MB (binary $binary_mb MB); layers, MB:" >&2
echo "$layers" >&2

step "image checks"
awk -v mb="$image_mb" -v max="$max_image_mb" 'BEGIN { exit !(mb < max) }' ||
    fail "the image is $image_mb MB, not under $max_image_mb MB"
user=$(podman image inspect -f '{{.Config.User}}' "$image")
[[ -z "$user" || "$user" == root || "$user" == 0 ]] || fail "the image runs as user '$user', not root"
label=$(podman image inspect -f '{{index .Config.Labels "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"}}' "$image")
[[ "$label" == true ]] || fail "accept-bind-to-port label is '$label', not true"
# The image's files, read from outside (it has no shell to look from inside).
container=$(podman create --label "wick-container-test=$tag" "$image") || fail "podman create failed"
contents=$(podman export "$container" | python3 "$local_test_dir/image_contents.py") ||
    fail "the image holds more than wick needs: $contents"
podman rm "$container" >/dev/null
echo "$contents" >&2
run_checked() { bounded 60 podman run --rm --network host --label "wick-container-test=$tag" "$@"; }
run_checked --entrypoint serve "$image" --help >/dev/null || fail "--entrypoint serve does not start wick serve"
run_checked --entrypoint train "$image" --help >/dev/null || fail "--entrypoint train does not start wick train"
if run_checked --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then
    fail "the image has a shell"
fi
if run_checked "$image" bogus >/dev/null 2>&1; then
    fail "an unknown command exited 0"
fi
echo "ok: under $max_image_mb MB, root, label, only wick + loader + libraries + CA bundle, serve/train run wick by name, no shell, unknown command fails" >&2

# Every case runs like this: read-only root, writable /tmp only, an arbitrary user, 1 GB.
locked=(--network host --read-only --tmpfs /tmp --user 65534:65534 --memory 1g
    --label "wick-container-test=$tag")

step "train: IMAGE train, /opt/ml a writable copy of test_dir owned by 65534 (locked down)"
job="$work/opt-ml"
cp -a "$test_dir" "$job"
rm -rf "$job/model" "$job/output" "$job/checkpoints"
mkdir -p "$job/model" "$job/output"
chown -R 65534:65534 "$job"
train_log="$work/train.log"
bounded 900 podman run --rm "${locked[@]}" -v "$job:/opt/ml" "$image" train >"$train_log" ||
    { cat "$train_log" >&2; fail "train exited non-zero"; }
epoch_lines=$(grep -cE '^epoch=[0-9]+; train_loss=[0-9.]+; train_accuracy=[0-9.]+;' "$train_log" || true)
tail -n 2 "$train_log" >&2
((epoch_lines > 0)) || fail "train printed no metric lines (epoch=N; train_loss=...) on stdout"
[[ -s "$job/model/config.json" && -s "$job/model/model.safetensors" ]] ||
    fail "train wrote no model package (config.json + model.safetensors) to /opt/ml/model"
[[ -s "$job/output/data/metrics.json" ]] || fail "train wrote no output/data/metrics.json"
echo "ok: model written, $epoch_lines metric lines on stdout" >&2

port=${WICK_TEST_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 18080)}

# Starts `IMAGE serve [SERVE_ARGS...]` locked down as container NAME and waits for /ping 200.
start_server() { # NAME [PODMAN_RUN_ARGS...] -- [SERVE_ARGS...]
    local name=$1 run_args=()
    shift
    while [[ $1 != -- ]]; do
        run_args+=("$1")
        shift
    done
    shift
    podman run -d --name "$name" "${locked[@]}" -e "SAGEMAKER_BIND_TO_PORT=$port" \
        "${run_args[@]}" "$image" serve "$@" >/dev/null || fail "$name: podman run IMAGE serve failed"
    local status=000
    for _ in $(seq 1 240); do
        status=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ping" || true)
        [[ "$status" == 200 ]] && break
        if [[ "$(podman inspect -f '{{.State.Running}}' "$name")" != true ]]; then
            podman logs "$name" >&2
            fail "$name: serve exited before /ping answered 200"
        fi
        sleep 0.5
    done
    [[ "$status" == 200 ]] || { podman logs "$name" >&2; fail "$name: /ping never answered 200 in 120 s (last: $status)"; }
    echo "ok: $name: /ping 200" >&2
}

# `podman stop` sends SIGTERM (SIGKILL after 30 s): wick must log its shutdown and exit 0
# promptly. Sets stop_ms.
stop_server() { # NAME
    local name=$1 started_ns code logs
    started_ns=$(date +%s%N)
    bounded 60 podman stop -t 30 "$name" >/dev/null || fail "$name: podman stop failed"
    stop_ms=$((($(date +%s%N) - started_ns) / 1000000))
    code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
    logs=$(podman logs "$name" 2>&1)
    [[ "$code" == 0 ]] || { echo "$logs" >&2; fail "$name: serve exited with code $code after SIGTERM"; }
    grep -q 'shutting down' <<<"$logs" || { echo "$logs" >&2; fail "$name: serve did not log its SIGTERM shutdown"; }
    ((stop_ms < 10000)) || fail "$name: stop took $stop_ms ms (no request in flight: expected well under 10 s)"
    echo "ok: $name: exit code 0 after SIGTERM, $stop_ms ms" >&2
}

# The JSON answer to the cat photo must start with one of ImageNet's cats.
expect_imagenet_cat() { # NAME
    local answer
    answer=$(SAGEMAKER_BIND_TO_PORT=$port bounded 60 "$local_test_dir/predict.sh" "$payload" image/jpeg) ||
        fail "$1: predict.sh failed: $answer"
    echo "${answer:0:200}" >&2
    [[ "$answer" =~ ^\[\{\"label\":\"(Egyptian\ cat|tabby|tiger\ cat)\" ]] ||
        fail "$1: the cat photo was not classified as an ImageNet cat: ${answer:0:300}"
}

step "serve-trained: IMAGE serve of the trained model, /opt/ml read-only (locked down)"
start_server "wick-trained-$tag" -v "$job:/opt/ml:ro" --
answer=$(SAGEMAKER_BIND_TO_PORT=$port bounded 60 "$local_test_dir/predict.sh" "$payload" image/jpeg) ||
    fail "predict.sh failed: $answer"
echo "$answer" >&2
[[ "$answer" == '[{"label":"cat"'* ]] || fail "the cat photo was not classified as cat: $answer"
echo "ok: predict.sh answers cat" >&2
stop_server "wick-trained-$tag"
trained_stop_ms=$stop_ms

step "serve-lite0: the ImageNet EfficientNet-Lite0 package at /opt/ml/model (locked down)"
start_server "wick-lite0-$tag" -v "$lite0:/opt/ml/model:ro" --
expect_imagenet_cat "serve-lite0"
stop_server "wick-lite0-$tag"

step "serve-deeplab: DeepLabV3+ ResNet-34 (synthetic weights) at /opt/ml/model (locked down)"
deeplab="$work/deeplabv3plus-resnet34"
bounded 300 "$examples/synthetic_package" \
    "$repo_dir/tests/fixtures/segmentation/smp_deeplabv3plus_resnet34.json" "$deeplab" >/dev/null ||
    fail "examples/synthetic_package could not write the DeepLabV3+ ResNet-34 package"
# safetensors writes its file 0600; the server runs as another user than the writer here.
chmod -R a+rX "$deeplab"
start_server "wick-deeplab-$tag" -v "$deeplab:/opt/ml/model:ro" --
photo="$test_dir/input/data/training/cat/chelsea.png"
bounded 120 curl -sS --fail-with-body -H 'Content-Type: image/png' -H 'Accept: image/png' \
    --data-binary "@$photo" -o "$work/label-map.png" "http://127.0.0.1:$port/invocations" >&2 ||
    fail "serve-deeplab: /invocations failed: $(head -c 300 "$work/label-map.png" 2>/dev/null)"
# PNG: 8-byte signature, then the IHDR chunk whose first 8 data bytes are width and height.
png_size() { python3 -c 'import struct, sys; d = open(sys.argv[1], "rb").read(24); print("%dx%d" % struct.unpack(">II", d[16:24]) if d[:8] == b"\x89PNG\r\n\x1a\n" else "not a PNG")' "$1"; }
map_size=$(png_size "$work/label-map.png")
photo_size=$(png_size "$photo")
[[ "$map_size" == "$photo_size" ]] || fail "serve-deeplab: the label map is $map_size, the photo $photo_size"
echo "ok: serve-deeplab: a $map_size PNG label map" >&2
stop_server "wick-deeplab-$tag"

step "s3: serve --model-uri s3://models/lite0/model.tar.gz from s3s-fs on 127.0.0.1 (locked down)"
s3_root="$work/s3"
mkdir -p "$s3_root/models/lite0"
bounded 300 "$binary" package "$lite0" "$s3_root/models/lite0/model.tar.gz" >&2 ||
    fail "wick package could not archive the EfficientNet-Lite0 package"
s3_key=wick-test s3_secret=wick-test-secret-1234
"$examples/s3_server" "$s3_root" "$s3_key" "$s3_secret" >"$work/s3.url" 2>"$work/s3.log" &
s3_pid=$!
for _ in $(seq 1 100); do
    [[ -s "$work/s3.url" ]] && break
    sleep 0.1
done
s3_endpoint=$(head -n 1 "$work/s3.url")
[[ "$s3_endpoint" == http://127.0.0.1:* ]] || fail "s3: the S3 server did not start: $(cat "$work/s3.log")"
start_server "wick-s3-$tag" -e "AWS_ENDPOINT_URL_S3=$s3_endpoint" -e AWS_REGION=us-east-1 \
    -e "AWS_ACCESS_KEY_ID=$s3_key" -e "AWS_SECRET_ACCESS_KEY=$s3_secret" -- \
    --model-uri s3://models/lite0/model.tar.gz
expect_imagenet_cat "s3"
downloaded=$(podman logs "wick-s3-$tag" 2>&1 | grep 'model artifacts ready' || true)
[[ "$downloaded" == *"dir=/tmp/wick-model-"* ]] ||
    fail "s3: the model was not unpacked under /tmp (log: ${downloaded:-no 'model artifacts ready' line})"
echo "ok: s3: downloaded and unpacked into /tmp" >&2
stop_server "wick-s3-$tag"

layer_summary=$(awk -F '\t' '{ printf "%s%s", sep, $1; sep = " + " }' <<<"$layers")
echo "container test: passed in $((SECONDS - started)) s (image $image_mb MB = layers $layer_summary MB, binary $binary_mb MB, $driver storage, locked down: read-only, user 65534, 1 GB; SIGTERM stop $trained_stop_ms ms)"

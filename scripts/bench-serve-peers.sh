#!/usr/bin/env bash
# `wick serve` next to a FastAPI + uvicorn + ONNX Runtime server (scripts/peers/server_ort.py)
# serving the same model with the same pre- and post-processing and answering the same JSON,
# loaded with `hey` at 1 and 16 clients POSTing the same JPEG; the two servers alternate over R
# rounds in one sitting. Prints every round, the medians, and the ratios wick / ORT: 16-client
# req/s, 1-client p50, peak RSS (VmHWM of the server and its children). Fails (exit 1, no
# ratios) on any non-200 answer or failed step.
#
# Usage: scripts/bench-serve-peers.sh [--scenario S] [--image JPG] [--rounds R]
#                                     [--duration D] [--wick PATH] [--json OUT]
#   --scenario S   lite0 (default): the real ImageNet EfficientNet-Lite0 package
#                    (scripts/fetch-efficientnet-lite0.sh) on a photo
#                  deeplabv3plus_resnet34: smp DeepLabV3+ ResNet-34, 3 classes, random weights,
#                    on a 512x512 photo; answers per-class PNG masks
#                  yolov8n: ultralytics YOLOv8n, 80 classes, random weights, on a 1920x1080
#                    photo; a threshold (Custom-Attributes) that lets 100 boxes into NMS
#   --image JPG    the photo to send (default: ../shared/fixtures/chelsea.jpg next to the repo,
#                  else scikit-image's chelsea from scripts/fetch-skimage-data.sh; scaled and
#                  cropped to 512x512 or 1920x1080 for the other scenarios, into the cache)
#   --rounds R     rounds, each server once per round, order alternating (default 2)
#   --duration D   `hey -z` per client count (default 20s)
#   --wick PATH    the wick binary (default: `cargo build --release`, honouring
#                  CARGO_TARGET_DIR)
#   --json OUT     also write every round and the ratios to OUT
#
# Needs `hey` (installed with apt-get when missing and run as root). The venv, ONNX files and
# packages live in ${WICK_CACHE_DIR:-~/.cache/wick} (see scripts/bench-peers.sh); the
# segmentation and detection packages and their ONNX twins are exported once, from the same
# random weights, by scripts/peers/export_onnx.py.
set -euo pipefail

# shellcheck source=scripts/peers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/peers/common.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-0}"
}

scenario=lite0 image="" rounds=2 duration=20s wick="" json=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --scenario) scenario=${2:?--scenario needs a name}; shift 2 ;;
        --image) image=${2:?--image needs a path}; shift 2 ;;
        --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
        --duration) duration=${2:?--duration needs a value like 20s}; shift 2 ;;
        --wick) wick=${2:?--wick needs a path}; shift 2 ;;
        --json) json=${2:?--json needs a path}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer (got $rounds)"
[[ $duration =~ ^[0-9]+(ms|s|m)$ ]] || die "--duration must look like 20s (got $duration)"
case $scenario in
    lite0 | deeplabv3plus_resnet34 | yolov8n) ;;
    *) die "unknown scenario $scenario (lite0, deeplabv3plus_resnet34, yolov8n)" ;;
esac
[[ -z $image || -f $image ]] || die "--image $image: no such file"

if ! command -v hey >/dev/null; then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        die "hey is not installed (apt-get install hey)"
    fi
    echo "installing hey (apt-get)" >&2
    { apt-get update -qq && apt-get install -y -qq hey; } >/dev/null || die "apt-get install hey failed"
fi
ensure_venv
mkdir -p "$images_dir"

# The photo everything starts from.
source_photo() {
    local shared=$repo_dir/../shared/fixtures/chelsea.jpg
    if [[ -f $shared ]]; then
        echo "$shared"
        return 0
    fi
    local jpeg=$images_dir/chelsea.jpg data
    if [[ ! -s $jpeg ]]; then
        data=$("$repo_dir/scripts/fetch-skimage-data.sh") || die "scripts/fetch-skimage-data.sh failed"
        "$venv_python" "$peers_dir/prepare.py" photo "$data/chelsea.png" "$jpeg" || die "could not write $jpeg"
    fi
    echo "$jpeg"
}

# The default photo scaled and cropped to $1 (WxH), in the cache.
sized_photo() {
    local source out
    source=$(source_photo)
    out=$images_dir/$(basename "${source%.*}")-$1.jpg
    if [[ ! -s $out || $out -ot $source ]]; then
        "$venv_python" "$peers_dir/prepare.py" photo "$source" "$out" --size "$1" || die "could not write $out"
    fi
    echo "$out"
}

attributes=""
case $scenario in
    lite0)
        task=classification
        package=$("$repo_dir/scripts/fetch-efficientnet-lite0.sh") || die "scripts/fetch-efficientnet-lite0.sh failed"
        onnx=$onnx_dir/efficientnet_lite0.onnx
        [[ -s $onnx ]] || run_export bench --out "$onnx_dir" efficientnet_lite0
        [[ -n $image ]] || image=$(source_photo)
        ;;
    deeplabv3plus_resnet34 | yolov8n)
        package=$packages_dir/$scenario
        onnx=$onnx_dir/serve-$scenario.onnx
        if [[ ! -s $package/config.json || ! -s $onnx ]]; then
            run_export package --out "$onnx_dir" --packages "$packages_dir" "$scenario"
        fi
        if [[ $scenario == yolov8n ]]; then
            task=detection
            [[ -n $image ]] || image=$(sized_photo 1920x1080)
            threshold=$("$venv_python" "$peers_dir/prepare.py" threshold --onnx "$onnx" \
                --package "$package" --image "$image" --boxes 100) || die "could not pick a threshold"
            attributes="threshold=$threshold"
        else
            task=segmentation
            [[ -n $image ]] || image=$(sized_photo 512x512)
        fi
        ;;
esac
wick=$(wick_binary "$wick")

log_dir=$cache_dir/peers-logs/$scenario
rm -rf "$log_dir"
args=(--scenario "$scenario" --task "$task" --wick "$wick" --package "$package" --onnx "$onnx"
    --image "$image" --rounds "$rounds" --duration "$duration" --commit "$(wick_commit)"
    --threads "${RAYON_NUM_THREADS:-$(nproc)}" --log-dir "$log_dir")
[[ -z $attributes ]] || args+=(--attributes "$attributes")
[[ -z $json ]] || args+=(--json "$json")
"$venv_python" "$peers_dir/serve_peers.py" "${args[@]}"

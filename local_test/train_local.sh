#!/usr/bin/env bash
# Runs a SageMaker-style training job on local_test/test_dir (the /opt/ml layout), like AWS's
# local_test/train_local.sh. Builds the dataset first when it is missing (make_test_dir.sh).
#
# Usage: local_test/train_local.sh [IMAGE]
#   With IMAGE and a working Docker engine: docker run -v test_dir:/opt/ml --rm IMAGE train
#   (plus $DOCKER_RUN_ARGS, e.g. DOCKER_RUN_ARGS="--gpus all")
#   Otherwise: the wick binary ($WICK_BIN or target/release/wick) with --ml-root test_dir.
# The trained package lands in test_dir/model, metrics in test_dir/output/data.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
image=${1:-}

if [[ ! -d "$test_dir/input/data/training" || ! -d "$test_dir/input/data/model" ]]; then
    "$local_test_dir/make_test_dir.sh" >/dev/null
fi
rm -rf "$test_dir/model" "$test_dir/output" "$test_dir/checkpoints"
mkdir -p "$test_dir/model" "$test_dir/output"

if use_docker "$image"; then
    # DOCKER_RUN_ARGS: extra `docker run` arguments, e.g. "--gpus all" or "--network host".
    read -r -a extra <<<"${DOCKER_RUN_ARGS:-}"
    exec docker run --rm ${extra[@]+"${extra[@]}"} -v "$test_dir:/opt/ml" "$image" train
else
    [[ -z "$image" ]] || echo "note: no working Docker engine; running the wick binary" >&2
    exec "$(wick_bin)" train --ml-root "$test_dir"
fi

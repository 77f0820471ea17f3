#!/usr/bin/env bash
# Serves the model in local_test/test_dir/model (train_local.sh writes it) on
# localhost:${SAGEMAKER_BIND_TO_PORT:-8080}, like AWS's local_test/serve_local.sh. Runs in the
# foreground; Ctrl-C (SIGINT) or SIGTERM stops it cleanly.
#
# Usage: local_test/serve_local.sh [IMAGE]
#   With IMAGE and a working Docker engine:
#     docker run -v test_dir:/opt/ml -p PORT:PORT -e SAGEMAKER_BIND_TO_PORT=PORT --rm IMAGE serve
#   (plus $DOCKER_RUN_ARGS, e.g. DOCKER_RUN_ARGS="--gpus all")
#   Otherwise: the wick binary ($WICK_BIN or target/release/wick) with --model-dir test_dir/model.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
image=${1:-}

if [[ ! -s "$test_dir/model/config.json" ]]; then
    echo "error: no model in $test_dir/model: run local_test/train_local.sh first" >&2
    exit 1
fi
if use_docker "$image"; then
    # DOCKER_RUN_ARGS: extra `docker run` arguments, e.g. "--gpus all" or "--network host".
    read -r -a extra <<<"${DOCKER_RUN_ARGS:-}"
    exec docker run --rm ${extra[@]+"${extra[@]}"} \
        -e "SAGEMAKER_BIND_TO_PORT=$port" -p "$port:$port" -v "$test_dir:/opt/ml" "$image" serve
else
    [[ -z "$image" ]] || echo "note: no working Docker engine; running the wick binary" >&2
    exec "$(wick_bin)" serve --model-dir "$test_dir/model" --port "$port"
fi

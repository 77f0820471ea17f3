# shellcheck shell=bash
# Shared by the local_test scripts (sourced, not run). Decides between the container image and
# the wick binary, and where things are.
# Variables here are used by the scripts that source this file.
# shellcheck disable=SC2034

local_test_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$local_test_dir/.." && pwd)
test_dir="$local_test_dir/test_dir"
port=${SAGEMAKER_BIND_TO_PORT:-8080}

# True when an image name was given and a Docker engine (or podman's Docker API) answers.
use_docker() {
    [[ -n "${1:-}" ]] && command -v docker >/dev/null && docker info >/dev/null 2>&1
}

# The wick binary for runs without Docker: $WICK_BIN, else target/release/wick of this repo or
# of $CARGO_TARGET_DIR.
wick_bin() {
    local candidate
    for candidate in "${WICK_BIN:-}" "$repo_dir/target/release/wick" \
        "${CARGO_TARGET_DIR:-$repo_dir/target}/release/wick"; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: no wick binary: build it (cargo build --release) or set WICK_BIN" >&2
    return 1
}

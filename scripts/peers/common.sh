# shellcheck shell=bash
# Shared by scripts/bench-peers.sh and scripts/bench-serve-peers.sh (sourced, not run): where the
# cache lives, the peers' venv, the one-time ONNX exports, and the wick binary.
#
# Cache layout, under ${WICK_CACHE_DIR:-$HOME/.cache/wick}:
#   peers-venv/      the venv: requirements.txt always; requirements-export.txt (torch, ...)
#                    only once something has to be exported
#   peers-onnx/KEY/      the exported ONNX files (KEY: a hash of export_onnx.py and its pins)
#   peers-packages/KEY/  wick packages for the serving scenarios (random weights)
#   peers-images/    the photos the serving scenarios send

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
peers_dir=$repo_dir/scripts/peers
cache_dir=${WICK_CACHE_DIR:-${HOME:-/tmp}/.cache/wick}
venv_dir=$cache_dir/peers-venv
# Exports live under a key of the exporter and its pins: a change to either exports afresh
# instead of reusing files made by other code (old keys can be deleted by hand).
export_key=$(cat "$peers_dir/export_onnx.py" "$peers_dir/requirements-export.txt" | sha256sum | cut -c1-12)
onnx_dir=$cache_dir/peers-onnx/$export_key
# shellcheck disable=SC2034 # used by the scripts that source this file
packages_dir=$cache_dir/peers-packages/$export_key
# shellcheck disable=SC2034
images_dir=$cache_dir/peers-images
venv_python=$venv_dir/bin/python
# The helpers run from scripts/peers/: leave no __pycache__ in the repository.
export PYTHONDONTWRITEBYTECODE=1

die() {
    echo "error: $*" >&2
    exit 1
}

# Installs requirements file $1 into the venv unless the venv already holds exactly that file's
# pins (a stamp per file records what was installed).
install_requirements() {
    local requirements=$1 stamp want
    stamp=$venv_dir/.installed-$(basename "$requirements")
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    echo "installing $(basename "$requirements") into $venv_dir (first run only)" >&2
    "$venv_python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2 \
        || die "pip could not install $requirements into $venv_dir"
    echo "$want" >"$stamp"
}

# The venv with the runtime requirements (onnxruntime, numpy, pillow, fastapi, ...).
ensure_venv() {
    if [[ ! -x $venv_python ]]; then
        local python=${PYTHON:-python3}
        command -v "$python" >/dev/null || die "$python not found (set PYTHON to a Python >= 3.10)"
        echo "creating the peers' venv in $venv_dir" >&2
        mkdir -p "$cache_dir"
        "$python" -m venv "$venv_dir" || die "could not create a venv in $venv_dir"
    fi
    install_requirements "$peers_dir/requirements.txt"
}

# Exports what is missing: `export_onnx.py` with its arguments, after installing the export
# requirements (torch & co.) into the venv.
run_export() {
    ensure_venv
    install_requirements "$peers_dir/requirements-export.txt"
    mkdir -p "$onnx_dir"
    # ultralytics writes a settings file on import; keep it in the cache, not in ~/.config.
    YOLO_CONFIG_DIR=$cache_dir/peers-ultralytics \
        "$venv_python" "$peers_dir/export_onnx.py" "$@" || die "export_onnx.py $* failed"
}

# Prints the wick binary: $1 if given (must be executable), else `cargo build --release`'s.
wick_binary() {
    local given=${1:-}
    if [[ -n $given ]]; then
        [[ -x $given ]] || die "--wick $given is not an executable file"
        echo "$given"
        return 0
    fi
    echo "building wick (cargo build --release)" >&2
    (cd "$repo_dir" && cargo build --release --quiet >&2) || die "cargo build --release failed"
    local target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$repo_dir/$target
    local built=$target/release/wick
    [[ -x $built ]] || die "cargo build finished but $built is missing"
    echo "$built"
}

# The repository's commit, `-dirty` when tracked files differ from it.
wick_commit() {
    local commit
    commit=$(git -C "$repo_dir" rev-parse --short HEAD 2>/dev/null) || {
        echo unknown
        return 0
    }
    git -C "$repo_dir" diff --quiet HEAD 2>/dev/null || commit+=-dirty
    echo "$commit"
}

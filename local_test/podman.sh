# shellcheck shell=bash
# podman the way it works on these machines, shared by local_test/container_test.sh and
# scripts/measure-cold-start.sh (sourced, not run; recipe: ../shared/docs/infra.md §2): root,
# runc (crun refuses hybrid cgroup hierarchies), cgroupfs, explicit ulimits (podman's defaults
# need CAP_SYS_RESOURCE), host networking only, all state in a scratch dir, and a Debian base
# made with debootstrap because no registry can be reached.
#
#   WICK_PODMAN_DIR             scratch dir for podman's config, storage and the Debian base
#                               (default /var/tmp/wick-podman)
#   WICK_PODMAN_STORAGE_DRIVER  overlay or vfs (default: overlay when this kernel can mount it
#                               here, else vfs)
# Callers define fail MESSAGE (prints and exits) and step MESSAGE (progress on stderr).
# Variables here are used by the scripts that source this file.
# shellcheck disable=SC2034

scratch=${WICK_PODMAN_DIR:-/var/tmp/wick-podman}
debian_base=docker.io/library/debian:bookworm-slim

# Runs a command with a deadline so a hung engine fails the caller instead of hanging it.
bounded() { # SECONDS COMMAND...
    local secs=$1
    shift
    timeout --kill-after=10 "$secs" "$@"
}

# Overlay needs kernel support and a backing filesystem that can carry an upper dir (not
# overlayfs itself on older kernels, as when /var/tmp is a container's root). Probe exactly
# that here; vfs always works, it only copies layers instead of sharing them.
podman_storage_driver() {
    local probe="$scratch/overlay-probe"
    rm -rf "$probe"
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        echo overlay
    else
        echo vfs
    fi
    rm -rf "$probe"
}

# Writes containers.conf and storage.conf into the scratch dir and points podman at them; one
# graph root per driver, as a storage cannot change driver. Sets $driver.
podman_configure() {
    [[ $EUID == 0 ]] || fail "needs root (podman runs the image as SageMaker does, as root; debootstrap)"
    local tool
    for tool in podman runc debootstrap curl timeout mount tar python3; do
        command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install -y podman buildah runc debootstrap curl python3)"
    done
    mkdir -p "$scratch"
    driver=${WICK_PODMAN_STORAGE_DRIVER:-$(podman_storage_driver)}
    mkdir -p "$scratch/tmp" "$scratch/networks" "$scratch/run-$driver" "$scratch/root-$driver"
    cat >"$scratch/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$scratch/events.log"
runtime = "runc"
tmp_dir = "$scratch/tmp"
[network]
network_config_dir = "$scratch/networks"
CONF
    cat >"$scratch/storage.conf" <<CONF
[storage]
driver = "$driver"
runroot = "$scratch/run-$driver"
graphroot = "$scratch/root-$driver"
CONF
    export CONTAINERS_CONF="$scratch/containers.conf" CONTAINERS_STORAGE_CONF="$scratch/storage.conf"
}

# No registry here: make the Debian base (the Dockerfile's RUNTIME_IMAGE) once, trimmed like
# the official slim image, and keep it as a tarball so a new storage (or driver) only
# re-imports it.
podman_debian_base() {
    local base_tar="$scratch/debian-bookworm-minbase.tar"
    podman image exists "$debian_base" 2>/dev/null && return 0
    if [[ ! -s "$base_tar" ]]; then
        step "making $debian_base with debootstrap (once; cached as $base_tar)"
        local mirror=""
        if grep -qs '^ID=debian' /etc/os-release; then
            mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
            [[ -n "$mirror" ]] || mirror=$(awk '$1 == "deb" && $3 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
        fi
        mirror=${mirror:-http://deb.debian.org/debian}
        local keyring=()
        [[ -s /usr/share/keyrings/debian-archive-keyring.gpg ]] &&
            keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
        local rootfs="$scratch/rootfs"
        rm -rf "$rootfs"
        bounded 1200 debootstrap ${keyring[@]+"${keyring[@]}"} --variant=minbase bookworm "$rootfs" "$mirror" \
            >"$scratch/debootstrap.log" 2>&1 ||
            { tail -n 20 "$scratch/debootstrap.log" >&2; fail "debootstrap bookworm from $mirror failed (log: $scratch/debootstrap.log)"; }
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        tar -C "$rootfs" -cf "$base_tar.part" .
        mv "$base_tar.part" "$base_tar"
        rm -rf "$rootfs"
    fi
    step "importing $debian_base ($driver storage)"
    bounded 300 podman import "$base_tar" "$debian_base" >/dev/null || fail "podman import of $base_tar failed"
}

# Builds the Dockerfile's `prebuilt` target from BINARY as IMAGE; the binary is copied (and
# stripped) to BUILD_COPY inside the repository, the build context. The caller removes it.
podman_build_prebuilt() { # BINARY IMAGE BUILD_COPY REVISION
    local binary=$1 image=$2 build_copy=$3 revision=$4
    mkdir -p "$(dirname "$build_copy")"
    cp "$binary" "$build_copy"
    # The release profile strips already; this covers binaries built otherwise.
    if command -v strip >/dev/null; then strip "$build_copy"; fi
    bounded 900 podman build --pull=never --network host --target prebuilt \
        --build-arg "WICK_BINARY=${build_copy#"$repo_dir/"}" --build-arg "REVISION=$revision" \
        -t "$image" "$repo_dir" >&2 ||
        fail "podman build failed (a binary built on a newer glibc than Debian 12's 2.36 cannot run in the image: build on Debian 12)"
}

# The image's layers with content, oldest first: "SIZE_MB<TAB>INSTRUCTION" per line, MB of
# 10^6 bytes (`podman history`, whose templated sizes are always rounded for humans).
podman_layer_sizes() { # IMAGE
    podman history --format json "$1" | python3 -c '
import json, re, sys
for layer in reversed(json.load(sys.stdin)):
    if layer["size"] > 0:
        made_by = re.sub(r"^/bin/sh -c #\(nop\) |(file|dir):[0-9a-f]+ ", "", layer["CreatedBy"])
        print("%.2f\t%s" % (layer["size"] / 1e6, made_by.strip()[:100]))
'
}

# MB (10^6 bytes, one decimal) of the image as `podman image inspect` counts it.
podman_image_mb() { # IMAGE
    awk -v b="$(podman image inspect -f '{{.Size}}' "$1")" 'BEGIN { printf "%.1f", b / 1e6 }'
}

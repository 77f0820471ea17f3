# syntax=docker/dockerfile:1
# wick: one Rust binary serving and training image models under SageMaker's container contract.
#
# The image is FROM scratch: the wick binary, the dynamic loader and the shared libraries it
# links (found with ldd by container/make-rootfs), the CA bundle, `serve` and `train` as links
# to wick, an empty /tmp. No shell, no package manager. It runs with a read-only root, as any
# user id (it writes only under $TMPDIR and /opt/ml).
#
# Targets:
#   runtime   (default) builds wick from source in a Rust image, then copies it into the image
#             docker build -t wick .
#   prebuilt  takes a binary built outside Docker (for machines that cannot pull a Rust image);
#             the binary must be built for glibc <= bookworm's (e.g. on Debian 12):
#             cargo build --release --locked   (the release profile strips symbols)
#             docker build --target prebuilt --build-arg WICK_BINARY=target/release/wick -t wick .
#
# CUDA variant for GPU instances (candle's `cuda` feature; nvidia-docker supplies the driver,
# the image carries only CUDA user-space libraries):
#   docker build \
#     --build-arg RUST_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#     --build-arg IMAGE_BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#     --build-arg CARGO_FEATURES=cuda --build-arg INSTALL_RUST=1 -t wick:cuda .
# (A CUDA devel image has no Rust toolchain: INSTALL_RUST=1 installs it with rustup, at the
# version rust-toolchain.toml pins. IMAGE_BASE: the CUDA libraries are loaded at run time, not
# linked, so ldd cannot find them; the image keeps the whole CUDA runtime image under wick.)

ARG RUST_IMAGE=rust:1.95-bookworm
# Where the loader, the libraries and the CA bundle come from (the glibc wick runs on).
ARG RUNTIME_IMAGE=debian:bookworm-slim
# What the image starts from: nothing, or a CUDA runtime image for the CUDA variant.
ARG IMAGE_BASE=scratch

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
ARG CARGO_FEATURES=""
ARG INSTALL_RUST=0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
WORKDIR /src
COPY rust-toolchain.toml ./
# nasm assembles libjpeg-turbo's SIMD (the JPEG decoder, through the mozjpeg crate).
# Unpinned apt packages on purpose: the distribution's current (security-patched) versions.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends nasm \
    && if [ "$INSTALL_RUST" = 1 ]; then \
        apt-get install -y --no-install-recommends curl ca-certificates gcc \
        && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none; \
    fi \
    && rm -rf /var/lib/apt/lists/* \
    && rustup toolchain install
# Dependencies in their own layer: a dummy crate with the real manifest and lock file, so a
# source change does not rebuild candle, tokio and the AWS SDK.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src examples tests/it \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > examples/artifact_bench.rs && echo '' > tests/it/main.rs \
    && cargo build --release --locked --features "$CARGO_FEATURES" \
    && rm -rf src examples tests
COPY src ./src
COPY examples ./examples
COPY tests/it/main.rs ./tests/it/main.rs
# Touch the sources so cargo rebuilds the crate over the dummy one.
RUN find src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --features "$CARGO_FEATURES" \
    && install -s -m 0755 target/release/wick /usr/local/bin/wick

# ---------------------------------------------------------------------------------------------
# Root certificates for S3 model downloads (--model-uri: rustls with the system's roots). Only the
# bundle goes into the runtime image; the ca-certificates package would add openssl (~11 MB).
FROM ${RUNTIME_IMAGE} AS certs
# Unpinned on purpose: the distribution's current certificates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
# The image's files, collected next to the binary they serve (make-rootfs runs the binary, so a
# binary that needs a newer glibc fails the build here). Two stages, one per binary source.
FROM ${RUNTIME_IMAGE} AS rootfs-prebuilt
ARG WICK_BINARY=target/release/wick
COPY --from=certs /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chmod=0755 container/make-rootfs /usr/local/sbin/make-rootfs
COPY --chmod=0755 ${WICK_BINARY} /usr/local/bin/wick
RUN ["/usr/local/sbin/make-rootfs", "/usr/local/bin/wick", "/rootfs"]

FROM ${RUNTIME_IMAGE} AS rootfs-runtime
COPY --from=certs /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chmod=0755 container/make-rootfs /usr/local/sbin/make-rootfs
COPY --from=builder --chmod=0755 /usr/local/bin/wick /usr/local/bin/wick
RUN ["/usr/local/sbin/make-rootfs", "/usr/local/bin/wick", "/rootfs"]

# ---------------------------------------------------------------------------------------------
# The image without its files.
FROM ${IMAGE_BASE} AS base
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="wick" \
      org.opencontainers.image.description="SageMaker-compatible serving and training container for image models, in one Rust binary" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
# SageMaker runs containers as root and mounts /opt/ml at run time: no USER, nothing under
# /opt/ml. Logs go straight to stderr/stdout (no buffering to configure). Temporary files
# (S3 downloads, unpacked archives) go to $TMPDIR. PATH: the engine's default, which has
# /usr/local/bin. No RUST_LOG and no SAGEMAKER_CONTAINER_LOG_LEVEL here: the endpoint's
# SAGEMAKER_CONTAINER_LOG_LEVEL sets the level (info when unset), and a RUST_LOG given at run
# time still wins.
ENV TMPDIR=/tmp
EXPOSE 8080
# Exec form: wick is PID 1 and receives SIGTERM itself (it drains and exits 0).
# `docker run IMAGE serve` / `docker run IMAGE train` pass the command as argv[1]; run as
# `serve` or `train` (the links on PATH), wick takes the command from its own name.
ENTRYPOINT ["/usr/local/bin/wick"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# A binary built outside (docker build --target prebuilt --build-arg WICK_BINARY=path).
# Two layers: the loader, libraries, CA bundle and links (the same from build to build), then
# the binary.
FROM base AS prebuilt
COPY --from=rootfs-prebuilt /rootfs/ /
COPY --from=rootfs-prebuilt /usr/local/bin/wick /usr/local/bin/wick

# ---------------------------------------------------------------------------------------------
# Default target: the binary from the builder stage.
FROM base AS runtime
COPY --from=rootfs-runtime /rootfs/ /
COPY --from=rootfs-runtime /usr/local/bin/wick /usr/local/bin/wick

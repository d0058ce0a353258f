# syntax=docker/dockerfile:1
#
# Khun Phaen Sync Server image: a release build on the official Rust image,
# copied into distroless (glibc + libgcc, no shell, no package manager) and
# run as the image's unprivileged `nonroot` user.
#
#   docker build -t khun-phaen-sync-server .
#   docker run --rm -p 3001:3001 -v sync-data:/data khun-phaen-sync-server
#
# Build stage and runtime share Debian 12 (bookworm), so the binary's glibc
# matches the one it runs against.

ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# Dependency layer: only the manifests and the lock file, with stub sources.
# It is rebuilt when dependencies change, not when our code does.
# (loadgen is a workspace member; cargo needs its manifest and a target to
# load the workspace, but the image never builds it.)
COPY Cargo.toml Cargo.lock ./
COPY tools/loadgen/Cargo.toml tools/loadgen/Cargo.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    mkdir -p src tools/loadgen/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo 'fn main() {}' > tools/loadgen/src/main.rs \
    && cargo build --release --locked -p sync-server \
    && rm -rf src

# Our sources. `touch` because COPY keeps the context's timestamps, which can
# be older than the stub build and would make cargo keep the stub binary.
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    find src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p sync-server --bin sync-server \
    && install -D -m 0755 target/release/sync-server /out/sync-server \
    && install -d -m 0700 /out/data \
    && /out/sync-server --version

FROM gcr.io/distroless/cc-debian12:nonroot
# The workflow passes the repository URL; ghcr uses this label to link the
# package to its repository.
ARG SOURCE_URL=https://github.com/fakduai-logistics-and-digital-platform/khun-phaen-tracker
LABEL org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.title="khun-phaen-sync-server" \
      org.opencontainers.image.description="Real-time room and document sync server for the Khun Phaen Task Tracker" \
      org.opencontainers.image.licenses="MIT"

COPY --from=build /out/sync-server /usr/local/bin/sync-server
# The room store (ROOM_STORE=file). distroless has no shell to mkdir with:
# copy an empty directory owned by the runtime user. A named volume mounted
# here starts with that owner.
COPY --from=build --chown=65532:65532 /out/data /data

ENV HOST=0.0.0.0 \
    PORT=3001 \
    RUST_LOG=info \
    DATA_DIR=/data
VOLUME ["/data"]
# 65532 is distroless's `nonroot`; numeric so that runtimes that check
# "runAsNonRoot" can verify it without reading /etc/passwd.
USER 65532:65532
EXPOSE 3001

# The binary probes its own /health (no shell or curl in this image). It reads
# the same HOST/PORT, so an overridden PORT is followed automatically.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/sync-server", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/sync-server"]

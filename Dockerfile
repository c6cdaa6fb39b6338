# syntax=docker/dockerfile:1
#
# flagrelay container image.
#
#   docker build -t flagrelay:dev .
#   docker run --rm -p 7700:7700 -p 7701:7701 flagrelay:dev
#
# Build stage: a glibc release build of the crate (Cargo.lock is honoured
# with --locked). Runtime stage: distroless "cc" (glibc + libgcc, no shell,
# no package manager) running as the distroless nonroot user (65532).
# See docs/deploy.md for the environment variables, mounted config and probes.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole (filtered, see .dockerignore) context: Cargo.toml, Cargo.lock,
# src/ and any benches/tests/examples the manifest declares.
COPY . .
# Cache mounts keep the crates.io registry and the target dir between builds
# (BuildKit). The binary is copied out of the cached target dir to /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flagrelay \
 && install -D -m 0755 target/release/flagrelay /out/flagrelay

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="flagrelay" \
      org.opencontainers.image.description="Streaming feature-flag relay proxy" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/flagrelay /usr/local/bin/flagrelay

# Default configuration: the repository's example config and flags, so the
# image starts with no mounts. The example config names its flags file as
# the relative path config/flags.json, which resolves against the working
# directory /etc/flagrelay. Replace it by mounting your own file over
# /etc/flagrelay/flagrelay.toml, or mount one anywhere and point
# FLAGRELAY_CONFIG at it (the Helm chart mounts /etc/flagrelay/conf/).
COPY config/flagrelay.toml /etc/flagrelay/flagrelay.toml
COPY config/ /etc/flagrelay/config/
WORKDIR /etc/flagrelay

# Inside a container the listeners must bind every interface (the example
# config binds 127.0.0.1). The environment overrides the config file.
ENV FLAGRELAY_CONFIG=/etc/flagrelay/flagrelay.toml \
    FLAGRELAY_LISTEN=0.0.0.0:7700 \
    FLAGRELAY_ADMIN_LISTEN=0.0.0.0:7701

# Numeric UID:GID so Kubernetes can verify runAsNonRoot.
USER 65532:65532

# 7700: SDK API (SSE + polling). 7701: admin (/healthz /readyz /metrics /status).
EXPOSE 7700 7701

# Health: distroless has no shell or curl, so the image declares no
# HEALTHCHECK. Probe the admin port from outside instead:
#   liveness  GET http://<pod>:7701/healthz  (200 while the process is alive)
#   readiness GET http://<pod>:7701/readyz   (200 once every environment has data)
# The Helm chart wires these as Kubernetes httpGet probes.
# SIGTERM starts the graceful SSE drain (config: sse.drain_window_secs,
# shutdown_timeout_secs); the image does not change the stop signal.
ENTRYPOINT ["/usr/local/bin/flagrelay"]
CMD ["serve"]

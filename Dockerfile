# syntax=docker/dockerfile:1.7
#
# tollgate's container image: the workspace is built in the official Rust image, the binary runs
# on distroless "cc" (glibc + libgcc, no shell, no package manager) as the non-root user 65532.
#
#   docker build -t tollgate:dev .                                  # the service (default target)
#   docker build --target loadtest -t tollgate-load:dev .           # the load generator
#   docker run --rm -p 8081:8081 -p 8080:8080 \
#     -v "$PWD/limits:/etc/tollgate/config:ro" --read-only tollgate:dev
#
# The Helm chart (helm/tollgate) runs this image with a read-only root filesystem, all
# capabilities dropped, and `serve ...` arguments of its own. This file has not been built in
# this repository's CI: the build machines have no container engine (see helm/tollgate/README.md).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- build ------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# protoc, for build scripts that compile .proto files (tonic / prost).
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace (the root crate and loadtest/); .dockerignore keeps target/, .git and the
# non-Rust parts of the repository out of the context.
COPY . .
# Cache mounts keep the registry and target/ between builds; the binaries are copied out of the
# cached target/ because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/tollgate target/release/tollgate-load /out/

# --- load generator (optional target) -----------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS loadtest
COPY --from=build /out/tollgate-load /usr/local/bin/tollgate-load
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tollgate-load"]

# --- runtime (default target) ------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.description="Envoy global rate limit service with replicated token buckets (no Redis)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tollgate /usr/local/bin/tollgate
# distroless' "nonroot" user; the chart sets the same uid (runAsUser: 65532).
USER 65532:65532
# 8081 gRPC (RLS + grpc.health.v1), 8080 HTTP (/healthz /readyz /metrics /json /rlconfig),
# 8082 peer replication stream.
EXPOSE 8081 8080 8082
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve", "--config", "/etc/tollgate/config"]

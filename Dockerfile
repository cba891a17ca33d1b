# ci-worker container image: one binary, four roles (`run`, `emulator`, `submit`, `health`), chosen by CMD.
#
#   docker build -t ci-worker:dev .
#   docker run --rm ci-worker:dev config          # effective configuration, secrets redacted
#   docker run --rm -p 127.0.0.1:9000:9000 -p 127.0.0.1:9100:9100 \
#     -e CI_WORKER__EMULATOR__LISTEN=0.0.0.0:9000 -e CI_WORKER__EMULATOR__CMQ_LISTEN=0.0.0.0:9100 \
#     -e TENCENTCLOUD_SECRET_ID=AKIDlocalDemoOnlyNotARealKey0000 \
#     -e TENCENTCLOUD_SECRET_KEY=localDemoOnlyNotARealSecretKey00 \
#     ci-worker:dev emulator                       # the CI emulator alone: job API :9000, CMQ :9100
#
# Stages (`--target`):
#   build             the official Rust image on Debian 12 (bookworm), the same glibc as the runtime.
#                     BuildKit cache mounts keep the crates and target/ between builds, so a change
#                     of src/ recompiles the crate only.
#   debug-symbols     the binary's debug info (line tables and symbols), split off the shipped binary:
#                       docker build --target debug-symbols --output type=local,dest=./symbols .
#                     writes symbols/ci-worker.debug, matching the image built from the same cache
#                     (same GNU build-id; `addr2line -e ci-worker.debug -f -i <address>`, or gdb,
#                     which finds it through the binary's .gnu_debuglink).
#   runtime-prebuilt  the runtime from a binary built outside: the context holds prebuilt/, made by
#                     `scripts/image-rootfs.sh <binary> <context>/prebuilt <debug file>`
#                     (scripts/compose-check.sh does this with the binary the tests built).
#   runtime           (the default) the image: distroless static (users, CA certificates, tzdata; no
#                     shell, no package manager), the stripped binary and the glibc libraries it links
#                     (copied from the build stage, which is what it was linked against; rebuild the
#                     image to take glibc updates). User nonroot (65532). The binary uses rustls with
#                     bundled web PKI roots: no OpenSSL is needed at run time.
#
# Behind a TLS-intercepting proxy or without crates.io (hooks of the build stage; both optional):
#   --secret id=ca,src=corp-ca.pem        a PEM CA bundle that apt and cargo trust during the build
#   --build-arg CARGO_REGISTRY_MIRROR=sparse+https://mirror.example/index/
#                                         a crates.io mirror (source replacement; Cargo.lock stays)
#   HTTP_PROXY / HTTPS_PROXY / NO_PROXY build arguments are passed through as Docker always does.
# In docker-compose.yml: `build: secrets: [ca]` with a top-level `secrets: ca: file: ...`, and
# `build: args: CARGO_REGISTRY_MIRROR: ...`.

ARG RUST_VERSION=1.95
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM rust:${RUST_VERSION}-bookworm AS build
# A corporate CA first: apt and cargo below may have to trust it.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then \
      cp /run/secrets/ca /usr/local/share/ca-certificates/build-ca.crt && update-ca-certificates; \
    fi
# protoc: the pulsar crate's build.rs compiles Pulsar's protocol definitions.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
ARG CARGO_REGISTRY_MIRROR=
RUN if [ -n "$CARGO_REGISTRY_MIRROR" ]; then \
      printf '[source.crates-io]\nreplace-with = "mirror"\n[source.mirror]\nregistry = "%s"\n' \
        "$CARGO_REGISTRY_MIRROR" >> "$CARGO_HOME/config.toml"; \
    fi
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
COPY scripts/image-rootfs.sh /usr/local/bin/image-rootfs
# target/ lives in a cache mount, not in the image: the binary leaves it within this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked \
 && image-rootfs target/release/ci-worker /out/rootfs /out/ci-worker.debug \
 && /out/rootfs/usr/local/bin/ci-worker --version

FROM scratch AS debug-symbols
COPY --from=build /out/ci-worker.debug /

FROM ${RUNTIME_IMAGE} AS runtime-base
ARG RUNTIME_IMAGE
ARG VERSION=0.6.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ci-worker" \
      org.opencontainers.image.description="Pulsar/TDMQ worker that submits Tencent Cloud Infinite (CI) media jobs and republishes normalized results" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
# nonroot (65532), numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 9464: `run` — /metrics, /healthz, /readyz (http.listen). 9000: `emulator` — the CI job API
# (emulator.listen); 9100: its TDMQ for CMQ API (emulator.cmq_listen). Both emulator addresses
# default to 127.0.0.1: set them to 0.0.0.0:<port> in a container, as above.
EXPOSE 9464 9000 9100
ENTRYPOINT ["ci-worker"]
CMD ["run"]

FROM runtime-base AS runtime-prebuilt
COPY prebuilt/ /

FROM runtime-base AS runtime
# /usr/local/bin/ci-worker and the libraries it links.
COPY --from=build /out/rootfs/ /

# ci-worker container image: one binary, three roles (`run`, `emulator`, `submit`), chosen by CMD.
#
#   docker build -t ci-worker:dev .
#   docker run --rm ci-worker:dev config          # effective configuration, secrets redacted
#
# Build stage: the official Rust image on Debian 12 (bookworm), the same glibc as the runtime.
# Runtime stage: distroless cc (glibc, libgcc, CA certificates, tzdata; no shell), user nonroot (65532).
# The binary uses rustls with bundled web PKI roots: no OpenSSL is needed at run time.

ARG RUST_VERSION=1.95
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-bookworm AS build
# protoc: the pulsar crate's build.rs compiles Pulsar's protocol definitions.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# 1. Dependencies only, against placeholder sources: this layer is reused until Cargo.toml or
#    Cargo.lock change. Targets the manifest declares by name ([[bench]], [[test]], [[example]])
#    get placeholders too: cargo refuses a manifest whose targets are missing, even for targets a
#    release build never compiles.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && awk -F'"' '/^\[\[(bench|test|example)\]\]/ { d = $0; sub(/^\[\[/, "", d); sub(/\]\].*/, "", d); \
        d = (d == "bench") ? "benches" : (d == "test") ? "tests" : "examples"; next } \
      /^\[/ { d = "" } \
      d != "" && /^name *=/ { print d "/" $2 ".rs" }' Cargo.toml \
    | while read -r f; do mkdir -p "${f%/*}" && echo 'fn main() {}' > "$f"; done \
 && cargo build --release --locked \
 && rm -rf src

# 2. The crate itself. touch: COPY keeps the context's modification times, which may be older than
#    the placeholder build above; cargo must see the real sources as newer.
COPY src ./src
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/ci-worker /out/ci-worker \
 && /out/ci-worker --version

FROM ${RUNTIME_IMAGE}
ARG RUNTIME_IMAGE
ARG VERSION=0.5.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ci-worker" \
      org.opencontainers.image.description="Pulsar/TDMQ worker that submits Tencent Cloud Infinite (CI) media jobs and republishes normalized results" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build /out/ci-worker /usr/local/bin/ci-worker
# nonroot (65532), numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 9464: `run` — /metrics, /healthz, /readyz (http.listen). 9000: `emulator` — the CI job API
# (emulator.listen; set CI_WORKER__EMULATOR__LISTEN=0.0.0.0:9000 in a container).
EXPOSE 9464 9000
ENTRYPOINT ["ci-worker"]
CMD ["run"]

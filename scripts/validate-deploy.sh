#!/usr/bin/env bash
# Validates the deployment files offline: deploy/ (kustomize base and the keda-prometheus overlay),
# docker-compose.yml and the Dockerfile. Idempotent; installs what it needs when it is missing, into
# a cache outside the repository (reused by later runs and by other clones on the machine):
#   - kustomize: `kubectl kustomize` when kubectl bundles kustomize v5, else kustomize
#     $KUSTOMIZE_VERSION built with `go install` from the Go module proxy
#   - docker compose v2: `docker compose` / `docker-compose` v2 when present, else Compose
#     $COMPOSE_VERSION built from the Go module proxy (`docker compose config` needs no engine)
#   - Go itself, if missing or older than 1.21: Debian's golang-go, then the official toolchain
#     $GO_BOOTSTRAP_TOOLCHAIN as a Go module (golang.org/toolchain), as the go command fetches it
#   - kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI) in a venv
#   - @kubernetes-models/keda (npm, deploy/validate/package-lock.json) for KEDA's CRD schemas
#   - Debian packages only when a tool is missing: python3-venv, nodejs + npm, golang-go
# Then, failing with a message naming the file and the rule:
#   1. renders deploy/base and deploy/keda-prometheus with kustomize
#   2. kubernetes-validate --strict on each render, for every Kubernetes version in
#      $VALIDATE_K8S_VERSIONS (unknown fields are errors; any kind without a schema other than
#      KEDA's is an error)
#   3. `docker compose config --quiet` on docker-compose.yml (all profiles, no .env, no inherited
#      variables: the committed defaults)
#   4. deploy/validate/check_manifests.py: how the files fit ci-worker and each other (probes on
#      /healthz and /readyz, restricted security context, grace period above the drain time,
#      ConfigMap keys that `ci-worker config` accepts, KEDA trigger = the worker's request
#      subscription, TriggerAuthentication -> Secret key, prometheus query on exported series,
#      compose topics/credentials/callback wiring, Dockerfile rules and a dry run of its build
#      stage with `cargo fetch --locked` in place of `cargo build`, placeholder-only Secrets, no
#      real-looking credentials anywhere in deploy/, docker-compose.yml, README.md),
#      and KEDA objects against deploy/validate/keda.schema.json (strict)
#   5. the KEDA objects against KEDA's own CRD schemas (deploy/validate/keda-crd-check.mjs)
#
# `validate-deploy.sh --compose-only` installs Docker Compose as above, prints the command, and exits
# (scripts/compose-check.sh gets its compose this way).
#
# Environment:
#   VALIDATE_CACHE_DIR [${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/validate-deploy]
#   VALIDATE_K8S_VERSIONS ["1.28.0 1.37.0"]   VALIDATE_VERBOSE=1 lists every passing check
#   CI_WORKER_BIN [newest of target/{debug,release}/ci-worker]: the binary for the
#     `ci-worker config` checks; without one those checks are skipped (said so in the output)
#   KUSTOMIZE=path, COMPOSE="docker compose"|path: use these instead of looking
#   VALIDATE_PINNED=1: ignore kubectl / docker compose on the machine, use the pinned versions
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.7.1}
COMPOSE_VERSION=${COMPOSE_VERSION:-v2.40.3}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
GO_BOOTSTRAP_TOOLCHAIN=${GO_BOOTSTRAP_TOOLCHAIN:-go1.24.9}
VALIDATE_K8S_VERSIONS=${VALIDATE_K8S_VERSIONS:-1.28.0 1.37.0}
CACHE=${VALIDATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/validate-deploy}
WORK="$REPO_ROOT/.cache/validate-deploy"

T0=$SECONDS
say() { echo "validate-deploy: $*" >&2; }
die() { echo "validate-deploy: error: $*" >&2; exit 1; }
phase() { say "$* ($((SECONDS - T0)) s)"; }

mkdir -p "$CACHE/bin" "$WORK"
export GOFLAGS="${GOFLAGS:-}" GOTOOLCHAIN=auto

# --- tools --------------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() { # package...
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: $*"
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null 2>&1 || die "no apt-get; install by hand: $*"
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  if ((APT_UPDATED == 0)); then
    "${sudo[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

version_ge() { # have want: dotted versions, numeric per part
  [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

GO=""
ensure_go() {
  [[ -n $GO ]] && return 0
  local v=""
  if command -v go >/dev/null 2>&1; then
    v=$(go env GOVERSION 2>/dev/null || true)
    v=${v#go}
  fi
  if [[ -n $v ]] && version_ge "$v" 1.21; then
    GO=$(command -v go)
    return 0
  fi
  command -v go >/dev/null 2>&1 || apt_install golang-go ca-certificates
  # Debian 12's Go (1.19) predates GOTOOLCHAIN: fetch the official toolchain the way the go
  # command itself does, as the module golang.org/toolchain from the module proxy.
  local arch mod dir
  arch=$(go env GOARCH)
  mod="golang.org/toolchain@v0.0.1-$GO_BOOTSTRAP_TOOLCHAIN.linux-$arch"
  say "Go ${v:-?} is older than 1.21: fetching $mod"
  dir=$(cd "$CACHE" && GOFLAGS=-mod=mod go mod download -json "$mod" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [[ -n $dir && -f $dir/bin/go ]] || die "could not fetch $mod"
  chmod -R u+w "$dir" && chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/*
  GO="$dir/bin/go"
  unset GOROOT # the toolchain finds its own
  "$GO" version >/dev/null || die "the fetched toolchain does not run: $GO"
}

KUSTOMIZE_CMD=()
ensure_kustomize() {
  if [[ -n ${KUSTOMIZE:-} ]]; then
    KUSTOMIZE_CMD=("$KUSTOMIZE" build)
    return
  fi
  if [[ ${VALIDATE_PINNED:-0} != 1 ]] && command -v kubectl >/dev/null 2>&1 &&
    kubectl version --client 2>/dev/null | grep -q '^Kustomize Version: v5\.'; then
    KUSTOMIZE_CMD=(kubectl kustomize)
    return
  fi
  local bin="$CACHE/bin/kustomize-$KUSTOMIZE_VERSION"
  if [[ ! -x $bin ]]; then
    ensure_go
    say "building kustomize $KUSTOMIZE_VERSION (go install; once per machine)"
    local tmp="$CACHE/build/kustomize-$KUSTOMIZE_VERSION"
    rm -rf "$tmp" && mkdir -p "$tmp"
    (cd "$tmp" && GOBIN="$tmp" "$GO" install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION") >"$tmp.log" 2>&1 ||
      { tail -n 20 "$tmp.log" >&2; die "go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION failed (log: $tmp.log)"; }
    mv "$tmp/kustomize" "$bin"
    rm -rf "$tmp" "$tmp.log"
  fi
  KUSTOMIZE_CMD=("$bin" build)
}

COMPOSE_CMD=()
ensure_compose() {
  if [[ -n ${COMPOSE:-} ]]; then
    read -r -a COMPOSE_CMD <<<"$COMPOSE"
    return
  fi
  if [[ ${VALIDATE_PINNED:-0} == 1 ]]; then
    :
  elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    COMPOSE_CMD=(docker compose)
    return
  elif command -v docker-compose >/dev/null 2>&1 &&
    docker-compose version --short 2>/dev/null | grep -q '^v\{0,1\}2\.'; then
    COMPOSE_CMD=(docker-compose)
    return
  fi
  local bin="$CACHE/bin/docker-compose-$COMPOSE_VERSION"
  if [[ ! -x $bin ]]; then
    ensure_go
    say "building Docker Compose $COMPOSE_VERSION from the Go module proxy (once per machine; a few minutes)"
    local tmp="$CACHE/build/compose-$COMPOSE_VERSION" gomod
    rm -rf "$tmp" && mkdir -p "$tmp"
    # Compose's go.mod has exclude directives, so `go install pkg@version` refuses it: build it from
    # a module of our own that carries the same excludes.
    gomod=$(cd "$tmp" && "$GO" mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [[ -f $gomod ]] || die "could not fetch github.com/docker/compose/v2@$COMPOSE_VERSION"
    {
      printf 'module local/compose-build\n\ngo 1.22\n\n'
      sed -n '/^exclude (/,/^)/p; /^exclude [^(]/p' "$gomod"
    } >"$tmp/go.mod"
    (
      cd "$tmp"
      "$GO" get "github.com/docker/compose/v2/cmd@$COMPOSE_VERSION"
      "$GO" build -trimpath \
        -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
        -o "$tmp/docker-compose" github.com/docker/compose/v2/cmd
    ) >"$tmp.log" 2>&1 || { tail -n 20 "$tmp.log" >&2; die "building Docker Compose failed (log: $tmp.log)"; }
    mv "$tmp/docker-compose" "$bin"
    rm -rf "$tmp" "$tmp.log"
  fi
  COMPOSE_CMD=("$bin")
}

PY=""
ensure_venv() {
  local python=${PYTHON:-python3}
  if ! command -v "$python" >/dev/null 2>&1; then
    apt_install python3 python3-venv
  elif ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  local pyver venv stamp want
  pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  venv="$CACHE/venv-py$pyver"
  stamp="$venv/.installed"
  want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION tomli==2.2.1"
  if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
  fi
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    say "installing $want into $venv"
    # tomli only where tomllib is missing (Python < 3.11).
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" 'tomli==2.2.1; python_version < "3.11"'
    echo "$want" >"$stamp"
  fi
  PY="$venv/bin/python"
}

NODE_MODULES=""
ensure_node() {
  local major=0
  if command -v node >/dev/null 2>&1; then
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  fi
  if ((major < 18)) || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  local lock="$REPO_ROOT/deploy/validate/package-lock.json" hash dir
  hash=$(cat "$REPO_ROOT/deploy/validate/package.json" "$lock" | sha256sum | cut -c1-16)
  dir="$CACHE/node-$hash"
  if [[ ! -f $dir/.installed ]]; then
    say "installing deploy/validate/package.json (npm ci) into $dir"
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$REPO_ROOT/deploy/validate/package.json" "$lock" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || die "npm ci failed in $dir"
    touch "$dir/.installed"
  fi
  NODE_MODULES="$dir/node_modules"
}

if [[ ${1:-} == --compose-only ]]; then
  ensure_compose
  echo "${COMPOSE_CMD[*]}"
  exit 0
fi

phase "tools"
ensure_kustomize
ensure_compose
ensure_venv
ensure_node
kv_version=$("$PY" -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')
compose_version=$("${COMPOSE_CMD[@]}" version --short 2>/dev/null || echo "?")
kustomize_version=$(if [[ ${KUSTOMIZE_CMD[0]} == kubectl ]]; then
  kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p'
else "${KUSTOMIZE_CMD[0]}" version 2>/dev/null; fi)
say "kustomize ${kustomize_version:-?} (${KUSTOMIZE_CMD[*]}), compose $compose_version, kubernetes-validate ${kv_version:-?}, node $(node --version)"

BIN=${CI_WORKER_BIN:-}
if [[ -z $BIN ]]; then
  for b in target/debug/ci-worker target/release/ci-worker; do
    if [[ -x $b && (-z $BIN || $b -nt $BIN) ]]; then BIN=$b; fi
  done
fi
[[ -z $BIN || -x $BIN ]] || die "CI_WORKER_BIN=$BIN is not executable"

# --- checks -------------------------------------------------------------------------------------

failed=()

phase "rendering deploy/base and deploy/keda-prometheus"
renders=()
for overlay in base keda-prometheus; do
  out="$WORK/$overlay.yaml"
  if "${KUSTOMIZE_CMD[@]}" "deploy/$overlay" >"$out" 2>"$WORK/$overlay.err"; then
    renders+=(--render "$overlay=$out")
  else
    cat "$WORK/$overlay.err" >&2
    failed+=("kustomize could not render deploy/$overlay")
  fi
done

phase "kubernetes-validate --strict (Kubernetes $VALIDATE_K8S_VERSIONS)"
for r in "$WORK"/base.yaml "$WORK"/keda-prometheus.yaml; do
  [[ -s $r ]] || continue
  for k in $VALIDATE_K8S_VERSIONS; do
    set +e
    report=$("$(dirname "$PY")/kubernetes-validate" --strict --quiet -k "$k" "$r" 2>&1)
    rc=$?
    set -e
    # KEDA's kinds have no schema there (check_manifests.py and keda-crd-check.mjs cover them);
    # any other kind without one is a typo or an API the cluster may not have.
    unexpected=$(grep -v "Couldn't find schema for kind [A-Za-z]* with api version keda.sh/" <<<"$report" || true)
    if ((rc != 0)) || [[ -n $unexpected ]]; then
      echo "$unexpected" >&2
      failed+=("kubernetes-validate --strict -k $k: $(basename "$r")")
    fi
  done
done

phase "docker compose config (${COMPOSE_CMD[*]})"
compose=(env -i "PATH=$PATH" "HOME=$HOME" "${COMPOSE_CMD[@]}" --env-file /dev/null -f docker-compose.yml --profile '*')
if "${compose[@]}" config --quiet; then
  "${compose[@]}" config --format json >"$WORK/compose.json"
else
  failed+=("docker compose config refused docker-compose.yml")
fi

phase "check_manifests.py${BIN:+ (ci-worker config: $BIN)}"
[[ -n $BIN ]] || say "no ci-worker binary (build first, or set CI_WORKER_BIN): the \`ci-worker config\` checks are skipped"
quiet=(--quiet)
[[ ${VALIDATE_VERBOSE:-0} == 1 ]] && quiet=()
compose_arg=()
[[ -s $WORK/compose.json ]] && compose_arg=(--compose-json "$WORK/compose.json")
rm -f "$WORK/keda.json"
if ! "$PY" deploy/validate/check_manifests.py --repo "$REPO_ROOT" "${renders[@]}" "${compose_arg[@]}" \
  --keda-out "$WORK/keda.json" ${BIN:+--binary "$BIN"} "${quiet[@]}"; then
  failed+=("check_manifests.py")
fi

phase "KEDA objects against KEDA's CRD schemas"
if [[ -s $WORK/keda.json ]]; then
  if ! node deploy/validate/keda-crd-check.mjs "$NODE_MODULES" "$WORK/keda.json" >"$WORK/keda-crd.out" 2>&1; then
    cat "$WORK/keda-crd.out" >&2
    failed+=("keda-crd-check.mjs")
  elif [[ ${VALIDATE_VERBOSE:-0} == 1 ]]; then
    cat "$WORK/keda-crd.out"
  fi
  grep -q '^ok ' "$WORK/keda-crd.out" || failed+=("keda-crd-check.mjs checked no object")
else
  failed+=("no KEDA objects to check (check_manifests.py did not run to the end)")
fi

if ((${#failed[@]})); then
  say "FAILED after $((SECONDS - T0)) s:"
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
say "deploy/, docker-compose.yml and Dockerfile are valid ($((SECONDS - T0)) s)"

#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine; idempotent and quiet when all is there.
#   - Debian packages, only when a tool is missing (apt-get update first): protoc
#     (protobuf-compiler, needed by the pulsar crate's build.rs), curl, a C compiler, Maven + Java 17+,
#     python3 with venv support
#   - checks for cargo (Rust is installed with rustup, not here)
#   - the Python venv .venv at the repo root with tests/interop/requirements.txt
#     (pip runs only when the requirements or the interpreter changed)
#   - the Apache Pulsar broker jars (scripts/pulsar.sh fetch, cached outside git)
#   - the Apache Kafka broker jars (scripts/kafka.sh fetch, cached outside git)
# Environment: SETUP_SKIP_PULSAR=1 / SETUP_SKIP_KAFKA=1 skip the jars; PYTHON=python3.x picks the
# interpreter for .venv.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

say() { echo "setup.sh: $*" >&2; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }

# --- Debian packages --------------------------------------------------------------------------

missing_pkgs=()
need() { # command package
  command -v "$1" >/dev/null 2>&1 || missing_pkgs+=("$2")
}
need protoc protobuf-compiler
need curl curl
need cc gcc
need mvn maven
java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | head -n 1)
  [[ $v =~ ^[0-9]+$ ]] && ((v >= 17))
}
java_ok || missing_pkgs+=(default-jre-headless)
PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  missing_pkgs+=(python3 python3-venv)
elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  # Debian's own python3 ships venv/ensurepip separately.
  missing_pkgs+=(python3-venv)
fi

if ((${#missing_pkgs[@]})); then
  say "installing Debian packages: ${missing_pkgs[*]}"
  SUDO=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing_pkgs[*]}"
    SUDO=(sudo)
  fi
  command -v apt-get >/dev/null 2>&1 || die "no apt-get; install by hand: ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
  java_ok || die "Java 17 or newer is still missing after installing ${missing_pkgs[*]}"
fi
command -v protoc >/dev/null || die "protoc is still missing"
command -v cargo >/dev/null 2>&1 || die "cargo is not installed: install Rust with rustup (https://rustup.rs)"

# --- Python venv ------------------------------------------------------------------------------

REQ="tests/interop/requirements.txt"
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.requirements.stamp"
py_version=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')
want="$(sha256sum "$REQ" | cut -d' ' -f1) python=$py_version"

if [[ -x $VENV/bin/python ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "$VENV is broken (its interpreter does not run): recreating it"
  rm -rf "$VENV"
fi
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" && -x $VENV/bin/python ]]; then
  : # up to date
else
  if [[ -x $VENV/bin/python ]] &&
    [[ "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')" != "$py_version" ]]; then
    say "$VENV was made with another Python: recreating it"
    rm -rf "$VENV"
  fi
  if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV with $PYTHON $py_version"
    "$PYTHON" -m venv "$VENV"
  fi
  say "installing $REQ into $VENV"
  started=$SECONDS
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
  echo "$want" >"$STAMP"
  say "pip done in $((SECONDS - started)) s"
fi

# --- Pulsar broker jars -----------------------------------------------------------------------

if [[ ${SETUP_SKIP_PULSAR:-0} != 1 ]]; then
  bash "$REPO_ROOT/scripts/pulsar.sh" fetch
fi

# --- Kafka broker jars ------------------------------------------------------------------------

if [[ ${SETUP_SKIP_KAFKA:-0} != 1 ]]; then
  bash "$REPO_ROOT/scripts/kafka.sh" fetch
fi

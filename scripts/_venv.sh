# Sourced by scripts/serve and scripts/test: one virtual environment, refreshed
# when pyproject.toml changes.
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

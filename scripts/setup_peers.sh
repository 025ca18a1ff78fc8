#!/usr/bin/env bash
# Create (or reuse) the isolated virtualenv .venv-peers with the peer routers bench/compare.py compares against:
# vllm-router (Rust, PyPI) and sglang-router (Rust, PyPI). Idempotent: a ready venv is left as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BRUNOISE_PEERS_VENV:-$ROOT/.venv-peers}"
VLLM_ROUTER_VERSION="${VLLM_ROUTER_VERSION:-0.1.17}"
SGLANG_ROUTER_VERSION="${SGLANG_ROUTER_VERSION:-0.3.2}"
PY="$VENV/bin/python"

check() {
    [ -x "$VENV/bin/vllm-router" ] || return 1
    "$PY" - "$VLLM_ROUTER_VERSION" "$SGLANG_ROUTER_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import sglang_router.launch_router  # noqa: F401
assert version("vllm-router") == sys.argv[1], version("vllm-router")
assert version("sglang-router") == sys.argv[2], version("sglang-router")
PYEOF
}

if [ -x "$PY" ] && check; then
    echo "setup_peers: $VENV is ready (vllm-router $VLLM_ROUTER_VERSION, sglang-router $SGLANG_ROUTER_VERSION)"
    exit 0
fi

echo "setup_peers: installing vllm-router==$VLLM_ROUTER_VERSION and sglang-router==$SGLANG_ROUTER_VERSION into $VENV"
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "vllm-router==$VLLM_ROUTER_VERSION" "sglang-router==$SGLANG_ROUTER_VERSION"

if ! check; then
    echo "setup_peers: $VENV was created but the peers do not start; see the pip output above" >&2
    exit 1
fi
echo "setup_peers: $VENV is ready"

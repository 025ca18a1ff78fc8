"""Fixtures for the real-vLLM suite: the tiny model (built once), one vLLM-on-CPU engine for the session."""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

ROOT = pathlib.Path(__file__).resolve().parents[2]

from runtime.engines.vllm import DEFAULT_VLLM_PYTHON, VllmConfig, VllmEngine  # noqa: E402

VLLM_PYTHON = os.environ.get("BRUNOISE_VLLM_PYTHON", DEFAULT_VLLM_PYTHON)
#: vLLM on 2 CPU cores imports torch and vLLM twice (API server, engine core): ~35-50 s; leave room for a busy CI.
START_TIMEOUT_S = float(os.environ.get("BRUNOISE_VLLM_START_TIMEOUT_S", "240"))
BLOCK_SIZE = 32


@functools.cache
def vllm_missing() -> str | None:
    """Why the vLLM virtualenv cannot be used here, or None when it can."""
    if not pathlib.Path(VLLM_PYTHON).exists():
        return f"{VLLM_PYTHON} is absent: run scripts/setup_vllm.sh (or scripts/test_vllm.sh) to create .venv-vllm"
    r = subprocess.run(
        [VLLM_PYTHON, "-c", "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in "
                            "('vllm', 'transformers', 'tokenizers', 'safetensors')))"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if r.returncode != 0:
        return f"{VLLM_PYTHON} cannot import vllm: {r.stderr.strip()[-500:]}"
    return None


def require_vllm() -> None:
    """Skip the calling test when the vLLM virtualenv is unusable."""
    why = vllm_missing()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny random Llama + locally trained tokenizer (scripts/make_tiny_model.py), built once per session."""
    require_vllm()
    out = tmp_path_factory.mktemp("tiny-model") / "tiny-llama"
    r = subprocess.run(
        [VLLM_PYTHON, str(ROOT / "scripts" / "make_tiny_model.py"), str(out), "--seed", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, f"make_tiny_model.py failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    return out


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(tiny_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[VllmEngine]:
    """One vLLM server (child process) behind the adapter for the whole session; stopped by PID at the end."""
    log_dir = tmp_path_factory.mktemp("vllm-engine")
    eng = VllmEngine(
        VllmConfig(
            model_dir=str(tiny_model),
            served_model_name="tiny",
            python=VLLM_PYTHON,
            block_size=BLOCK_SIZE,
            max_model_len=2048,
            start_timeout_s=START_TIMEOUT_S,
            log_dir=str(log_dir),
            restart_backoff_s=0.2,
            metrics_interval_s=0.25,
            health_interval_s=0.25,
        )
    )
    t0 = time.monotonic()
    await eng.start()
    print(f"\nvLLM started in {time.monotonic() - t0:.1f}s (pid {eng.pid}, {eng.base_url}, log {eng.log_path})")
    try:
        yield eng
    finally:
        pid = eng.pid
        await eng.stop()
        if pid is not None:
            assert not _alive(pid), f"vLLM pid {pid} outlived engine.stop()"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours is dead for this purpose
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False

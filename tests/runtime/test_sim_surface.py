"""The simulated engine's side of the fidelity matrix: what it serves, and a clear 400 naming what it cannot."""

from __future__ import annotations

import base64
import struct

import aiohttp
import pytest

from sharder.launch import ManagedProcess

MODEL = "sim-model"  # runtime.engines.sim.DEFAULT_MODEL


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
    ],
)
async def test_sim_refuses_what_it_cannot_serve_naming_the_field(
    runtime_proc: ManagedProcess, extra: dict[str, object], param: str
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    url = runtime_proc.addresses["http"] + "/v1/chat/completions"
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        err = await r.json()
    assert r.status == 400 and err["error"]["param"] == param, err
    assert "vllm" in err["error"]["message"].lower()


async def test_sim_serves_embeddings_tokenize_detokenize_and_refuses_responses(runtime_proc: ManagedProcess) -> None:
    base = runtime_proc.addresses["http"]
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/v1/embeddings", json={"input": ["a", "b", "a"], "dimensions": 8}) as r:
            data = (await r.json())["data"]
        assert r.status == 200 and [len(d["embedding"]) for d in data] == [8, 8, 8]
        assert data[0]["embedding"] == data[2]["embedding"] != data[1]["embedding"]
        async with s.post(base + "/v1/embeddings", json={"input": "a", "encoding_format": "base64", "dimensions": 8}) as r:
            b64 = (await r.json())["data"][0]["embedding"]
        assert list(struct.unpack("<8f", base64.b64decode(b64))) == pytest.approx(data[0]["embedding"], rel=1e-6)
        async with s.post(base + "/tokenize", json={"prompt": "héllo world"}) as r:
            tokens = (await r.json())["tokens"]
        async with s.post(base + "/detokenize", json={"tokens": tokens}) as r:
            assert (await r.json())["prompt"] == "héllo world"
        async with s.post(base + "/v1/responses", json={"input": "hi"}) as r:
            err = await r.json()
        assert r.status == 400 and "/v1/responses" in err["error"]["message"]
        async with s.get(base + "/ready") as r:
            assert r.status == 200

"""The fidelity matrix: the official ``openai`` client through a router to a real vLLM on CPU (the tiny local model).

One stack for the module (real processes): an embedded assigner; a runtime ``--engine vllm`` that starts its own vLLM
child with an API key (``$VLLM_API_KEY``: the client's key is a different one, so a forwarded client Authorization
would be refused); a sim runtime serving an embeddings model; one router. Every request goes through the router,
whose answer is compared with vLLM's own where the answer is deterministic (errors, tokenize).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import ROOT, START_TIMEOUT_S, VLLM_PYTHON

from sharder.launch import ManagedProcess, ProcessGroup, python_module
from tests.router.conftest import _policy_args
from tests.waiting import wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

VLLM_KEY = "vllm-secret-of-the-pod"
CLIENT_KEY = "the-clients-own-key"  # the router runs without API keys: this one must not reach vLLM
MODEL = "tiny"
EMBED_MODEL = "sim-embed"


class Stack:
    def __init__(self, router: str, vllm: str) -> None:
        self.router = router  # http://host:port of the router
        self.vllm = vllm  # http://host:port of the vLLM child (for direct comparisons, with the pod's key)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.router + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)

    def raw(self, base: str, path: str, body: Any, key: str | None = None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def both(self, path: str, body: Any) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        """(through the router, straight to vLLM with the pod's key)."""
        return self.raw(self.router, path, body, CLIENT_KEY), self.raw(self.vllm, path, body, VLLM_KEY)


@pytest.fixture(scope="module")
def stack(tiny_model: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("fidelity")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    group = ProcessGroup()
    try:
        a = group.add(ManagedProcess("assigner", python_module(
            "sharder.assigner.main", "--store", "embedded", "--port", "0", "--round-interval", "0.5",
            "--target", f"fid={MODEL}", "--target", f"emb={EMBED_MODEL}", *_policy_args()
        ), env=env, log_dir=log_dir).start())  # fmt: skip
        addr = a.wait_ready(60)["grpc"]
        venv = {**env, "VLLM_API_KEY": VLLM_KEY}
        rt = group.add(ManagedProcess("runtime-vllm", python_module(
            "runtime.main", "--engine", "vllm", "--model", MODEL, "--pod-id", "pod-vllm", "--target", "fid",
            "--assigner", addr, "--report-interval", "0.5",
            "--engine-arg", f"model_dir={tiny_model}", "--engine-arg", f"python={VLLM_PYTHON}",
            "--engine-arg", f"start_timeout_s={START_TIMEOUT_S}", "--engine-arg", f"log_dir={log_dir}",
            # compact guided JSON (a random model would pad it with whitespace); named tool_choice needs a parser
            "--engine-arg", "extra_args=--enable-auto-tool-choice --tool-call-parser pythonic --structured-outputs-config "
                            """'{"backend": "xgrammar", "disable_any_whitespace": true}'""",
        ), env=venv, log_dir=log_dir).start())  # fmt: skip
        sim = group.add(ManagedProcess("runtime-sim", python_module(
            "runtime.main", "--engine", "sim", "--model", EMBED_MODEL, "--pod-id", "pod-sim", "--target", "emb",
            "--assigner", addr, "--report-interval", "0.5",
        ), env=env, log_dir=log_dir).start())  # fmt: skip
        sim.wait_ready(60)
        rt.wait_ready(START_TIMEOUT_S + 60)
        m = re.search(r"vLLM ready at (http://\S+)", rt.log_path.read_text())
        assert m is not None, rt.log_tail()
        router = group.add(ManagedProcess("router", python_module(
            "axon_router.main", "--assigner", addr, "--http-port", "0", "--grpc-port", "0",
            "--health-interval-s", "0.5",
        ), env=env, log_dir=log_dir).start())  # fmt: skip
        url = router.wait_ready(60)["http"]

        def ready() -> bool:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                models = {m["id"] for m in json.loads(r.read())["data"]}
            return {MODEL, EMBED_MODEL} <= models

        wait_until(ready, 60, "the router to see both targets")
        yield Stack(url, m.group(1))
    finally:
        group.stop_all()


def chat(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_vllm_demands_its_key_and_the_clients_key_never_reaches_it(stack: Stack) -> None:
    body = {"model": MODEL, "messages": chat("hello"), "max_tokens": 2}
    status, _ = stack.raw(stack.vllm, "/v1/chat/completions", body, CLIENT_KEY)
    assert status == 401  # vLLM refuses the client's key...
    status, raw = stack.raw(stack.router, "/v1/chat/completions", body, CLIENT_KEY)
    assert status == 200, raw  # ...yet through brunoise it is served: the pod sent its own key instead


def test_n2_returns_two_choices(stack: Stack) -> None:
    r = stack.client().chat.completions.create(model=MODEL, messages=chat("count"), n=2, max_tokens=4, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1]


def test_logprobs_and_top_logprobs_come_back(stack: Stack) -> None:
    r = stack.client().chat.completions.create(
        model=MODEL, messages=chat("hi"), max_tokens=3, logprobs=True, top_logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content
    assert all(len(t.top_logprobs) == 2 for t in lp.content)
    c = stack.client().completions.create(model=MODEL, prompt="once upon", max_tokens=3, logprobs=2)
    assert c.choices[0].logprobs is not None and len(c.choices[0].logprobs.tokens or []) == 3


SCHEMA = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}


def test_response_format_json_schema_returns_json_that_validates(stack: Stack) -> None:
    r = stack.client().chat.completions.create(
        model=MODEL, messages=chat("pick a color"), max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True}},
    )  # fmt: skip
    obj = json.loads(r.choices[0].message.content or "")
    assert set(obj) == {"color", "ok"} and obj["color"] in ("red", "green", "blue") and isinstance(obj["ok"], bool)


def test_named_tool_choice_returns_a_tool_call(stack: Stack) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
    r = stack.client().chat.completions.create(
        model=MODEL, messages=chat("weather?"), max_tokens=40, temperature=0, tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert set(json.loads(calls[0].function.arguments)) == {"color", "ok"}  # type: ignore[union-attr]


def test_stream_options_include_usage(stack: Stack) -> None:
    chunks = list(stack.client().chat.completions.create(
        model=MODEL, messages=chat("stream"), max_tokens=5, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ))  # fmt: skip
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5 and chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])


def test_an_image_part_reaches_vllm_and_its_own_error_comes_back_unchanged(stack: Stack) -> None:
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {
        "model": MODEL,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": [img, {"type": "text", "text": "?"}]}],
    }
    routed, direct = stack.both("/v1/chat/completions", body)
    assert routed[0] == direct[0] and 400 <= routed[0] < 500, (routed, direct)
    assert json.loads(routed[1]) == json.loads(direct[1])


def test_unknown_fields_reach_vllm(stack: Stack) -> None:
    # fields OpenAI does not know but vLLM does: they change the answer, so they arrived
    r = stack.client().completions.create(
        model=MODEL, prompt="a", max_tokens=6, extra_body={"ignore_eos": True, "min_tokens": 6, "x_brunoise_never": [1]}
    )
    assert r.usage is not None and r.usage.completion_tokens == 6
    # a vLLM field with a wrong type: vLLM's validation error, status and body unchanged
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2, "top_k": "many", "some_unknown_field": {"x": 1}}
    routed, direct = stack.both("/v1/completions", body)
    assert routed[0] == direct[0] == 400, (routed, direct)
    assert json.loads(routed[1]) == json.loads(direct[1]) and b"top_k" in routed[1]


def test_tokenize_detokenize_and_models_pass_through(stack: Stack) -> None:
    routed, direct = stack.both("/tokenize", {"model": MODEL, "prompt": "hello brunoise"})
    assert routed == direct and routed[0] == 200
    tokens = json.loads(routed[1])["tokens"]
    routed, direct = stack.both("/detokenize", {"model": MODEL, "tokens": tokens})
    assert routed == direct and routed[0] == 200 and "hello" in json.loads(routed[1])["prompt"]


def test_embeddings_through_the_router(stack: Stack) -> None:
    c = stack.client()
    e = c.embeddings.create(model=EMBED_MODEL, input=["same text", "other text", "same text"])  # base64 by default
    vecs = [d.embedding for d in e.data]
    assert len(vecs) == 3 and len(vecs[0]) == 32 and vecs[0] == vecs[2] and vecs[0] != vecs[1]
    assert abs(sum(x * x for x in vecs[0]) - 1.0) < 1e-4
    # vLLM's answer for a generative model's embeddings passes through as vLLM gave it
    routed, direct = stack.both("/v1/embeddings", {"model": MODEL, "input": "x"})
    assert routed[0] == direct[0], (routed, direct)


def test_responses_endpoint_matches_vllm(stack: Stack) -> None:
    body = {"model": MODEL, "input": "hello", "max_output_tokens": 4}
    routed, direct = stack.both("/v1/responses", body)
    assert routed[0] == direct[0], (routed, direct)
    if routed[0] == 200:
        assert json.loads(routed[1])["object"] == "response"

"""The vLLM adapter's KV-connector side: a whole response (what a producer request answers) as one chunk, and
when the adapter sends kv_transfer_params at all."""

from __future__ import annotations

from runtime.engines.vllm import chunk_of_response

#: The shape vLLM's OpenAI server answers a non-streamed completion with a NixlConnector (its disaggregated-prefill
#: proxy reads ``kv_transfer_params`` from exactly here).
PRODUCER_ANSWER = {
    "id": "cmpl-1",
    "object": "text_completion",
    "model": "m",
    "choices": [{"index": 0, "text": " the", "finish_reason": "length", "logprobs": None}],
    "usage": {"prompt_tokens": 130, "completion_tokens": 1, "total_tokens": 131,
              "prompt_tokens_details": {"cached_tokens": 128}},
    "kv_transfer_params": {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [[3, 4]],
                           "remote_engine_id": "e1", "remote_request_id": "cmpl-1", "remote_host": "10.0.0.2",
                           "remote_port": 5600, "tp_size": 1},
}  # fmt: skip


def test_a_producers_answer_carries_its_params() -> None:
    c = chunk_of_response(PRODUCER_ANSWER)
    assert (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.cached_tokens) == (
        " the",
        "length",
        130,
        1,
        128,
    )
    assert c.kv_transfer_params == PRODUCER_ANSWER["kv_transfer_params"]


def test_a_chat_answer_without_params() -> None:
    c = chunk_of_response({"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 1}, "kv_transfer_params": None})  # fmt: skip
    assert (c.text, c.finish_reason, c.cached_tokens, c.kv_transfer_params) == ("hi", "stop", 0, None)


def test_a_server_started_with_a_kv_connector_reads_kv() -> None:
    import shutil

    from runtime.engines.vllm import VllmConfig, VllmEngine

    def kv_transfer(**kw: object) -> bool:
        e = VllmEngine(VllmConfig(base_url="http://127.0.0.1:1", **kw))  # type: ignore[arg-type]
        shutil.rmtree(e._tmp, ignore_errors=True)  # attach mode starts nothing; only its temp dir to remove
        return e.kv_transfer

    nixl = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'
    assert kv_transfer(extra_args=("--kv-transfer-config", nixl))
    assert kv_transfer(extra_args=(f"--kv-transfer-config={nixl}",))
    assert kv_transfer(kv_transfer=True)  # an attached server the operator says has one
    assert not kv_transfer(extra_args=("--enable-prefix-caching",))

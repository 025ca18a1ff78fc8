"""HotPrompts hands out users' prompts: with peer credentials only a pod token may call it, over real gRPC."""

from __future__ import annotations

import grpc
import pytest

from brunoise_api.v1 import runtime_pb2, runtime_pb2_grpc, slicing_pb2
from runtime.engines.sim import SimConfig, SimEngine
from runtime.grpc_service import GrpcServer, RuntimeService
from runtime.warm import PromptLog
from sharder.security.tokens import Credentials, Role, credentials_doc

TOKENS = {"pod-1": (Role.POD, "pod-1", "tok-pod"), "router": (Role.READER, "", "tok-reader")}


async def test_only_pod_tokens_read_prompts() -> None:
    log = PromptLog()
    log.record(3, "secret prompt", None)
    creds = Credentials.from_doc(credentials_doc(TOKENS))
    service = RuntimeService(SimEngine(SimConfig()), pod_id="donor", prompt_log=log, peer_credentials=creds)
    server = GrpcServer(service)
    await server.start()
    req = runtime_pb2.HotPromptsRequest(slice=slicing_pb2.Slice(lo=0, hi=0))
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = runtime_pb2_grpc.RuntimeStub(ch)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as none:
                await stub.HotPrompts(req, timeout=5)
            assert none.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as reader:
                await stub.HotPrompts(req, timeout=5, metadata=(("authorization", "Bearer tok-reader"),))
            assert reader.value.code() == grpc.StatusCode.PERMISSION_DENIED
            ok = await stub.HotPrompts(req, timeout=5, metadata=(("authorization", "Bearer tok-pod"),))
            assert [p.prompt for p in ok.prompts] == ["secret prompt"]
    finally:
        await server.stop(0.1)

"""The vLLM adapter exports engine deaths and restarts next to vLLM's own metrics (a fake vLLM server over HTTP)."""

from __future__ import annotations

from aiohttp import web

from runtime.engines.vllm import VllmConfig, VllmEngine
from sharder.promtext import sum_by_name
from tests.waiting import until

VLLM_METRICS = "# HELP vllm:num_requests_running r\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"fake\"} 2.0\n"


async def test_attached_vllm_death_is_counted_and_exported() -> None:
    healthy = {"ok": True}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200 if healthy["ok"] else 503)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake", "max_model_len": 2048}]})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=VLLM_METRICS)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    engine = VllmEngine(
        VllmConfig(base_url=f"http://127.0.0.1:{port}", kv_events=False, health_interval_s=0.02, health_failures=2)
    )
    try:
        await engine.start()
        before = sum_by_name(await engine.metrics_text())
        assert before["vllm:num_requests_running"] == 2.0  # vLLM's own exposition passes through
        assert before["brunoise_runtime_engine_deaths_total"] == 0.0
        assert before["brunoise_runtime_engine_restarts_total"] == 0.0
        healthy["ok"] = False
        await until(lambda: engine.stats.deaths > 0, 10, "the monitor to notice the failing health checks", 0.02)
        after = sum_by_name(await engine.metrics_text())
        assert after["brunoise_runtime_engine_deaths_total"] == 1.0
        assert after["brunoise_runtime_engine_restarts_total"] == 0.0  # attach mode never restarts a server
    finally:
        await engine.stop()
        await runner.cleanup()

# The brunoise project image: assigner, router, runtime (sim engine, or the vllm adapter talking to a
# vLLM server container) and the `brunoise` CLI, all as console scripts.
# Two stages: the build stage installs the project into a virtual environment; the runtime stage copies only
# that environment (no pip cache, no build metadata). The base is pinned to an exact Python release.
FROM python:3.11.11-slim-bookworm AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what `pip install .` needs (see .dockerignore): metadata first, then the packages.
COPY pyproject.toml README.md ./
COPY brunoise ./brunoise
COPY brunoise_api ./brunoise_api
COPY sharder ./sharder
COPY runtime ./runtime
COPY axon_router ./axon_router
RUN python -m venv /opt/brunoise
RUN /opt/brunoise/bin/pip install .

FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/brunoise/bin:$PATH

COPY --from=build /opt/brunoise /opt/brunoise
RUN useradd --create-home --uid 10001 brunoise \
    && brunoise --help >/dev/null

USER brunoise
WORKDIR /home/brunoise
# Default ports (compose maps them): assigner gRPC 50051 (metrics 9090), router HTTP 8000 / gRPC 9000,
# runtime gRPC 50061 / HTTP 8100.
EXPOSE 50051 9090 8000 9000 50061 8100
CMD ["brunoise", "--help"]

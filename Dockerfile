# The brunoise project image: assigner, router, runtime (sim engine, or the vllm adapter talking to a
# vLLM server container) and the `brunoise` CLI, all as console scripts.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what `pip install .` needs (see .dockerignore): metadata first, then the packages.
COPY pyproject.toml README.md ./
COPY brunoise ./brunoise
COPY sharder ./sharder
COPY runtime ./runtime
COPY axon_router ./axon_router
RUN pip install . \
    && useradd --create-home --uid 10001 brunoise \
    && brunoise --help >/dev/null

USER brunoise
WORKDIR /home/brunoise
# Default ports (compose maps them): assigner gRPC 50051, router HTTP 8000 / gRPC 9000,
# runtime gRPC 50061 / HTTP 8100.
EXPOSE 50051 8000 9000 50061 8100
CMD ["brunoise", "--help"]

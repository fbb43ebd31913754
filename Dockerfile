# railguard: the guardrails proxy in a slim, non-root image.
#
#   docker build -t railguard .
#   docker run -p 8000:8000 -v "$PWD/examples/configs:/config:ro" \
#     -e RAILGUARD_UPSTREAM_URL=http://host.docker.internal:11434/v1 railguard
#
# Configs: mount a NeMo-style config folder (or a folder of them) at /config. The image
# carries examples/configs there, so it starts without a mount.
# Port: 8000 on 0.0.0.0. Extra flags go after the image name, replacing CMD, e.g.
#   docker run ... railguard serve --host 0.0.0.0 --config /config --workers 2
# The HEALTHCHECK asks /health on port 8000: keep that port inside the container.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: build railguard's wheel and its dependencies' wheels (no compiler needed:
# every dependency ships binary wheels for this Python).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY rails ./rails
COPY upstream ./upstream
COPY metrics ./metrics
RUN pip wheel --wheel-dir /wheels .

# Stage 2: the runtime image, with the installed wheels and nothing else of the build.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="railguard" \
      org.opencontainers.image.description="Guardrails reverse proxy for OpenAI-compatible LLM servers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/railguard-*.whl \
    && groupadd --system --gid 10001 railguard \
    && useradd --system --uid 10001 --gid railguard --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin railguard
COPY --chown=root:root examples/configs /config
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
ENTRYPOINT ["railguard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--config", "/config"]

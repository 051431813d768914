# The registry and the operator (one image, two commands: `modelyard registry serve`,
# `modelyard operator run`).  No torch here: neither needs it.  From the repository root:
#   docker build -f docker/modelyard.Dockerfile -t ghcr.io/modelyard/modelyard:0.1.0 .
# BASE: any image with Python 3.11 and `python3 -m venv` (the test suite uses a Debian
# bookworm base made with debootstrap; see tests/cluster/images.sh).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/tmp \
    VIRTUAL_ENV=/opt/modelyard PATH=/opt/modelyard/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry registry
COPY bentos bentos
COPY operator operator
COPY cli cli
COPY charts/model-server /opt/modelyard/charts/model-server
RUN python3 -m venv /opt/modelyard && pip install '.[postgres,s3,operator]' && rm -rf /src
ENV MODELYARD_MODEL_SERVER_CHART=/opt/modelyard/charts/model-server
RUN useradd --uid 10001 --no-create-home modelyard && mkdir -p /data && chown 10001:10001 /data
USER 10001
WORKDIR /data
EXPOSE 8080
CMD ["modelyard", "registry", "serve", "--host", "0.0.0.0"]

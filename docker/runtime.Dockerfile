# The model-server runtime: what charts/model-server runs (init container `modelyard pull`,
# main container `modelyard serve`).  torch is the project's own (2.13.0): from PyPI that is
# the CUDA build, so one image serves on GPU nodes and CPU nodes.  The `llm` extra
# (transformers, accelerate, sentence-transformers) serves format hf models.  From the repository root:
#   docker build -f docker/runtime.Dockerfile -t ghcr.io/modelyard/modelyard-runtime:0.1.0 .
# BASE: any image with Python 3.11 and `python3 -m venv` (the test suite uses a Debian
# bookworm base made with debootstrap; see tests/cluster/images.sh).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH=torch==2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_DO_NOT_TRACK=true HOME=/tmp MODELYARD_HOME=/cache \
    VIRTUAL_ENV=/opt/modelyard PATH=/opt/modelyard/bin:$PATH
# torch first, in its own layer: a source change rebuilds only what follows.
RUN python3 -m venv /opt/modelyard && pip install "$TORCH"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry registry
COPY bentos bentos
COPY operator operator
COPY cli cli
RUN pip install '.[serve,llm]' && rm -rf /src
RUN useradd --uid 10001 --create-home --home-dir /home/modelyard modelyard \
    && mkdir -p /cache && chown 10001:10001 /cache
USER 10001
WORKDIR /cache
EXPOSE 3000
ENTRYPOINT []
CMD ["modelyard", "serve", "--help"]

# The model-server runtime: what charts/model-server runs (init container `modelyard pull`,
# main container `modelyard serve`).  CUDA-capable torch, so the same image serves on
# GPU nodes and CPU nodes.  Build from the repository root:
#   docker build -f docker/runtime.Dockerfile -t ghcr.io/modelyard/modelyard-runtime:0.1.0 .
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BENTOML_DO_NOT_TRACK=true HOME=/tmp MODELYARD_HOME=/cache
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry registry
COPY bentos bentos
COPY operator operator
# torch comes from the base image (CUDA build); only the serving stack is added.
RUN pip install '.[serve]' && rm -rf /src
RUN useradd --uid 10001 --create-home --home-dir /home/modelyard modelyard \
    && mkdir -p /cache && chown 10001:10001 /cache
USER 10001
WORKDIR /cache
EXPOSE 3000
ENTRYPOINT []
CMD ["modelyard", "serve", "--help"]

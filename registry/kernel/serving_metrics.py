"""What a model server tells about the requests it served, on its ``/metrics``: the contract between
the servers (``bentos``, which export it) and the operator's canary analysis (which reads it).

Both sides take the names and the buckets from here, so a renamed family or a moved bucket
cannot silently turn the analysis blind.  Plain constants only: importing this loads nothing.

- ``REQUESTS``: a counter of model requests (prediction and generation routes, not probes or
  metadata) by ``route`` and ``status`` (the HTTP status code);
- ``DURATION``: a histogram of their latency in seconds, by ``route``;
- ``TIME_TO_FIRST_TOKEN`` and ``INTER_TOKEN_LATENCY``: the language-model server's histograms
  (seconds); for it the analysis' latency bound means time to first token.

A vLLM server (engine ``vllm``) exports ``REQUESTS`` and ``DURATION`` from Modelyard's guard in its
process, and time to first token as vLLM's own ``VLLM_TIME_TO_FIRST_TOKEN``.

A Bento the user built (format ``bento``) exports none of these; the analysis then reads BentoML's
own families (``BENTOML_REQUESTS``, ``BENTOML_DURATION``), leaving out ``BENTOML_NOT_MODEL_ROUTES``.
"""

from __future__ import annotations

from typing import Final

REQUESTS: Final = "modelyard_requests"
"""Counter (exported as ``modelyard_requests_total``)."""
DURATION: Final = "modelyard_request_duration_seconds"
TIME_TO_FIRST_TOKEN: Final = "modelyard_llm_time_to_first_token_seconds"
INTER_TOKEN_LATENCY: Final = "modelyard_llm_inter_token_latency_seconds"
VLLM_TIME_TO_FIRST_TOKEN: Final = "vllm:time_to_first_token_seconds"
"""vLLM's histogram (its buckets: 1 ms to 2,560 s, 150 ms wide between 0.1 and 0.25 s)."""

BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                  0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
"""Latency buckets (seconds), dense where latency bounds are usually set: a p99 read from them is
off by at most the width of the bucket it falls in (50 ms between 0.1 s and 0.3 s)."""
TOKEN_BUCKETS: Final = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

BENTOML_REQUESTS: Final = "bentoml_service_request"
BENTOML_DURATION: Final = "bentoml_service_request_duration_seconds"
BENTOML_NOT_MODEL_ROUTES: Final = ("/readyz", "/livez", "/healthz", "/metrics", "/docs.json", "/model", "/",
                                   "/v1/models", "/v1/engine/stats")

SHED_LOAD: Final = (429, 503)
"""Answers that refuse work: they count as errors, as 5xx do (a canary that sheds load is failing)."""


def is_error(status: int) -> bool:
    """A served request the analysis counts as failed: a 5xx, or load shed (429)."""
    return status >= 500 or status in SHED_LOAD

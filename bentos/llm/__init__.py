"""Language and embedding models (format hf) behind an OpenAI-compatible API: request shapes,
continuous batching over transformers models, and the BentoML service that serves them."""

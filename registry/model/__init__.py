"""What a model file is and whether it is safe: read from its bytes, never by loading it (no pickle,
no torch, no transformers)."""

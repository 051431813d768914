"""Packaging registry model versions as BentoML services, and the pod runtime (later issues)."""

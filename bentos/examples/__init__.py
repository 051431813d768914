"""Small example models made in code (no hub downloads)."""

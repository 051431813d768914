"""The registry's REST server (FastAPI)."""

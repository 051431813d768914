"""The registry's REST server (FastAPI) over the store and the artifact stores; part of the base package."""

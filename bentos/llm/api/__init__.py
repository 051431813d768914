"""OpenAI's API over the engine: one module per route family, assembled by ``server``."""

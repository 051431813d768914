"""vLLM as an engine: the command that starts its OpenAI server on a verified model directory
(``launch``), and the guard that runs inside it (``guard``: request bounds, control tokens, metrics)."""

"""The kernel every package shares: defaults and environment names, names, errors, schemas, cursors,
digests, child processes.  Imports nothing outside itself."""

"""Real servers for the tests: PostgreSQL, the registry (in a thread or a process), S3."""

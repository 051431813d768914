"""Helpers for server processes, shared by the registry server, the model server, the quickstart,
tests and benchmarks: ``children`` starts a registry (or any server) as a child process on
127.0.0.1 and stops it; ``tuning`` sets up a process to take requests under load.

Part of the base package: imports only the standard library and httpx.
"""

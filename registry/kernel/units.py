"""Sizes as people read them, for the CLI's tables and the web UI's pages alike."""

from __future__ import annotations


def human_size(size: int | None) -> str:
    """``24576`` → ``24.0 KiB``; None (no artifact yet) → ``-``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)

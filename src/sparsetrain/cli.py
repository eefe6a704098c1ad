"""Command-line interface (placeholder until the trainer lands)."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    print("sparsetrain: the CLI is being built")
    return 0

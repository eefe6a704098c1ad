"""Compile the CPU kernels ahead of time: ``python -m sparsetrain.kernels.build`` (the Makefile's set-up step).

Prints the compiler output on failure and exits non-zero, so a broken toolchain is seen at install time
rather than as a fallback warning during training.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsetrain.kernels.build", description=__doc__)
    parser.add_argument("--quiet", action="store_true", help="do not show the compiler commands")
    args = parser.parse_args(argv)
    from . import cpp_ext

    start = time.perf_counter()
    try:
        cpp_ext.load(verbose=not args.quiet)
    except RuntimeError as exc:
        print(f"sparsetrain: building the CPU kernels failed: {exc}", file=sys.stderr)
        return 1
    print(f"sparsetrain: CPU kernels ready in {cpp_ext.build_directory()} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

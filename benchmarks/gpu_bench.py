"""Thin wrapper: `python benchmarks/gpu_bench.py [--quick] [--repeats N] [--dtypes ...] [--out PATH]` =
`sparsetrain bench gpu ...` (Triton vs cuBLAS and torch CUDA CSR; needs a CUDA device, or --device cpu with
TRITON_INTERPRET=1 for a smoke test)."""
import sys

from sparsetrain.bench import main

if __name__ == "__main__":
    sys.exit(main(["gpu", *sys.argv[1:]]))

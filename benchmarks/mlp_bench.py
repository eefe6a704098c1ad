"""Thin wrapper: `python benchmarks/mlp_bench.py [--quick] [--out PATH]` = `sparsetrain bench mlp ...`."""
import sys

from sparsetrain.bench import main

if __name__ == "__main__":
    sys.exit(main(["mlp", *sys.argv[1:]]))

"""Thin wrapper: `python benchmarks/layer_bench.py [--quick] [--out PATH]` = `sparsetrain bench layer ...`."""
import sys

from sparsetrain.bench import main

if __name__ == "__main__":
    sys.exit(main(["layer", *sys.argv[1:]]))

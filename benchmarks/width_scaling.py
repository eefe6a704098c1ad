"""Thin wrapper: `python benchmarks/width_scaling.py [--quick] [--out PATH]` = `sparsetrain bench scaling ...`."""
import sys

from sparsetrain.bench import main

if __name__ == "__main__":
    sys.exit(main(["scaling", *sys.argv[1:]]))

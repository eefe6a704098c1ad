"""CSR-ordered against row-block value storage (CompressedLayout.value_block), layer steps interleaved in one
process (B = 128, 2 threads): both storages of a layer are built side by side (SPARSETRAIN_CPU_VALUE_BLOCK
= 0, then auto) and timed in alternating rounds (bench.interleaved), since this VM's drift between runs is
larger than the effect. Prints a table (median ms per step, ns per weight, change) and writes
benchmarks/results/value_block_ab.json.

    .venv/bin/python benchmarks/value_block_ab.py [--rounds 5] [--dtype float32|bfloat16] [--quick]
"""
from __future__ import annotations

import argparse
import os

from sparsetrain import bench

# (n, fan-in or None, sparsity or None): fan-in 64 beyond L3, and the n = 16384 layer table's densities
CASES = [(65536, 64, None), (262144, 64, None), (16384, None, 0.9), (16384, None, 0.98)]
QUICK = [(2048, 64, None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(bench.DTYPES), default="float32")
    args = bench.ab_arguments(parser, "storage")  # --quick: one tiny layer with forced blocks
    dtype = bench.DTYPES[args.dtype]
    rows = []
    before = os.environ.get("SPARSETRAIN_CPU_VALUE_BLOCK")
    try:
        for n, fan, sparsity in QUICK if args.quick else CASES:
            steps, block_rows = {}, {}
            for storage, setting in (("csr", "0"), ("blocked", "16" if args.quick else "auto")):
                os.environ["SPARSETRAIN_CPU_VALUE_BLOCK"] = setting
                layer = bench.make_layer(n, sparsity=sparsity, nnz=None if fan is None else fan * n, dtype=dtype)
                block_rows[storage] = layer.layout.block_rows
                steps[storage] = bench.layer_step(layer, n, dtype)
            nnz = layer.nnz
            timing = bench.interleaved(steps, args.rounds, per_round=2)
            row = {"n": n, "nnz": nnz, "layer": f"{n}², " + (f"fan-in {fan}" if fan else f"{sparsity:.0%}"),
                   "block_rows": block_rows["blocked"]}
            for storage, t in timing.items():
                row.update({f"{storage}_{k}": t[k] for k in ("median_s", "min_s", "max_s")})
                row[f"{storage}_ns"] = t["median_s"] / nnz * 1e9
            row["change"] = row["blocked_median_s"] / row["csr_median_s"] - 1
            rows.append(row)
            del steps
    finally:
        if before is None:
            os.environ.pop("SPARSETRAIN_CPU_VALUE_BLOCK", None)
        else:
            os.environ["SPARSETRAIN_CPU_VALUE_BLOCK"] = before
    bench.print_table(rows, [("layer", "layer", "s"), ("block_rows", "rows/block", "d"),
                             ("csr_ns", "CSR ns/weight", ".1f"), ("blocked_ns", "blocked ns/weight", ".1f"),
                             ("change", "change", "+.1%")])
    bench.write_json("value_block_ab_quick" if args.quick else "value_block_ab",
                     {"machine": bench.machine(), "dtype": args.dtype, "rounds": args.rounds, "rows": rows}, args.out)


if __name__ == "__main__":
    main()

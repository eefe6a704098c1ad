"""CSR-ordered against row-block value storage (CompressedLayout.value_block), and a row-block layer's two
ways of walking (through its slots, or in storage order with its storage walk), layer steps interleaved in
one process (B = 128, 2 threads): both storages of a layer are built side by side (SPARSETRAIN_CPU_VALUE_BLOCK
= 0, then auto: the rows per block the library picks), the blocked one is stepped with
SPARSETRAIN_CPU_STORAGE_WALK = 0 and = 1, and all three are timed in alternating rounds
(bench.interleaved), since this VM's drift between runs is larger than the effects. Prints a table (ns per
weight, changes against CSR order) and writes benchmarks/results/value_block_ab.json.

    .venv/bin/python benchmarks/value_block_ab.py [--rounds 5] [--dtype float32|bfloat16] [--quick]
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from sparsetrain import bench
from sparsetrain.kernels import cpp_ext

# (n, fan-in or None, sparsity or None): fan-in 64 beyond L3 and at 16384, the layer table's densities
CASES = [(65536, 64, None), (262144, 64, None), (16384, 64, None), (16384, None, 0.9), (16384, None, 0.98),
         (16384, None, 0.995)]
QUICK = [(2048, 64, None)]
SETTINGS = ("SPARSETRAIN_CPU_VALUE_BLOCK", "SPARSETRAIN_CPU_STORAGE_WALK")
WALKS = {"slots": "0", "walk": "1"}  # the blocked layer's forward and backward: through the slots / in storage order


def _walking(setting: str, step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        os.environ["SPARSETRAIN_CPU_STORAGE_WALK"] = setting
        step()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(bench.DTYPES), default="float32")
    args = bench.ab_arguments(parser, "storage")  # --quick: one tiny layer with forced blocks
    dtype = bench.DTYPES[args.dtype]
    rows = []
    before = {name: os.environ.get(name) for name in SETTINGS}
    try:
        for n, fan, sparsity in QUICK if args.quick else CASES:
            blocked_setting = "16" if args.quick else "auto"
            steps, block_rows = {}, {}
            for storage, setting in (("csr", "0"), ("blocked", blocked_setting)):
                os.environ["SPARSETRAIN_CPU_VALUE_BLOCK"] = setting
                layer = bench.make_layer(n, sparsity=sparsity, nnz=None if fan is None else fan * n, dtype=dtype)
                block_rows[storage] = layer.layout.block_rows
                step = bench.layer_step(layer, n, dtype)
                if storage == "csr":
                    steps["csr"] = step
                else:
                    steps.update({walk: _walking(value, step) for walk, value in WALKS.items()})
            nnz = layer.nnz
            pays = cpp_ext.storage_walk_reuses(n, n, nnz, block_rows["blocked"], dtype)  # what auto picks
            timing = bench.interleaved(steps, args.rounds, per_round=2)
            row = {"n": n, "nnz": nnz, "layer": f"{n}², " + (f"fan-in {fan}" if fan else f"{sparsity:.1%}"),
                   "block_rows": block_rows["blocked"], "walk_by_default": pays, "auto": "walk" if pays else "slots"}
            for variant, t in timing.items():
                row.update({f"{variant}_{k}": t[k] for k in ("median_s", "min_s", "max_s")})
                row[f"{variant}_ns"] = t["median_s"] / nnz * 1e9
            for variant in WALKS:
                row[f"{variant}_change"] = row[f"{variant}_median_s"] / row["csr_median_s"] - 1
            rows.append(row)
            del steps
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    bench.print_table(rows, [("layer", "layer", "s"), ("block_rows", "rows/block", "d"),
                             ("csr_ns", "CSR ns/weight", ".1f"), ("slots_ns", "blocked, slots", ".1f"),
                             ("walk_ns", "blocked, storage walk", ".1f"), ("slots_change", "slots vs CSR", "+.1%"),
                             ("walk_change", "walk vs CSR", "+.1%"), ("auto", "auto", "s")])
    bench.write_json("value_block_ab_quick" if args.quick else "value_block_ab",
                     {"machine": bench.machine(), "dtype": args.dtype, "rounds": args.rounds, "rows": rows}, args.out)


if __name__ == "__main__":
    main()

"""How a topology change rebuilds the transposed CSR, variants interleaved in one process (2 threads): one
counting pass against two (by buckets of columns, then by column inside each bucket) for CSR-ordered layers;
for row-block value storage, the storage positions "by columns" (one run per block and column) against "by
the walk", and what carrying a merge's remap and two payloads (values, momentum) adds to the transpose
(kernels.transpose_after_merge). Prints a table (median ms, change against the first variant) and writes
benchmarks/results/transpose_ab.json.

    .venv/bin/python benchmarks/transpose_ab.py [--rounds 5] [--quick]
"""
from __future__ import annotations

import argparse
import math

import torch

from sparsetrain import bench, kernels
from sparsetrain.kernels import cpp_ext

# (n, fan-in or None, sparsity or None)
ONE_OR_TWO_PASSES = [(16384, 64, None), (32768, 64, None), (65536, 64, None), (131072, 64, None),
                     (262144, 64, None), (16384, None, 0.98)]
BLOCKED = [(16384, None, 0.98), (65536, 64, None), (262144, 64, None)]
QUICK = [(2048, 64, None)]


def _layout(n: int, fan: int | None, sparsity: float | None, block_rows: int | None = None):
    layer = bench.make_layer(n, sparsity=sparsity, nnz=None if fan is None else fan * n)
    return layer.layout, block_rows or layer.layout.block_rows or 16


def _name(n: int, fan: int | None, sparsity: float | None) -> str:
    return f"{n}², " + (f"fan-in {fan}" if fan else f"{sparsity:.1%}")


def _merged(layout, n: int):
    """A GSE-like change of the layout (a fifth of its entries dropped and as many grown): the merged CSR
    and merge_entries' source."""
    g = torch.Generator().manual_seed(3)
    k = layout.nnz // 5
    drop = torch.sort(torch.randperm(layout.nnz, generator=g)[:k]).values
    draws = torch.unique(torch.randint(0, n * n, (2 * k,), generator=g))
    free = kernels.unique_difference(draws, layout.linear_indices())
    grow = torch.sort(free[torch.randperm(free.numel(), generator=g)[:k]]).values
    crow, col, source, _, _ = kernels.merge_entries(layout.crow, layout.col, drop, grow, n)
    return crow, col, source


def _row(case: str, timing: dict) -> dict:
    first = next(iter(timing.values()))["median_s"]
    return {"case": case, "variants": {k: {**t, "change": t["median_s"] / first - 1} for k, t in timing.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = bench.ab_arguments(parser, "variant")
    rows = []
    for n, fan, sparsity in QUICK if args.quick else ONE_OR_TWO_PASSES:
        layout, _ = _layout(n, fan, sparsity)
        bits = math.ceil(math.log2(n)) // 2
        steps = {"one pass": lambda: cpp_ext.transpose_csr(layout.crow, layout.col, n, 0),
                 f"two passes (2^{bits} columns per bucket)": lambda: cpp_ext.transpose_csr(layout.crow, layout.col,
                                                                                            n, bits)}
        rows.append(_row(f"transposed CSR, {_name(n, fan, sparsity)}", bench.interleaved(steps, args.rounds, 2)))
        del layout, steps
    for n, fan, sparsity in QUICK if args.quick else BLOCKED:
        layout, block_rows = _layout(n, fan, sparsity, 16 if args.quick else None)
        crow, col, source = _merged(layout, n)
        old_slots = kernels.transpose_blocked(layout.crow, layout.col, n, block_rows)[3]
        values = layout.values.detach()
        momentum = torch.randn_like(values)
        steps = {f"by columns ({block_rows} rows per block)": lambda: kernels.transpose_blocked(
                     crow, col, n, block_rows, "columns"),
                 "by the walk": lambda: kernels.transpose_blocked(crow, col, n, block_rows, "walk"),
                 "auto + remap": lambda: kernels.transpose_after_merge(crow, col, n, block_rows, source, old_slots),
                 "auto + remap + values, momentum": lambda: kernels.transpose_after_merge(
                     crow, col, n, block_rows, source, old_slots, [values, momentum])}
        rows.append(_row(f"row-block storage after a merge, {_name(n, fan, sparsity)}",
                         bench.interleaved(steps, args.rounds, 2)))
        del layout, steps
    table = [{"case": r["case"], "variant": k, "ms": t["median_s"] * 1e3, "change": t["change"]}
             for r in rows for k, t in r["variants"].items()]
    bench.print_table(table, [("case", "case", "s"), ("variant", "variant", "s"), ("ms", "median ms", ".1f"),
                              ("change", "vs first", "+.0%")])
    bench.write_json("transpose_ab_quick" if args.quick else "transpose_ab",
                     {"machine": bench.machine(), "rounds": args.rounds, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
